"""Typed settings of a render job, loaded from a TOML file (one per render mode) and overridden by CLI flags.

Defaults are the paper's numbers (Sec. 3.2, 7.3, 7.4; CONVENTIONS 4); `configs/demo.toml` is a small preset
that runs the same code on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .trajectories import CaptureConfig, SpinConfig, SpiralConfig

MODES = ("viewsweep", "dynamicsweep", "phonecapture", "studiocapture")
#: Stand-ins for the paper's private capture datasets: fixed cameras, expression and pose from the capture track.
CAPTURE_MODES = ("phonecapture", "studiocapture")
BACKENDS = ("auto", "cpu", "gsplat")
#: What the normal maps show: the neutral template posed by the head pose (the paper's body-mesh tracking:
#: pose and viewpoint, no expression) or the tracked mesh with its expression (mouth and eyelid shapes too).
NORMAL_MESHES = ("neutral", "tracked")
#: Paper numbers per mode: sequences per identity and frames per sequence.
#: The capture stand-ins (paper: private data, sizes missing) default to DynamicSweep's segment length; a
#: studio "sequence" is one take, seen by every camera of the rig (one manifest row per camera).
MODE_DEFAULTS = {
    "viewsweep": {"sequences": 128, "frames": 100},
    "dynamicsweep": {"sequences": 32, "frames": 128},
    "phonecapture": {"sequences": 32, "frames": 128},
    "studiocapture": {"sequences": 8, "frames": 128},
}


class ConfigError(ValueError):
    """A bad setting; the message names the file (or flag), the field and the value."""


@dataclass
class VideoConfig:
    crf: int = 18  # H.264 constant rate factor of the RGB video (lower = better)
    normal_crf: int = 10  # normal maps feed the model as geometry: keep them near-lossless
    preset: str = "medium"  # any x264 preset; every preset is deterministic at a fixed thread count
    pix_fmt: str = "yuv420p"
    # x264 threads per video. Any fixed count gives the same bytes run after run, but a different count gives
    # different (equally valid) bytes: 1 keeps files identical to every earlier release and across machines.
    threads: int = 1
    # Encode on two threads (RGB, normals) beside the render loop, through bounded queues; the files are
    # byte-identical to serial encoding. false: encode in the render loop (for measurements).
    overlap: bool = True
    queue_frames: int = 8  # frames waiting per encoder at most (bounds memory)


#: Settings that change how a job runs but not what it writes (or only the bytes, not the content): a resumed job
#: may differ in these from the one that wrote the data. Everything else must match (datagen.resume).
EXECUTION_FIELDS = (
    "sequences",
    "workers",
    "ray_address",
    "avatar_dir",
    "torch_threads",
    "gpus_per_task",
    "backend",
    "video.threads",
    "video.overlap",
    "video.queue_frames",
)


@dataclass
class RenderConfig:
    mode: str = "dynamicsweep"
    sequences: int = 32
    frames: int = 128
    resolution: int = 1024
    fps: float = 25.0  # paper: missing; the demo capture tracks run at 25 fps
    fov_deg: float = 53.1  # CONVENTIONS 1: a square crop of an iPhone-like 26 mm camera
    seed: int = 0
    spin_every: int = 2  # sequence index % spin_every == 0 -> spin, else spiral (16 + 16 of 32)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # What the cameras circle and look at: the face's centre (nose level) rather than the avatar origin
    # (the cranium's centre), so that phone-distance views frame the face.
    head_centre_m: tuple[float, float, float] = (0.0, -0.03, 0.0)
    backend: str = "auto"
    normal_mesh: str = "neutral"  # NORMAL_MESHES; "neutral" is the paper's template-mesh normal maps
    workers: int = 2
    ray_address: str | None = None
    avatar_dir: str | None = None
    torch_threads: int = 1  # per worker: one task per core scales better than threads inside a task
    # GPU share per task with gsplat: several tasks per GPU keep it busy while each encodes its videos on a core
    gpus_per_task: float = 0.25
    spin: SpinConfig = field(default_factory=SpinConfig)
    spiral: SpiralConfig = field(default_factory=SpiralConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self) -> None:
        self.validate("RenderConfig")

    @classmethod
    def for_mode(cls, mode: str, **overrides: Any) -> RenderConfig:
        """The paper's settings for `mode`, with overrides."""
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(mode=mode, **{**MODE_DEFAULTS[mode], **overrides})

    def validate(self, source: str) -> None:
        def need(ok: bool, name: str, value: Any, what: str) -> None:
            if not ok:
                raise ConfigError(f"{source}: field '{name}' = {value!r}: {what}")

        need(self.mode in MODES, "mode", self.mode, f"expected one of {', '.join(MODES)}")
        need(self.backend in BACKENDS, "backend", self.backend, f"expected one of {', '.join(BACKENDS)}")
        meshes = ", ".join(NORMAL_MESHES)
        need(self.normal_mesh in NORMAL_MESHES, "normal_mesh", self.normal_mesh, f"expected one of {meshes}")
        need(self.sequences >= 1, "sequences", self.sequences, "must be >= 1")
        need(self.frames >= 1, "frames", self.frames, "must be >= 1")
        need(self.resolution >= 16 and self.resolution % 2 == 0, "resolution", self.resolution, "must be even, >= 16")
        need(self.fps > 0, "fps", self.fps, "must be > 0")
        need(0 < self.fov_deg < 180, "fov_deg", self.fov_deg, "must be in (0, 180)")
        need(self.seed >= 0, "seed", self.seed, "must be >= 0")
        need(self.spin_every >= 1, "spin_every", self.spin_every, "must be >= 1")
        need(self.workers >= 0, "workers", self.workers, "must be >= 0 (0 = in this process, no Ray)")
        need(self.torch_threads >= 1, "torch_threads", self.torch_threads, "must be >= 1")
        need(0 < self.gpus_per_task <= 1, "gpus_per_task", self.gpus_per_task, "must be in (0, 1]")
        need(len(self.head_centre_m) == 3, "head_centre_m", self.head_centre_m, "must be three numbers (metres)")
        need(
            len(self.background) == 3 and all(0 <= c <= 1 for c in self.background),
            "background",
            self.background,
            "must be three numbers in [0, 1]",
        )
        need(0 <= self.video.crf <= 51, "video.crf", self.video.crf, "must be in [0, 51]")
        need(0 <= self.video.normal_crf <= 51, "video.normal_crf", self.video.normal_crf, "must be in [0, 51]")
        need(1 <= self.video.threads <= 64, "video.threads", self.video.threads, "must be in [1, 64]")
        need(self.video.queue_frames >= 1, "video.queue_frames", self.video.queue_frames, "must be >= 1")

    def trajectory_kind(self, index: int) -> str:
        if self.mode in CAPTURE_MODES:
            return "static"
        return "spin" if index % self.spin_every == 0 else "spiral"

    @property
    def num_cameras(self) -> int:
        """Cameras per sequence: the studio rig's size for studiocapture, else 1 (one row per camera)."""
        return self.capture.num_studio_cameras if self.mode == "studiocapture" else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RenderConfig:
        data = dict(data)
        nested = {"spin": SpinConfig, "spiral": SpiralConfig, "capture": CaptureConfig, "video": VideoConfig}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown field '{key}' (known: {', '.join(sorted(known))})")
            if key in nested:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: field '{key}' must be a table, got {value!r}")
                sub_known = {f.name for f in dataclasses.fields(nested[key])}
                for sub in value:
                    if sub not in sub_known:
                        raise ConfigError(
                            f"{source}: unknown field '{key}.{sub}' (known: {', '.join(sorted(sub_known))})"
                        )
                try:
                    value = nested[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"{source}: [{key}]: {err}") from err
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        try:
            config = cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(str(err).replace("RenderConfig", source)) from err
        except TypeError as err:
            raise ConfigError(f"{source}: {err}") from err
        return config


