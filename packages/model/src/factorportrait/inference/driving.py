"""Driving signals: per-frame expression codes and head poses, from a manifest sequence, a file, or a video."""

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

    def __len__(self) -> int:
        return self.codes.shape[0]


def load_driving(spec: str, expression_encoder: str | None = None) -> DrivingSignal:
    """`ROOT::SEQUENCE_ID` (a manifest sequence), a .npz / .safetensors file with `expression` [T, D] and
    `head_pose` [T, 6], or a video (.mp4, .mov, ...) together with expression-encoder weights."""
    if "::" in spec:
        root, sequence_id = spec.split("::", 1)
        return _from_manifest(root, sequence_id)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"driving source '{spec}' does not exist (ROOT::SEQUENCE_ID, a .npz/.safetensors file "
            "with expression and head_pose, or a video with --expression-encoder)"
        )
    if path.suffix in (".npz", ".safetensors"):
        return _from_file(path)
    return _from_video(path, expression_encoder)


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
    return DrivingSignal(codes, poses, {"kind": "file", "path": str(path)})


def _from_video(path: Path, encoder_path: str | None) -> DrivingSignal:
    if encoder_path is None:
        raise FileNotFoundError(
            f"driving video '{path}' needs expression-encoder weights: pass --expression-encoder "
            "PATH (a ResNet34 + linear state dict)"
        )
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
