"""Turntable contact sheets of an avatar: RGB and normal maps, neutral and expressive."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .avatar import Avatar
from .camera import Camera


def turntable_cameras(
    num_views: int,
    size_px: int,
    distance_m: float = 0.45,
    elevation_deg: float = 5.0,
    fov_deg: float = 53.1,
    target: tuple[float, float, float] = (0.0, -0.085, 0.0),
) -> Camera:
    """`num_views` cameras on a circle around the head, starting frontal (+Z), turning toward +X.

    The default frames head and shoulders like a phone portrait (the bust's chest at the bottom edge)."""
    yaws = torch.linspace(0.0, 2 * math.pi, num_views + 1)[:-1]
    elevation = math.radians(elevation_deg)
    eyes = torch.stack(
        [
            distance_m * math.cos(elevation) * torch.sin(yaws),
            torch.full_like(yaws, distance_m * math.sin(elevation)),
            distance_m * math.cos(elevation) * torch.cos(yaws),
        ],
        -1,
    ) + torch.tensor(target)
    return Camera.look_at(eyes, torch.tensor(target), size_px, size_px, fov_deg=fov_deg)


#: A broad, readable expression for previews: open smiling mouth, raised brows.
PREVIEW_EXPRESSION = {
    "jawOpen": 0.45,
    "mouthSmileLeft": 0.8,
    "mouthSmileRight": 0.8,
    "browInnerUp": 0.6,
    "browOuterUpLeft": 0.5,
    "browOuterUpRight": 0.5,
    "cheekSquintLeft": 0.3,
    "cheekSquintRight": 0.3,
}


def expressive_code(avatar: Avatar) -> Tensor:  # [D]
    """The preview expression as a code; the most active capture frame if the rig has no ARKit names."""
    labels = avatar.expression_labels
    if not all(name in labels for name in PREVIEW_EXPRESSION):
        return avatar.capture_codes[int(avatar.rig_weights(avatar.capture_codes).sum(-1).argmax())]
    weights = torch.zeros(1, len(labels))
    for name, value in PREVIEW_EXPRESSION.items():
        weights[0, labels.index(name)] = value
    return avatar.codes_from_rig_weights(weights)[0]


def contact_sheet(
    avatar: Avatar, num_views: int = 6, size_px: int = 256, backend: str = "auto", background: float = 1.0
) -> np.ndarray:
    """uint8 image [4*size, num_views*size, 3]: rows neutral RGB, neutral normals, expressive RGB and normals."""
    from .normals import encode_normals, render_normals
    from .rendering import render

    cameras = turntable_cameras(num_views, size_px)
    codes = torch.stack([torch.zeros(avatar.expression_dim), expressive_code(avatar)])
    poses = torch.zeros(2, 6)  # expression only: the turntable already shows the head from all sides
    posed = avatar.pose(codes, poses)
    rows: list[Tensor] = []
    bg = torch.full((3,), background)
    for t in range(2):
        gaussians = posed.frame(t)
        rgb = torch.cat([render(gaussians, cameras[i], backend=backend, background=bg).rgb for i in range(num_views)])
        normals, mask = render_normals(posed.vertices[t], posed.faces, cameras)
        rows.append(_strip((rgb.clamp(0, 1) * 255).round().to(torch.uint8)))
        rows.append(_strip(encode_normals(normals, mask)))
    return torch.cat(rows, 0).numpy()


def _strip(images: Tensor) -> Tensor:  # [C, H, W, 3] -> [H, C*W, 3]
    return torch.cat(list(images.cpu()), dim=1)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an image atomically (temporary name, then rename)."""
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path