def load_config(path: str | Path) -> RenderConfig:
    """Read a TOML render config; missing fields take the paper's defaults for its `mode`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file '{path}' does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    mode = data.get("mode", "dynamicsweep")
    if mode not in MODES:
        raise ConfigError(f"{path}: field 'mode' = {mode!r}: expected one of {', '.join(MODES)}")
    merged = {**MODE_DEFAULTS[mode], **data}
    return RenderConfig.from_dict(merged, source=str(path))


def apply_overrides(config: RenderConfig, overrides: dict[str, Any], source: str = "command line") -> RenderConfig:
    """A copy of `config` with the non-None `overrides` applied (a mode change brings that mode's defaults
    for sequences / frames unless they are overridden too)."""
    data = config.to_dict()
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in [k for k in given if "." in k]:  # "capture.distance_m" -> data["capture"]["distance_m"]
        table, sub = key.split(".", 1)
        data[table] = {**data[table], sub: given.pop(key)}
    if "mode" in given and given["mode"] != config.mode:
        if given["mode"] not in MODES:
            raise ConfigError(f"{source}: --mode {given['mode']!r}: expected one of {', '.join(MODES)}")
        data.update(MODE_DEFAULTS[given["mode"]])
    data.update(given)
    return RenderConfig.from_dict(data, source=source)
