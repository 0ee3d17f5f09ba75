"""Camera paths for inference in the paper's control modes (Fig. 1), OpenCV camera-to-world, metres.

Cameras orbit the avatar frame's head centre (+Y up, face toward +Z). The absolute viewpoint decides from where
the driving normal maps are rendered; the model's ray maps use the cameras relative to the first frame.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

HEAD_CENTRE = (0.0, -0.03, 0.0)


def orbit_c2w(
    yaw_deg: np.ndarray, pitch_deg: np.ndarray, distance_m: float, centre: tuple[float, float, float] = HEAD_CENTRE
) -> np.ndarray:  # [T, 4, 4]
    """Cameras on a sphere around `centre` looking at it (yaw 0 = in front of the face, +yaw toward +X)."""
    from avatar_render.camera import look_at_viewmat

    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    c = np.asarray(centre)
    eyes = c + distance_m * np.stack([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], -1)
    viewmats = look_at_viewmat(torch.from_numpy(eyes), torch.from_numpy(np.broadcast_to(c, eyes.shape).copy()))
    return torch.linalg.inv(viewmats).numpy()


def make_camera_path(
    kind: str, frames: int, view_yaw_deg: float = 0.0, distance_m: float = 0.32, sweep_deg: float = 90.0
) -> tuple[np.ndarray, dict]:
    """c2w [T, 4, 4] for `static` (view_yaw 0: frontal; else a static novel view), `spin` (an arc of sweep_deg
    starting at view_yaw) or `spiral` (yaw +-40 deg and pitch +-10 deg oscillations), plus its parameters."""
    t = np.linspace(0.0, 1.0, frames)
    if kind == "static":
        yaw, pitch = np.full(frames, view_yaw_deg), np.zeros(frames)
    elif kind == "spin":
        yaw, pitch = view_yaw_deg + sweep_deg * t, np.zeros(frames)
    elif kind == "spiral":
        yaw = view_yaw_deg + 40.0 * np.sin(2 * math.pi * t)
        pitch = 10.0 * np.sin(4 * math.pi * t)
    else:
        raise ValueError(f"camera path must be static, spin, spiral or a file, got {kind!r}")
    params = {"kind": kind, "view_yaw_deg": view_yaw_deg, "distance_m": distance_m, "sweep_deg": sweep_deg}
    return orbit_c2w(yaw, pitch, distance_m), params


def load_camera_file(path: str | Path, frames: int) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """A camera path file: JSON {"c2w": [[4x4]...], "K": [[3x3]...] (optional), "width", "height"} or .npz with
    arrays c2w [T,4,4] and optionally K [T,3,3] (pixels at width x height). OpenCV camera-to-world."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"camera path file '{path}' does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        c2w = np.asarray(data.get("c2w"), dtype=np.float64)
        K = np.asarray(data["K"], dtype=np.float64) if "K" in data else None
        meta = {k: data[k] for k in ("width", "height") if k in data}
    elif path.suffix == ".npz":
        data = np.load(path)
        c2w = np.asarray(data["c2w"], dtype=np.float64)
        K = np.asarray(data["K"], dtype=np.float64) if "K" in data else None
        meta = {k: int(data[k]) for k in ("width", "height") if k in data}
    else:
        raise ValueError(f"{path}: camera files are .json or .npz")
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"{path}: field 'c2w' must be finite [T, 4, 4], got shape {c2w.shape}")
    if c2w.shape[0] < frames:
        raise ValueError(f"{path}: field 'c2w' has {c2w.shape[0]} cameras, {frames} frames were asked for")
    if K is not None and (K.shape != (c2w.shape[0], 3, 3) or not np.isfinite(K).all()):
        raise ValueError(f"{path}: field 'K' must be finite [T, 3, 3] like c2w, got {K.shape}")
    return c2w[:frames], None if K is None else K[:frames], {"kind": "file", "path": str(path), **meta}
