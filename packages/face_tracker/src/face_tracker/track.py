"""Track a whole video: stream its frames through the landmarker, fit the rig per segment, fill the gaps.

The result (`VideoTrack`) is what `face-track` writes, what `model-infer --driving VIDEO` drives with and what
`datagen ingest` turns into manifest rows:
- per frame: codes [D] in the avatar's code space, head pose [6], rig weights, fit rms, confidence, found;
- the fixed tracking camera (K from a field of view or given; viewmat of `fit.tracking_camera`);
- iBUG-68 landmarks of the fitted guide mesh projected in that camera (the manifest's `landmarks`, so C3 models
  see the same layout they were trained on).

Memory: decoded frames are not kept; only the landmarker's points (~4 KB per frame) are. The rig fit solves
`segment_frames` frames at a time (~1 MB per frame, `fit.fit_landmarks`); the temporal smoothing of the rig weights
restarts at each segment boundary.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .fit import FitConfig, TrackResult, fit_landmarks, tracking_camera
from .landmarker import NUM_MP_POINTS, Detections

DEFAULT_SEGMENT_FRAMES = 1000
DECODE_CHUNK = 64  # frames decoded before they go through the landmarker (bounds memory)


class VideoError(ValueError):
    """A video that cannot be read; the message names the file."""


class NoFaceError(ValueError):
    """A video in which no frame shows a face; the message names the file."""


@dataclass
class VideoTrack:
    """A tracked video of T frames (float32; NaN in per-frame fits where `found` is False)."""

    source: str
    fps: float
    width: int
    height: int
    K: Tensor  # [3, 3] pixels
    viewmat: Tensor  # [4, 4] world-to-camera (OpenCV axes), fixed over the video
    fit: TrackResult
    landmarks: Tensor  # [T, 68, 2] iBUG-68 of the fitted guide mesh, pixels (centres at i + 0.5); NaN if not found
    landmark_visible: Tensor  # [T, 68] bool
    landmark_layout: str

    def __len__(self) -> int:
        return int(self.fit.found.shape[0])

    @property
    def found(self) -> np.ndarray:  # [T] bool
        return self.fit.found.numpy()

    def segments(self, min_frames: int = 1) -> list[tuple[int, int]]:
        """[start, stop) runs of consecutive frames with a face, at least `min_frames` long."""
        return found_segments(self.found, min_frames)

    def driving_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a track file (`save_track`): what `model-infer --driving FILE.npz` reads.

        expression / head_pose / landmarks are gap-filled (linear between found frames, held at the ends) so a
        driving signal is defined everywhere; `found` says which frames were really seen."""
        found = self.found
        marks = self.landmarks.numpy()
        return {
            "expression": fill_gaps(self.fit.codes.numpy(), found),
            "head_pose": fill_gaps(self.fit.head_pose.numpy(), found),
            "landmarks": fill_gaps(marks.reshape(len(self), -1), found).reshape(marks.shape),
            "landmark_visible": self.landmark_visible.numpy() & found[:, None],
            "landmark_layout": np.array(self.landmark_layout),
            "width": np.array(self.width),
            "height": np.array(self.height),
            "fps": np.array(self.fps),
            "K": self.K.numpy(),
            "viewmat": self.viewmat.numpy(),
            "found": found,
            "confidence": self.fit.confidence.numpy(),
            "rms_px": self.fit.rms_px.numpy(),
            "rig_weights": self.fit.rig_weights.numpy(),
        }


