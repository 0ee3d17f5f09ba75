"""Run a render job: plan every (avatar, sequence), skip what is complete, render the rest with Ray (or in this
process with workers=0), write manifest parts as sequences complete and consolidate the manifest at the end."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .avatars import cached_avatar, resolve_avatar
from .config import RenderConfig
from .manifest import completed_sequence_ids, consolidate, write_part
from .plan import sequence_id


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    wall_s: float = 0.0
    render_s: float = 0.0
    normals_s: float = 0.0
    other_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def format(self) -> str:
        worked = self.render_s + self.normals_s + self.other_s
        lines = [
            f"sequences: {self.done} done, {self.skipped} skipped (already complete), {self.failed} failed",
            f"frames: {self.frames} in {self.wall_s:.1f} s ({self.frames_per_s:.2f} frames/s)",
        ]
        if worked > 0:
            lines.append(
                f"task time: splatting {100 * self.render_s / worked:.0f}%, normal maps "
                f"{100 * self.normals_s / worked:.0f}%, posing/encoding/IO {100 * self.other_s / worked:.0f}%"
            )
        lines += [f"FAILED {f}" for f in self.failures[:10]]
        return "\n".join(lines)


def ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder '{out}' is not writable ({err.strerror or err})") from err


def is_complete(root: Path, seq_id: str, done_ids: set[str]) -> bool:
    if seq_id not in done_ids:
        return False
    base = root / "videos" / seq_id  # render_sequence.video_paths
    return Path(f"{base}_rgb.mp4").exists() and Path(f"{base}_normal.mp4").exists()


def render_one(
    config_dict: dict, avatar_id: str, avatar_spec: str, index: int, root: str, camera: int | None = None
) -> dict:
    """One task: plan, render and record sequence `index` (studio: its `camera`) of one avatar.

    Runs in a Ray worker or in-process."""
    import torch

    from .plan import plan_sequence
    from .render_sequence import render_sequence

    config = RenderConfig.from_dict(config_dict)
    torch.set_num_threads(config.torch_threads)
    avatar = cached_avatar(avatar_spec)
    plan = plan_sequence(config, avatar, index, avatar_id=avatar_id, camera=camera)
    row, stats = render_sequence(plan, avatar, config, Path(root))
    write_part(Path(root), row)
    return {
        "sequence_id": plan.sequence_id,
        "frames": stats.frames,
        "render_s": stats.render_s,
        "normals_s": stats.normals_s,
        "other_s": stats.other_s,
    }


def run(config: RenderConfig, avatar_ids: list[str], out: str | Path, progress: bool = True) -> RunSummary:
    """Render `config.sequences` sequences for each avatar into `out`; returns what happened."""
    from tqdm import tqdm

    root = Path(out)
    specs = {avatar_id: resolve_avatar(avatar_id, config.avatar_dir) for avatar_id in avatar_ids}
    ensure_writable(root)
    summary = RunSummary()
    done_ids = completed_sequence_ids(root)
    todo = []
    cameras = [None] if config.mode != "studiocapture" else list(range(config.num_cameras))
    for avatar_id in avatar_ids:
        for index in range(config.sequences):
            for camera in cameras:
                if is_complete(root, sequence_id(avatar_id, config.mode, index, camera), done_ids):
                    summary.skipped += 1
                else:
                    todo.append((avatar_id, index, camera))
    start = time.perf_counter()
    bar = tqdm(
        total=len(todo), desc=f"datagen {config.mode}", unit="seq", disable=not progress or not todo, file=sys.stderr
    )

    def record(result: dict | None, key: tuple[str, int, int | None], error: BaseException | None) -> None:
        if error is None:
            summary.done += 1
            summary.frames += result["frames"]
            summary.render_s += result["render_s"]
            summary.normals_s += result["normals_s"]
            summary.other_s += result["other_s"]
        else:
            summary.failed += 1
            summary.failures.append(
                f"{sequence_id(key[0], config.mode, key[1], key[2])}: {type(error).__name__}: {error}"
            )
        bar.update(1)
        bar.set_postfix(done=summary.done, failed=summary.failed)

    config_dict = config.to_dict()
    if todo and config.workers == 0 and config.ray_address is None:
        for key in todo:
            try:
                record(render_one(config_dict, key[0], specs[key[0]], key[1], str(root), key[2]), key, None)
            except Exception as err:  # noqa: BLE001 - one bad sequence must not stop the job
                record(None, key, err)
    elif todo:
        _run_with_ray(config, config_dict, specs, todo, root, record)
    bar.close()
    summary.wall_s = time.perf_counter() - start
    consolidate(root, extra_info={"render_config": config_dict, "avatars": avatar_ids})
    return summary


def _run_with_ray(
    config: RenderConfig,
    config_dict: dict,
    specs: dict[str, str],
    todo: list[tuple[str, int, int | None]],
    root: Path,
    record,
) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if config.ray_address:
            ray.init(address=config.ray_address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(
                num_cpus=max(1, config.workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False
            )
    try:
        use_gpu = config.backend == "gsplat" or (config.backend == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        # system failures (a killed worker) are retried; a Python exception is a failed sequence
        task = ray.remote(render_one).options(
            num_cpus=config.torch_threads,
            num_gpus=config.gpus_per_task if use_gpu else 0,
            max_retries=3,
            retry_exceptions=False,
        )
        pending = {task.remote(config_dict, a, specs[a], i, str(root.resolve()), c): (a, i, c) for a, i, c in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    record(ray.get(ref), key, None)
                except Exception as err:  # noqa: BLE001
                    record(None, key, err.cause if hasattr(err, "cause") and err.cause else err)
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["RunSummary", "render_one", "run"]
