"""Run a render job: plan every (avatar, sequence), check what is already complete (datagen.resume), render the
rest with Ray (or in this process with workers=0), write manifest parts as sequences complete and consolidate the
manifest once at the end.

The output is a local folder or object storage (`s3://bucket/prefix`, `gs://...`; datagen.storage). With object
storage each task encodes its videos into a local staging folder, uploads both, and only then writes the
sequence's part: a sequence is in the manifest only when both uploads finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .avatars import cached_avatar, resolve_avatar
from .config import RenderConfig
from .manifest import consolidate, part_keys, part_name, write_part
from .plan import sequence_id
from .resume import RECORD_VERSION, ResumeConflict, check_sequences, comparable_config, plan_key
from .sizing import check_resources
from .storage import Storage, file_digest, open_storage

#: Local staging folder for object-storage output (default: the system's temporary folder).
STAGE_ENV = "DATAGEN_STAGE_DIR"
_MAX_LISTED_FAILURES = 20
#: Non-secret settings of an object store that Ray tasks get from the driver's environment.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", STAGE_ENV)


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    redone: int = 0  # of `done`: sequences that were present but broken (or forced) and were rendered again
    failed: int = 0
    frames: int = 0
    wall_s: float = 0.0
    render_s: float = 0.0
    normals_s: float = 0.0
    encode_s: float = 0.0
    upload_s: float = 0.0
    other_s: float = 0.0
    task_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    redo_reasons: list[str] = field(default_factory=list)
    manifest: str | None = None  # where the consolidated manifest went; None when no sequence is complete
    profile: bool = False

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def format(self) -> str:
        redone = f" ({self.redone} of them redone)" if self.redone else ""
        lines = [
            f"sequences: {self.done} done{redone}, {self.skipped} skipped (already complete), {self.failed} failed",
            f"frames: {self.frames} in {self.wall_s:.1f} s ({self.frames_per_s:.2f} frames/s)",
        ]
        if self.task_s > 0:
            # encoding runs on its own threads beside the render loop, so the shares may add up to more than 100%
            shares = [
                ("splatting", self.render_s),
                ("normal maps", self.normals_s),
                ("encoding", self.encode_s),
                ("upload", self.upload_s),
                ("other", self.other_s),
            ]
            shown = [(name, value) for name, value in shares if value or name != "upload"]
            lines.append(
                "task time: "
                + ", ".join(f"{name} {100 * value / self.task_s:.0f}%" for name, value in shown)
                + " (encoding overlaps the render loop)"
            )
            if self.profile and self.frames:
                lines.append(
                    "per frame: "
                    + ", ".join(f"{name} {1000 * value / self.frames:.1f} ms" for name, value in shares)
                    + f", task wall {1000 * self.task_s / self.frames:.1f} ms"
                )
        lines += [f"redone {r}" for r in self.redo_reasons[:_MAX_LISTED_FAILURES]]
        if len(self.redo_reasons) > _MAX_LISTED_FAILURES:
            lines.append(f"... and {len(self.redo_reasons) - _MAX_LISTED_FAILURES} more redone")
        lines += [f"FAILED {f}" for f in self.failures[:_MAX_LISTED_FAILURES]]
        if len(self.failures) > _MAX_LISTED_FAILURES:
            lines.append(f"... and {len(self.failures) - _MAX_LISTED_FAILURES} more FAILED")
        if self.manifest is None:
            lines.append("manifest: not written (no sequence is complete)")
        else:
            lines.append(f"manifest: {self.manifest}")
        return "\n".join(lines)


def ensure_writable(out: Path | str | Storage) -> None:
    open_storage(out).check_writable()


def stage_root(store: Storage) -> Path:
    """Local folder where tasks writing to object storage encode before uploading (one per output URI)."""
    base = Path(os.environ.get(STAGE_ENV) or tempfile.gettempdir()) / "datagen-stage"
    return base / hashlib.sha256(store.uri.encode()).hexdigest()[:16]


def make_record(config: RenderConfig, plan, avatar_spec: str, videos: dict[str, dict]) -> dict:
    """What a part file records about how it was made (checked by datagen.resume)."""
    from . import __version__

    return {
        "record_version": RECORD_VERSION,
        "config": comparable_config(config),
        "plan_key": plan_key(config, plan.avatar_id, plan.index, plan.camera),
        "avatar": avatar_spec,
        "videos": videos,
        "datagen": __version__,
    }


def render_one(
    config_dict: dict, avatar_id: str, avatar_spec: str, index: int, root: str, camera: int | None = None
) -> dict:
    """One task: plan, render and record sequence `index` (studio: its `camera`) of one avatar.

    Runs in a Ray worker or in-process."""
    import torch

    from .plan import plan_sequence
    from .render_sequence import _maybe_crash, render_sequence, video_paths

    t_start = time.perf_counter()
    config = RenderConfig.from_dict(config_dict)
    torch.set_num_threads(config.torch_threads)
    store = open_storage(root)
    avatar = cached_avatar(avatar_spec)
    plan = plan_sequence(config, avatar, index, avatar_id=avatar_id, camera=camera)
    local_root = stage_root(store) if store.remote else store.local_root
    row, stats = render_sequence(plan, avatar, config, local_root)
    videos = {}
    for rel in video_paths(plan):
        path = local_root / rel
        videos[rel] = {"bytes": path.stat().st_size, "frames": plan.num_frames, "sha256": file_digest(path)}
    upload_s = 0.0
    if store.remote:
        tick = time.perf_counter()
        for n, rel in enumerate(video_paths(plan)):
            store.upload(local_root / rel, rel)
            if n == 0:
                _maybe_crash(local_root, plan, "upload")  # between the two uploads
        write_part(store, row, make_record(config, plan, avatar_spec, videos))
        upload_s = time.perf_counter() - tick
        for rel in video_paths(plan):
            (local_root / rel).unlink(missing_ok=True)
    else:
        write_part(store, row, make_record(config, plan, avatar_spec, videos))
    return {
        "sequence_id": plan.sequence_id,
        "frames": stats.frames,
        "render_s": stats.render_s,
        "normals_s": stats.normals_s,
        "encode_s": stats.encode_s,
        "upload_s": upload_s,
        "other_s": stats.other_s,
        "task_s": time.perf_counter() - t_start,
    }


def _prune_empty_dirs(top: Path) -> None:
    """Removes empty folders under (and including) `top`, so failed sequences leave no empty tree behind.

    Only the driver calls it, after every task has finished (a worker pruning could race another's mkdir)."""
    if not top.is_dir():
        return
    folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for folder in [*folders, top]:
        with contextlib.suppress(OSError):  # not empty
            folder.rmdir()


def _job_keys(config: RenderConfig, avatar_ids: list[str]) -> list[tuple[str, int, int | None]]:
    cameras = [None] if config.mode != "studiocapture" else list(range(config.num_cameras))
    return [(a, i, c) for a in avatar_ids for i in range(config.sequences) for c in cameras]


def _conflict_message(store: Storage, mismatched: dict) -> str:
    fields: dict[str, int] = {}
    for check in mismatched.values():
        for difference in check.differences:
            fields[difference] = fields.get(difference, 0) + 1
    listed = "\n".join(f"  {d}  ({n} sequence{'s' if n > 1 else ''})" for d, n in sorted(fields.items()))
    first = sorted(mismatched)[:3]
    return (
        f"{len(mismatched)} sequence{'s' if len(mismatched) > 1 else ''} of this job under {store} "
        f"{'were' if len(mismatched) > 1 else 'was'} rendered with other settings (e.g. {', '.join(first)}); "
        f"recorded -> this job:\n{listed}\n"
        "rerun with the same settings to resume, with --force to redo them with these settings, "
        "or choose another --out"
    )


def run(
    config: RenderConfig,
    avatar_ids: list[str],
    out: str | Path,
    progress: bool = True,
    force: bool = False,
    verify: str = "checksum",
    profile: bool = False,
) -> RunSummary:
    """Render `config.sequences` sequences for each avatar into `out` (a folder or an s3:// / gs:// URI).

    Complete sequences are skipped, broken ones redone; sequences made with other settings make the job refuse
    (ResumeConflict) before anything is written, unless `force`. `verify`: "checksum" (sha256 of every existing
    video) or "size" (sizes only: fast on huge datasets). Returns what happened."""
    from tqdm import tqdm

    store = open_storage(out)
    specs = {avatar_id: resolve_avatar(avatar_id, config.avatar_dir) for avatar_id in avatar_ids}
    check_resources(config)
    keys = _job_keys(config, avatar_ids)
    created_root = not store.remote and not store.local_root.exists()
    checks = check_sequences(store, config, keys, verify=verify)  # reads only
    mismatched = {sid: c for sid, c in checks.items() if c.state == "mismatch"}
    if mismatched and not force:
        raise ResumeConflict(_conflict_message(store, mismatched))
    store.check_writable()
    summary = RunSummary(profile=profile)
    todo = []
    for key in keys:
        sid = sequence_id(key[0], config.mode, key[1], key[2])
        check = checks[sid]
        if check.state == "complete":
            summary.skipped += 1
            continue
        if check.state in ("redo", "mismatch"):
            # out of the manifest before anything else: a broken sequence must never be listed as complete
            store.delete(part_name(sid))
            why = "; ".join(check.differences) if check.state == "mismatch" else check.reason
            summary.redo_reasons.append(f"{sid}: {why}")
        todo.append(key)
    summary.redone = len(summary.redo_reasons)
    summary.done = 0
    start = time.perf_counter()
    bar = tqdm(
        total=len(todo), desc=f"datagen {config.mode}", unit="seq", disable=not progress or not todo, file=sys.stderr
    )

    def record(result: dict | None, key: tuple[str, int, int | None], error: BaseException | None) -> None:
        if error is None:
            summary.done += 1
            summary.frames += result["frames"]
            for name in ("render_s", "normals_s", "encode_s", "upload_s", "other_s", "task_s"):
                setattr(summary, name, getattr(summary, name) + result.get(name, 0.0))
        else:
            summary.failed += 1
            summary.failures.append(
                f"{sequence_id(key[0], config.mode, key[1], key[2])}: {type(error).__name__}: {error}"
            )
        bar.update(1)
        bar.set_postfix(done=summary.done, failed=summary.failed)

    config_dict = config.to_dict()
    root_arg = store.uri if store.remote else str(store.local_root)
    if todo and config.workers == 0 and config.ray_address is None:
        for key in todo:
            try:
                record(render_one(config_dict, key[0], specs[key[0]], key[1], root_arg, key[2]), key, None)
            except Exception as err:  # noqa: BLE001 - one bad sequence must not stop the job
                record(None, key, err)
    elif todo:
        _run_with_ray(config, config_dict, specs, todo, store, record)
    bar.close()
    summary.wall_s = time.perf_counter() - start
    if store.remote:
        _prune_empty_dirs(stage_root(store) / "videos")
    elif summary.failed:
        _prune_empty_dirs(store.local_root / "videos")
    if part_keys(store):
        summary.manifest = str(consolidate(store))
    elif created_root:
        _prune_empty_dirs(store.local_root)  # a job that made nothing leaves no empty folder tree
    summary.redone = min(summary.redone, summary.done)
    return summary


def _run_with_ray(
    config: RenderConfig,
    config_dict: dict,
    specs: dict[str, str],
    todo: list[tuple[str, int, int | None]],
    store: Storage,
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
        options = {
            "num_cpus": config.torch_threads,
            "num_gpus": config.gpus_per_task if use_gpu else 0,
            "max_retries": 3,
            "retry_exceptions": False,
        }
        forwarded = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ} if store.remote else {}
        if forwarded:
            # where the object store is (not who may write to it: credentials come from each node's own
            # environment or config files, or from `ray job submit --runtime-env-json`)
            options["runtime_env"] = {"env_vars": forwarded}
        task = ray.remote(render_one).options(**options)
        root = store.uri if store.remote else str(store.local_root.resolve())
        pending = {task.remote(config_dict, a, specs[a], i, root, c): (a, i, c) for a, i, c in todo}
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


__all__ = ["ResumeConflict", "RunSummary", "render_one", "run", "stage_root"]