def found_segments(found: np.ndarray, min_frames: int = 1) -> list[tuple[int, int]]:
    """[start, stop) runs of True in found [T] that are at least `min_frames` long."""
    padded = np.concatenate([[False], np.asarray(found, bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_frames]


def fill_gaps(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """values [T, C] with rows valid where found [T]: linear interpolation over gaps, held at both ends."""
    values = np.asarray(values, np.float32)
    found = np.asarray(found, bool)
    if not found.any():
        raise ValueError("fill_gaps: no frame was found, nothing to fill from")
    t = np.arange(len(found))
    out = np.empty_like(values)
    for c in range(values.shape[1]):
        out[:, c] = np.interp(t, t[found], values[found, c])
    return out


def video_frames(path: str | os.PathLike[str], max_frames: int | None = None) -> tuple[Iterator[np.ndarray], dict]:
    """An iterator over the RGB frames (uint8 [H, W, 3]) of a video and its {fps, width, height, frames}.

    Raises VideoError naming the file when it is missing, not a video, or has no video stream."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    info = {
        "fps": float(rate) if rate else 25.0,
        "width": int(stream.codec_context.width),
        "height": int(stream.codec_context.height),
        "frames": int(stream.frames or 0),
    }

    def frames() -> Iterator[np.ndarray]:
        count = 0
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
                count += 1
                if max_frames is not None and count >= max_frames:
                    break
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed after {count} frames ({e})") from e
        finally:
            container.close()
        if count == 0:
            raise VideoError(f"{path}: no frame could be decoded")

    return frames(), info


def detect_stream(frames: Iterator[np.ndarray], landmarker=None) -> Detections:
    """Landmarker output of a stream of RGB frames, processed DECODE_CHUNK frames at a time (tracking mode)."""
    from .landmarker import Landmarker

    own = landmarker is None
    landmarker = landmarker or Landmarker(static=False)
    parts: list[Detections] = []
    try:
        chunk: list[np.ndarray] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == DECODE_CHUNK:
                parts.append(landmarker.process(np.stack(chunk)))
                chunk = []
        if chunk:
            parts.append(landmarker.process(np.stack(chunk)))
    finally:
        if own:
            landmarker.close()
    if not parts:
        return Detections(
            landmarks=np.zeros((0, NUM_MP_POINTS, 2), np.float32),
            found=np.zeros(0, bool),
            score=np.zeros(0, np.float32),
            box=np.zeros((0, 4), np.float32),
        )
    return Detections(
        landmarks=np.concatenate([p.landmarks for p in parts]),
        found=np.concatenate([p.found for p in parts]),
        score=np.concatenate([p.score for p in parts]),
        box=np.concatenate([p.box for p in parts]),
    )


def fit_track(
    avatar,
    detections: Detections,
    width: int,
    height: int,
    fps: float,
    source: str = "",
    K: Tensor | None = None,
    fov_deg: float | None = None,
    config: FitConfig | None = None,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
) -> VideoTrack:
    """Fit landmarker output of a whole video, `segment_frames` frames per solve, and project the fitted
    guide mesh's iBUG-68 landmarks."""
    from avatar_render.camera import DEFAULT_FOV_DEG

    K, V = tracking_camera(width, height, K=K, fov_deg=fov_deg if fov_deg is not None else DEFAULT_FOV_DEG)
    T = len(detections.found)
    parts: list[TrackResult] = []
    for start in range(0, max(T, 1), segment_frames):
        stop = min(T, start + segment_frames)
        parts.append(
            fit_landmarks(
                avatar,
                detections.landmarks[start:stop],
                K,
                V,
                found=detections.found[start:stop],
                score=detections.score[start:stop],
                config=config,
            )
        )
    fit = TrackResult(**{f: torch.cat([getattr(p, f) for p in parts]) for f in TrackResult.__dataclass_fields__})
    fit.mp_indices = parts[0].mp_indices
    marks, visible = _fitted_landmarks(avatar, fit, K, V, width, height)
    layout = avatar.landmark_layout.name if avatar.landmark_layout is not None else ""
    return VideoTrack(source, fps, width, height, K, V, fit, marks, visible, layout)


def _fitted_landmarks(avatar, fit: TrackResult, K: Tensor, V: Tensor, width: int, height: int):
    """iBUG-68 of the fitted guide mesh in the tracking camera ([T, 68, 2], [T, 68]); NaN / False where not found."""
    T = int(fit.found.shape[0])
    layout = avatar.landmark_layout
    n = layout.num_points if layout is not None else 0
    marks = torch.full((T, n, 2), math.nan)
    visible = torch.zeros((T, n), dtype=torch.bool)
    idx = fit.found.nonzero()[:, 0]
    if n == 0 or len(idx) == 0:
        return marks, visible
    with torch.no_grad():
        for chunk in idx.split(256):
            posed = avatar.pose(fit.codes[chunk], fit.head_pose[chunk])
            uv, vis = posed.landmarks(
                K[None].expand(len(chunk), 3, 3), V[None].expand(len(chunk), 4, 4), width, height, pair_frames=True
            )
            marks[chunk], visible[chunk] = uv.float(), vis
    return marks, visible


def track_video(
    path: str | os.PathLike[str],
    avatar,
    K: Tensor | None = None,
    fov_deg: float | None = None,
    config: FitConfig | None = None,
    max_frames: int | None = None,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    require_face: bool = True,
) -> VideoTrack:
    """Detect and fit every frame of a video file. Raises VideoError (unreadable) or, with `require_face`,
    NoFaceError (no frame shows a face), each naming the file."""
    frames, info = video_frames(path, max_frames)
    detections = detect_stream(frames)
    if require_face and not detections.found.any():
        raise NoFaceError(f"{path}: no face found in any of its {len(detections.found)} frames")
    return fit_track(
        avatar,
        detections,
        info["width"],
        info["height"],
        info["fps"],
        source=str(path),
        K=K,
        fov_deg=fov_deg,
        config=config,
        segment_frames=segment_frames,
    )


def save_track(path: str | os.PathLike[str], track: VideoTrack) -> Path:
    """Write the track file (.npz of `VideoTrack.driving_arrays`) under a temporary name, then rename."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: track files are .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        np.savez(tmp, source=np.array(track.source), **track.driving_arrays())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
