"""Camera paths for inference in the paper's control modes (Fig. 1), OpenCV camera-to-world, metres.

Convention (CONVENTIONS 6): the user's photo is the REFERENCE camera, taken to be the frontal camera at the default
distance (`reference_c2w()`: yaw 0, pitch 0, DEFAULT_DISTANCE from the head centre, in the avatar canonical frame,
+Y up, face toward +Z). Every path is relative to it: `static` with --view-yaw 35 is a camera turned 35 deg
around the head from the photo's viewpoint. Paths come back as absolute cameras in the avatar frame, from which
the guide mesh's normal maps are rendered; the model's ray maps are those cameras relative to the reference,
c2w_i' = w2c_ref c2w_i, so normals and rays always describe the same camera.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HEAD_CENTRE = (0.0, -0.03, 0.0)
#: Where the user's photo is taken to be taken from (m from the head centre, frontal); also the paths' default.
DEFAULT_DISTANCE = 0.32


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


@dataclass
class CameraPath:
    """Cameras of a clip and of its reference image, absolute in the avatar canonical frame."""

    c2w: np.ndarray  # [T, 4, 4] OpenCV camera-to-world
    reference_c2w: np.ndarray  # [4, 4] the reference image's camera
    K: np.ndarray | None = None  # [T, 3, 3] pixels, None: the pipeline's default field of view
    reference_K: np.ndarray | None = None  # [3, 3] pixels, None: the default
    params: dict = field(default_factory=dict)


def reference_c2w(distance_m: float = DEFAULT_DISTANCE) -> np.ndarray:  # [4, 4]
    """The camera of the user's photo, absolute in the avatar frame: frontal (yaw 0, pitch 0) at `distance_m`."""
    return orbit_c2w(np.zeros(1), np.zeros(1), distance_m)[0]


def make_camera_path(
    kind: str,
    frames: int,
    view_yaw_deg: float = 0.0,
    distance_m: float = DEFAULT_DISTANCE,
    sweep_deg: float = 90.0,
    view_pitch_deg: float = 0.0,
) -> tuple[np.ndarray, dict]:
    """Absolute c2w [T, 4, 4] (avatar frame) for `static` (view_yaw 0 and view_pitch 0 at the default distance:
    the reference camera itself; else a static novel view), `spin` (an arc of sweep_deg starting at view_yaw) or
    `spiral` (yaw +-40 deg and pitch +-10 deg oscillations around view_yaw / view_pitch), plus its parameters.
    Yaw and pitch are measured from the reference (photo) camera's viewpoint, +yaw toward the subject's left."""
    t = np.linspace(0.0, 1.0, frames)
    if kind == "static":
        yaw, pitch = np.full(frames, view_yaw_deg), np.full(frames, view_pitch_deg)
    elif kind == "spin":
        yaw, pitch = view_yaw_deg + sweep_deg * t, np.full(frames, view_pitch_deg)
    elif kind == "spiral":
        yaw = view_yaw_deg + 40.0 * np.sin(2 * math.pi * t)
        pitch = view_pitch_deg + 10.0 * np.sin(4 * math.pi * t)
    else:
        raise ValueError(f"camera path must be static, spin, spiral or a file, got {kind!r}")
    params = {
        "kind": kind,
        "view_yaw_deg": view_yaw_deg,
        "view_pitch_deg": view_pitch_deg,
        "distance_m": distance_m,
        "sweep_deg": sweep_deg,
    }
    return orbit_c2w(yaw, pitch, distance_m), params


def _matrices(data, key: str, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if key not in data:
        return None
    value = np.asarray(data[key], dtype=np.float64)
    if value.shape[-len(shape) :] != shape or value.ndim not in (len(shape), len(shape) + 1):
        raise ValueError(
            f"{path}: field '{key}' must be {list(shape)} or [T, {', '.join(map(str, shape))}], "
            f"got shape {list(value.shape)}"
        )
    if not np.isfinite(value).all():
        raise ValueError(f"{path}: field '{key}' holds NaN or inf")
    return value


def load_camera_file(path: str | Path, frames: int) -> CameraPath:
    """A camera path file -> its CameraPath (absolute cameras and the reference camera, first `frames` frames).

    JSON {"c2w": [[4x4]...], "K": [[3x3]...], "reference_c2w": [4x4], "reference_K": [3x3], "width", "height"} or
    .npz with the same arrays; only c2w is required. OpenCV camera-to-world, metres; K in pixels at width x height.
    - Without `reference_c2w`, the cameras are relative to the user's photo (the reference camera): the identity is
      the photo's viewpoint. They are placed in the avatar frame as `reference_c2w() @ c2w`.
    - With `reference_c2w` (the reference image's own camera, absolute), `c2w` is absolute in the same frame,
      which must be the avatar canonical frame (e.g. cameras and a reference frame taken from one manifest row),
      since the guide mesh's normal maps are rendered from it; the rays use w2c_ref c2w_i.
    `reference_K` (optional) is the reference image's intrinsics at width x height.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"camera path file '{path}' does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        meta = {k: data[k] for k in ("width", "height") if k in data}
    elif path.suffix == ".npz":
        data = dict(np.load(path))
        meta = {k: int(data[k]) for k in ("width", "height") if k in data}
    else:
        raise ValueError(f"{path}: camera files are .json or .npz")
    if "c2w" not in data:
        raise ValueError(f"{path}: field 'c2w' (camera-to-world [T, 4, 4]) is missing")
    c2w = _matrices(data, "c2w", path, (4, 4))
    if c2w.ndim != 3:
        raise ValueError(f"{path}: field 'c2w' must be [T, 4, 4], got shape {list(c2w.shape)}")
    if c2w.shape[0] < frames:
        raise ValueError(f"{path}: field 'c2w' has {c2w.shape[0]} cameras, {frames} frames were asked for")
    K = _matrices(data, "K", path, (3, 3))
    if K is not None and K.shape != (c2w.shape[0], 3, 3):
        raise ValueError(f"{path}: field 'K' must be [T, 3, 3] like c2w, got shape {list(K.shape)}")
    reference = _matrices(data, "reference_c2w", path, (4, 4))
    if reference is not None and reference.shape != (4, 4):
        raise ValueError(f"{path}: field 'reference_c2w' must be one [4, 4] matrix, got shape {list(reference.shape)}")
    reference_K = _matrices(data, "reference_K", path, (3, 3))
    if reference_K is not None and reference_K.shape != (3, 3):
        raise ValueError(f"{path}: field 'reference_K' must be one [3, 3] matrix, got shape {list(reference_K.shape)}")
    c2w = c2w[:frames]
    if reference is None:  # relative to the photo: place them around the avatar like the built-in paths
        reference, relative_to = reference_c2w(), "photo"
        c2w = reference[None] @ c2w
    else:
        relative_to = "reference_c2w"
    params = {"kind": "file", "path": str(path), "relative_to": relative_to, **meta}
    return CameraPath(c2w, reference, None if K is None else K[:frames], reference_K, params)
