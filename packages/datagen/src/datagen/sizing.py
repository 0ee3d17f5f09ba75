"""How big a job is before it runs: memory per render task (refuse the impossible up front), and the planner's
sequences / frames / bytes / machine-hours from measured rates (`datagen plan`, `benchmarks/datagen.py --save`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RenderConfig

__all__ = [
    "RATES_FILE",
    "JobEstimate",
    "ResourceError",
    "check_resources",
    "estimate_job",
    "load_rates",
    "machine_memory_bytes",
    "task_memory_bytes",
]

#: Measured rates shipped with the package (written by `benchmarks/datagen.py --save`).
RATES_FILE = Path(__file__).resolve().parents[2] / "configs" / "rates.json"

# Bytes of memory per pixel of one render task, by what holds them (an upper estimate, from the buffers the code
# allocates): splatting accumulators and tiles (float32 colour, alpha, depth, transmittance, chunk scratch),
# the normal-map z-buffer (depth, triangle ids, barycentrics, normals), and per video x264's lookahead and
# reference frames (about 48 YUV 4:2:0 frames at 1.5 bytes per pixel, plus its low-resolution copies).
_SPLAT_BYTES_PER_PIXEL = 64
_NORMALS_BYTES_PER_PIXEL = 40
_X264_BYTES_PER_PIXEL = 80
_FIXED_TASK_BYTES = 1 << 30  # the interpreter, torch, one avatar and its posed chunk


class ResourceError(ValueError):
    """A job that cannot run on this machine; the message says what it would need."""


def task_memory_bytes(config: RenderConfig) -> int:
    """Estimated peak memory of one render task at `config`'s resolution."""
    pixels = config.resolution * config.resolution
    queued = 2 * 3 * (config.video.queue_frames + 2)  # uint8 RGB frames waiting for both encoders
    per_pixel = _SPLAT_BYTES_PER_PIXEL + _NORMALS_BYTES_PER_PIXEL + 2 * _X264_BYTES_PER_PIXEL + queued
    return _FIXED_TASK_BYTES + per_pixel * pixels


def machine_memory_bytes() -> int:
    """Physical memory of this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform: do not refuse anything
        return 1 << 62


def _gib(n: float) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def check_resources(config: RenderConfig) -> None:
    """Refuses (ResourceError) a job whose concurrent tasks on this machine would need more memory than it has."""
    per_task = task_memory_bytes(config)
    local_tasks = 1 if config.workers == 0 or config.ray_address else config.workers
    need = per_task * local_tasks
    have = machine_memory_bytes()
    if need > have:
        raise ResourceError(
            f"--resolution {config.resolution}: one render task would need about {_gib(per_task)} of memory "
            f"({config.resolution}x{config.resolution} frames; splatting, normal maps and two x264 encoders), "
            f"{local_tasks} at once {_gib(need)}, and this machine has {_gib(have)}; choose a smaller resolution"
            + (" or fewer --workers" if local_tasks > 1 else "")
        )


def load_rates(path: str | Path | None = None) -> dict[str, Any]:
    """The measured-rates file: {profile name: {resolution, render_fps, encode_fps, end_to_end_fps, ...}}."""
    path = Path(path) if path is not None else RATES_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"rates file '{path}' does not exist (write one with: python benchmarks/datagen.py --save {path})"
        ) from err
    except ValueError as err:
        raise ValueError(f"rates file '{path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not data:
        raise ValueError(f"rates file '{path}': expected an object of named profiles")
    for name, profile in data.items():
        for key in ("resolution", "render_fps", "encode_fps", "end_to_end_fps", "rgb_bytes_per_pixel_frame"):
            if not isinstance(profile, dict) or not isinstance(profile.get(key), (int, float)):
                raise ValueError(f"rates file '{path}': profile '{name}' lacks the number '{key}'")
    return data


@dataclass
class JobEstimate:
    mode: str
    avatars: int
    sequences: int  # manifest rows (a studio take counts once per camera)
    frames: int
    bytes: float
    render_hours: float  # task-hours at the profile's render-only rate
    encode_hours: float  # task-hours at its encode-only rate
    task_hours: float  # task-hours at its end-to-end rate
    machine_hours: float  # task_hours / tasks per machine

    def row(self) -> str:
        return (
            f"{self.mode:<13} {self.avatars:>7} {self.sequences:>10} {self.frames:>13,} {_size(self.bytes):>10} "
            f"{self.render_hours:>9.1f} {self.encode_hours:>9.1f} {self.task_hours:>9.1f} {self.machine_hours:>10.1f}"
        )


HEADER = (
    f"{'mode':<13} {'avatars':>7} {'sequences':>10} {'frames':>13} {'bytes':>10} "
    f"{'render h':>9} {'encode h':>9} {'task h':>9} {'machine h':>10}"
)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def estimate_job(
    config: RenderConfig, num_avatars: int, profile: dict[str, Any], tasks_per_machine: float = 1.0
) -> JobEstimate:
    """Sizes of a job and its hours at `profile`'s measured per-task rates, scaled by pixels from the profile's
    resolution (rendering and x264 both cost about in proportion to the pixel count)."""
    if tasks_per_machine <= 0:
        raise ValueError(f"tasks per machine must be > 0, got {tasks_per_machine}")
    rows = num_avatars * config.sequences * config.num_cameras
    frames = rows * config.frames
    scale = (config.resolution / profile["resolution"]) ** 2
    pixels = config.resolution * config.resolution
    per_frame = pixels * (profile["rgb_bytes_per_pixel_frame"] + profile.get("normal_bytes_per_pixel_frame", 0.0))

    def hours(fps: float) -> float:
        return frames * scale / fps / 3600

    task_hours = hours(profile["end_to_end_fps"])
    return JobEstimate(
        mode=config.mode,
        avatars=num_avatars,
        sequences=rows,
        frames=frames,
        bytes=frames * per_frame,
        render_hours=hours(profile["render_fps"]),
        encode_hours=hours(profile["encode_fps"]),
        task_hours=task_hours,
        machine_hours=task_hours / tasks_per_machine,
    )
