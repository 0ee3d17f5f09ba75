"""Driving signals: per-frame expression codes and head poses (and 2D landmarks for C3 models), from a manifest
sequence, a file, or a video."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class DrivingSignal:
    codes: np.ndarray  # [T, D] float32 expression codes
    head_poses: np.ndarray  # [T, 6] axis-angle (rad) + translation (m), avatar canonical frame
    source: dict = field(default_factory=dict)
    codes_in_avatar_space: bool = True  # False for encoder codes: the guide mesh then keeps a neutral expression
    landmarks: np.ndarray | None = None  # [T, K, 2] float32 pixels (u, v) of frames of landmark_size
    landmark_visible: np.ndarray | None = None  # [T, K] bool
    landmark_layout: str | None = None  # e.g. "ibug68"; None: unknown (only the point count is checked)
    landmark_size: tuple[int, int] | None = None  # (height, width) of the pixel grid of `landmarks`

    def __len__(self) -> int:
        return self.codes.shape[0]

    def landmarks_at(self, height: int, width: int) -> np.ndarray | None:  # [T, K, 2]
        """The landmarks in the pixel grid of height x width generated frames, cropped / resized as training does."""
        if self.landmarks is None:
            return None
        from ..data.clips import adjust_points

        src_h, src_w = self.landmark_size or (height, width)
        return adjust_points(self.landmarks, src_h, src_w, height, width)

    def frozen(self, frames: int) -> DrivingSignal:
        """The first frame held for `frames` frames (static face)."""

        def hold(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else np.repeat(x[:1], frames, 0)

        return DrivingSignal(
            hold(self.codes),
            hold(self.head_poses),
            {**self.source, "frozen": True},
            self.codes_in_avatar_space,
            hold(self.landmarks),
            hold(self.landmark_visible),
            self.landmark_layout,
            self.landmark_size,
        )

    def truncated(self, frames: int) -> DrivingSignal:
        """The first `frames` frames."""

        def cut(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[:frames]

        return DrivingSignal(
            self.codes[:frames],
            self.head_poses[:frames],
            self.source,
            self.codes_in_avatar_space,
            cut(self.landmarks),
            cut(self.landmark_visible),
            self.landmark_layout,
            self.landmark_size,
        )


def load_driving(spec: str, expression_encoder: str | None = None, guide_avatar: str = "demo-000") -> DrivingSignal:
    """`ROOT::SEQUENCE_ID` (a manifest sequence), a .npz / .safetensors file with `expression` [T, D] and
    `head_pose` [T, 6] (e.g. a `face-track` file), or a video (.mp4, .mov, ...): tracked onto `guide_avatar`'s head
    rig by `face_tracker` (codes in the avatar's code space and head poses), or, with `expression_encoder`
    weights, encoded by that network (codes only, neutral head pose)."""
    if "::" in spec:
        root, sequence_id = spec.split("::", 1)
        return _from_manifest(root, sequence_id)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"driving source '{spec}' does not exist (ROOT::SEQUENCE_ID, a .npz/.safetensors file "
            "with expression and head_pose, or a video)"
        )
    if path.suffix in (".npz", ".safetensors"):
        return _from_file(path)
    return _from_video(path, expression_encoder, guide_avatar)


def _from_manifest(root: str, sequence_id: str) -> DrivingSignal:
    from ..data.manifest import read_manifest_rows

    rows = {r.sequence_id: r for r in read_manifest_rows(root)}
    if sequence_id not in rows:
        raise KeyError(f"{root}: no sequence '{sequence_id}' (first ids: {', '.join(sorted(rows)[:5])})")
    row = rows[sequence_id]
    return DrivingSignal(
        row.expression.astype(np.float32),
        row.head_pose.astype(np.float32),
        {"kind": "manifest", "root": str(root), "sequence_id": sequence_id},
        landmarks=row.landmarks,
        landmark_visible=row.landmark_visible,
        landmark_layout=row.landmark_layout,
        landmark_size=(row.height, row.width) if row.landmarks is not None else None,
    )


def load_landmarks(spec: str) -> DrivingSignal:
    """Landmarks only: `ROOT::SEQUENCE_ID` (a manifest row with landmarks) or a .npz with `landmarks` [T, K, 2]
    (pixels), optional `landmark_visible` [T, K], `landmark_layout` (str) and `width` / `height` of their pixel
    grid (default: the generated frames'). The codes and poses of the returned signal are empty placeholders."""
    if "::" in spec:
        signal = load_driving(spec)
        if signal.landmarks is None:
            raise ValueError(f"{spec}: this manifest row has no landmarks (num_landmarks = 0)")
        return signal
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"landmark file '{spec}' does not exist (a .npz with landmarks [T, K, 2])")
    if path.suffix != ".npz":
        raise ValueError(f"{path}: landmark files are .npz with landmarks [T, K, 2]")
    return _landmarks_from_npz(path, dict(np.load(path)), required=True)


def _landmarks_from_npz(path: Path, data: dict, required: bool) -> DrivingSignal:
    """A DrivingSignal carrying only the landmark fields of an .npz (codes [T, 0], neutral poses)."""
    if "landmarks" not in data:
        if required:
            raise ValueError(f"{path}: field 'landmarks' [T, K, 2] is missing")
        return DrivingSignal(np.zeros((0, 0), np.float32), np.zeros((0, 6), np.float32))
    points = np.asarray(data["landmarks"], np.float32)
    if points.ndim != 3 or points.shape[2] != 2 or not np.isfinite(points).all():
        raise ValueError(f"{path}: field 'landmarks' must be finite [T, K, 2] pixels, got shape {list(points.shape)}")
    visible = None
    if "landmark_visible" in data:
        visible = np.asarray(data["landmark_visible"]).astype(bool)
        if visible.shape != points.shape[:2]:
            raise ValueError(
                f"{path}: field 'landmark_visible' must be [T, K] = {list(points.shape[:2])}, got {list(visible.shape)}"
            )
    layout = str(data["landmark_layout"]) if "landmark_layout" in data else None
    size = None
    if "width" in data or "height" in data:
        if not ("width" in data and "height" in data):
            raise ValueError(f"{path}: give both 'width' and 'height' of the landmarks' pixel grid, or neither")
        size = (int(data["height"]), int(data["width"]))
    t = points.shape[0]
    return DrivingSignal(
        np.zeros((t, 0), np.float32),
        np.zeros((t, 6), np.float32),
        {"kind": "landmarks", "path": str(path)},
        landmarks=points,
        landmark_visible=visible,
        landmark_layout=layout,
        landmark_size=size,
    )


def _from_file(path: Path) -> DrivingSignal:
    if path.suffix == ".npz":
        data = dict(np.load(path))
    else:
        from safetensors.numpy import load_file

        data = load_file(str(path))
    for key in ("expression", "head_pose"):
        if key not in data:
            raise ValueError(f"{path}: field '{key}' is missing (expected expression [T, D] and head_pose [T, 6])")
    codes, poses = np.asarray(data["expression"], np.float32), np.asarray(data["head_pose"], np.float32)
    if codes.ndim != 2 or poses.shape != (codes.shape[0], 6):
        raise ValueError(f"{path}: expression must be [T, D] and head_pose [T, 6], got {codes.shape}, {poses.shape}")
    if not (np.isfinite(codes).all() and np.isfinite(poses).all()):
        raise ValueError(f"{path}: expression and head_pose must be finite")
    marks = _landmarks_from_npz(path, data, required=False)
    if marks.landmarks is not None and marks.landmarks.shape[0] != codes.shape[0]:
        raise ValueError(f"{path}: landmarks cover {marks.landmarks.shape[0]} frames, expression {codes.shape[0]}")
    return DrivingSignal(
        codes,
        poses,
        {"kind": "file", "path": str(path)},
        landmarks=marks.landmarks,
        landmark_visible=marks.landmark_visible,
        landmark_layout=marks.landmark_layout,
        landmark_size=marks.landmark_size,
    )


def _from_video(path: Path, encoder_path: str | None, guide_avatar: str = "demo-000") -> DrivingSignal:
    if encoder_path is None:
        return _tracked_video(path, guide_avatar)
    import av

    from ..expression_encoder import ExpressionEncoder, encode_video

    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    encoder = ExpressionEncoder.from_file(encoder_path)
    codes = encode_video(encoder, frames).numpy().astype(np.float32)
    # No head-pose estimator ships with the project: the guide mesh stays in the identity pose.
    return DrivingSignal(
        codes,
        np.zeros((len(codes), 6), np.float32),
        {"kind": "video", "path": str(path), "encoder": str(encoder_path)},
        codes_in_avatar_space=False,
    )


def _tracked_video(path: Path, guide_avatar: str) -> DrivingSignal:
    """A driving video tracked onto the guide avatar's rig (no weights needed): codes, head poses, landmarks."""
    from avatar_render import load_avatar
    from face_tracker.track import track_video

    track = track_video(path, load_avatar(guide_avatar))
    arrays = track.driving_arrays()
    return DrivingSignal(
        arrays["expression"],
        arrays["head_pose"],
        {
            "kind": "tracked-video",
            "path": str(path),
            "guide_avatar": guide_avatar,
            "frames_with_face": int(track.found.sum()),
            "frames": len(track),
        },
        landmarks=arrays["landmarks"],
        landmark_visible=arrays["landmark_visible"],
        landmark_layout=track.landmark_layout or None,
        landmark_size=(track.height, track.width),
    )
