"""Honest resume: which of a job's sequences are already complete in the output, and which must be redone.

A sequence counts as complete only if
  1. its manifest part exists and is readable,
  2. the settings recorded in it equal this job's (every field except the execution ones in
     config.EXECUTION_FIELDS) and its plan key (global seed, avatar id, mode, index, camera, derived seed)
     equals the one this job would make, and
  3. both videos exist with the byte size (and, with verify="checksum", the sha256) recorded when they were
     written; the recorded frame count equals the row's.
A settings mismatch is not silently redone: the job refuses (ResumeConflict, naming the differing fields) unless
forced. Broken or missing videos are redone. Parts written before records existed are checked against the
row itself (frames, size, fps, field of view, background) and by probing the videos' frame counts.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .config import EXECUTION_FIELDS, RenderConfig
from .manifest import ManifestError, part_keys, read_part
from .plan import derive_seed, sequence_id
from .storage import Storage

__all__ = [
    "RECORD_VERSION",
    "VERIFY_MODES",
    "ResumeConflict",
    "SequenceCheck",
    "check_sequences",
    "comparable_config",
    "config_differences",
    "plan_key",
]

RECORD_VERSION = 1
VERIFY_MODES = ("checksum", "size")


class ResumeConflict(ValueError):
    """The output holds sequences of this job rendered with other settings; the message lists the fields."""


@dataclass
class SequenceCheck:
    state: str  # "missing" (render), "complete" (skip), "redo" (broken: render again), "mismatch" (other settings)
    reason: str = ""
    differences: list[str] = field(default_factory=list)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def comparable_config(config: RenderConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what a sequence holds, flattened ("video.crf"), JSON-friendly."""
    data = config.to_dict() if isinstance(config, RenderConfig) else config
    flat = _flatten(data)
    return {k: v for k, v in sorted(flat.items()) if k not in EXECUTION_FIELDS}


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: recorded -> current' for every setting that differs (fields one side lacks included)."""
    out = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name, "<absent>"), current.get(name, "<absent>")
        if json.dumps(old) != json.dumps(new):
            out.append(f"{name}: {json.dumps(old)} -> {json.dumps(new)}")
    return out


def plan_key(config: RenderConfig, avatar_id: str, index: int, camera: int | None) -> dict[str, Any]:
    """What identifies a sequence's plan besides the settings."""
    return {
        "global_seed": config.seed,
        "avatar_id": avatar_id,
        "mode": config.mode,
        "index": index,
        "camera": camera,
        "derived_seed": derive_seed(config.seed, avatar_id, config.mode, index),
    }


def _check_recorded(
    store: Storage,
    record: dict[str, Any],
    row: dict[str, Any],
    current: dict[str, Any],
    key: dict[str, Any],
    listing: dict[str, int],
    verify: str,
) -> SequenceCheck:
    differences = config_differences(record.get("config", {}), current)
    differences += [
        f"plan.{name}: {json.dumps(record.get('plan_key', {}).get(name))} -> {json.dumps(value)}"
        for name, value in key.items()
        if json.dumps(record.get("plan_key", {}).get(name)) != json.dumps(value)
    ]
    if differences:
        return SequenceCheck("mismatch", "rendered with other settings", differences)
    videos = record.get("videos", {})
    for column in ("rgb_path", "normal_path"):
        rel = row.get(column)
        if rel is None:
            continue
        written = videos.get(rel)
        if written is None:
            return SequenceCheck("redo", f"{column} {rel} is not in the part's record")
        size = listing.get(rel)
        if size is None:
            return SequenceCheck("redo", f"video {rel} is missing")
        if size != written["bytes"]:
            return SequenceCheck("redo", f"video {rel} is {size} bytes, {written['bytes']} were written")
        if written.get("frames") != row.get("num_frames"):
            return SequenceCheck("redo", f"video {rel} was written with {written.get('frames')} frames")
        if verify == "checksum" and store.digest(rel) != written["sha256"]:
            return SequenceCheck("redo", f"video {rel} does not match the checksum recorded when it was written")
    return SequenceCheck("complete")


def _check_legacy(store: Storage, row: dict[str, Any], config: RenderConfig, listing: dict[str, int]) -> SequenceCheck:
    """A part from before records: compare what the row says with this job, and probe the videos."""
    from types import SimpleNamespace

    from .manifest import video_problems

    try:
        render = json.loads(row.get("plan") or "{}").get("render", {})
    except ValueError:
        render = {}
    expected = {
        "frames": (row.get("num_frames"), config.frames),
        "resolution": (row.get("width"), config.resolution),
        "fps": (row.get("fps"), float(config.fps)),
        "fov_deg": (render.get("fov_deg", config.fov_deg), config.fov_deg),
        "background": (render.get("background", list(config.background)), list(config.background)),
    }
    differences = [
        f"{name}: {json.dumps(old)} -> {json.dumps(new)}"
        for name, (old, new) in expected.items()
        if json.dumps(old) != json.dumps(new)
    ]
    if differences:
        return SequenceCheck("mismatch", "rendered with other settings (part without a record)", differences)
    if store.remote:
        return SequenceCheck("redo", "part has no record of its videos")
    # video_problems reads these four fields only
    stub = SimpleNamespace(num_frames=row["num_frames"], width=row["width"], height=row["height"], fps=row["fps"])
    for column in ("rgb_path", "normal_path"):
        rel = row.get(column)
        if rel is None:
            continue
        if rel not in listing:
            return SequenceCheck("redo", f"video {rel} is missing")
        problems = video_problems(store.local(rel), column, rel, stub, decode=False)
        if problems:
            return SequenceCheck("redo", problems[0])
    return SequenceCheck("complete")


def check_sequences(
    store: Storage,
    config: RenderConfig,
    keys: list[tuple[str, int, int | None]],
    verify: str = "checksum",
    threads: int = 8,
) -> dict[str, SequenceCheck]:
    """{sequence id: check} for the job's (avatar id, index, camera) keys. Reads only: creates nothing."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    parts = part_keys(store)
    todo = {sequence_id(a, config.mode, i, c): (a, i, c) for a, i, c in keys}
    out = {sid: SequenceCheck("missing") for sid in todo if sid not in parts}
    present = [sid for sid in todo if sid in parts]
    if not present:
        return out
    listing = store.list_files("videos", recursive=True)
    current = comparable_config(config)

    def check(sid: str) -> SequenceCheck:
        try:
            table, record = read_part(store, parts[sid])
            row = {name: table.column(name)[0].as_py() for name in table.column_names if name not in _BULKY}
        except (ManifestError, IndexError, KeyError) as err:
            return SequenceCheck("redo", f"manifest part unreadable: {err}")
        if record is None:
            return _check_legacy(store, row, config, listing)
        a, i, c = todo[sid]
        return _check_recorded(store, record, row, current, plan_key(config, a, i, c), listing, verify)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for sid, result in zip(present, pool.map(check, present), strict=True):
            out[sid] = result
    return {sid: out[sid] for sid in todo}


# per-frame columns: not needed to decide completeness
_BULKY = {
    "frame_index",
    "timestamp",
    "K",
    "viewmat",
    "expression",
    "head_pose",
    "landmarks",
    "landmark_visible",
}
