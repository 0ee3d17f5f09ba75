"""Camera-space normal maps of the (posed) guide mesh, and their 8-bit video encoding.

Normals are the mesh's outward normals (faces wound counter-clockwise seen from outside, i.e.
cross(v1 - v0, v2 - v0) points out) rotated into the OpenCV camera frame by viewmat's rotation
(x right, y down, z forward): a surface facing the camera has n_z < 0.

Encoding used in videos / images: rgb = (n + 1) / 2 per channel (uint8: round(255 * rgb)), and
background (no surface) = (0, 0, 0), black. No unit normal encodes to black (that would need
n = (-1, -1, -1)), so black is unambiguous; `decode_normals` maps it back to the zero vector.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .camera import Camera
from .mesh_raster import rasterize_mesh

# |2 rgb - 1| is 1 for an encoded unit normal and sqrt(3) for black; decide halfway so that
# lossy video compression noise on either does not flip it.
_BACKGROUND_NORM = 0.5 * (1.0 + math.sqrt(3.0))


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:  # [..., V, 3], [F, 3] -> [..., F, 3]
    """Unnormalised face normals cross(v1 - v0, v2 - v0); their length is twice the face area."""
    v0, v1, v2 = (vertices[..., faces[:, k], :] for k in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:  # [..., V, 3], [F, 3] -> [..., V, 3]
    """Area-weighted unit vertex normals (zero for vertices used by no non-degenerate face)."""
    faces = faces.to(device=vertices.device, dtype=torch.long)
    fn = face_normals(vertices, faces)  # the cross product's length already weights by area
    vn = torch.zeros_like(vertices)
    for k in range(3):
        vn = vn.index_add(-2, faces[:, k], fn)
    return F.normalize(vn, dim=-1, eps=1e-20)


def render_normals(
    vertices: Tensor,  # [V, 3] or [C, V, 3] world
    faces: Tensor,  # [F, 3]
    cameras: Camera,
    smooth: bool = True,
) -> tuple[Tensor, Tensor]:  # normals [C, H, W, 3], mask [C, H, W, 1]
    """Camera-space unit normal maps (OpenCV frame) and coverage masks (float 0/1).

    smooth=True interpolates area-weighted vertex normals with perspective-correct barycentrics
    and renormalises; smooth=False uses flat face normals. Normals are zero where the mask is 0.
    Backfaces seen through holes of an open mesh keep their outward normal (n_z > 0).
    """
    dtype = vertices.dtype if vertices.dtype in (torch.float32, torch.float64) else torch.float32
    vertices = vertices.to(dtype)
    faces = faces.to(device=vertices.device, dtype=torch.long)
    cams = cameras.to(device=vertices.device, dtype=dtype)
    C, H, W = len(cams), cams.height, cams.width
    frags = rasterize_mesh(vertices, faces, cams.viewmat, cams.K, W, H)
    rot = cams.viewmat[:, :3, :3]  # [C, 3, 3] world-to-camera rotation

    covered = frags.face_ids >= 0  # [C, H, W]
    cam_idx = torch.arange(C, device=vertices.device).view(C, 1, 1).expand(C, H, W)[covered]  # [N]
    f = frags.face_ids[covered]  # [N]
    if smooth:
        vn = vertex_normals(vertices, faces) @ rot.transpose(-1, -2)  # [C, V, 3] camera space
        nv = vn[cam_idx.unsqueeze(-1), faces[f]]  # [N, 3, 3]
        n = (frags.bary[covered].unsqueeze(-1) * nv).sum(-2)
    else:
        fn = face_normals(vertices, faces) @ rot.transpose(-1, -2)  # [C, F, 3]
        n = fn[cam_idx, f]
    normals = torch.zeros(C, H, W, 3, device=vertices.device, dtype=dtype)
    normals = normals.index_put((covered,), F.normalize(n, dim=-1, eps=1e-20))
    return normals, covered.unsqueeze(-1).to(dtype)


def encode_normals(normals: Tensor, mask: Tensor | None = None) -> Tensor:  # [..., 3] -> uint8 [..., 3]
    """uint8 rgb = round(255 * (n + 1) / 2); background = (0, 0, 0).

    Background is where `mask` ([...] or [..., 1]) is 0, or, without a mask, where the normal is
    the zero vector (as `render_normals` leaves it).
    """
    rgb = torch.round((normals.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
    if mask is None:
        background = (normals == 0).all(-1, keepdim=True)
    else:
        mask = mask if mask.dim() == normals.dim() and mask.shape[-1] == 1 else mask.unsqueeze(-1)
        background = mask == 0
    return rgb.masked_fill(background, 0)


def decode_normals(rgb: Tensor) -> Tensor:  # uint8 [..., 3] or float in [0, 1] -> [..., 3]
    """Inverse of `encode_normals` up to quantisation: unit normals n = normalise(2 rgb - 1).

    Background pixels (black, or anything closer to black than to the unit sphere of codes)
    decode to the zero vector.
    """
    x = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()
    n = 2.0 * x - 1.0
    background = n.norm(dim=-1, keepdim=True) > _BACKGROUND_NORM
    return F.normalize(n, dim=-1, eps=1e-12).masked_fill(background, 0.0)
