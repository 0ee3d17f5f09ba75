"""Rotations (quaternions wxyz, axis-angle) and the triangle frames that bind Gaussians to a mesh."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 3, 3]
    """Rotation matrices of (not necessarily unit) quaternions in wxyz order."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def rotmat_to_quat(rot: Tensor) -> Tensor:  # [..., 3, 3] -> [..., 4] wxyz, w >= 0
    """Quaternions (wxyz, w >= 0) of rotation matrices, numerically stable for every angle."""
    m = rot
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack(
                [
                    1 + trace,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
                ],
                -1,
            ),
        ],
        dim=-2,
    )  # [..., 4, 4]: row k is 4*q*q_k up to scale, best conditioned where the diagonal term is largest
    diag = torch.stack(
        [
            1 + trace,
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        -1,
    )
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(candidates, -2, best.unsqueeze(-1).expand(best.shape[:-1] + (1, 4))).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:  # [..., 4] x [..., 4] -> [..., 4] (wxyz)
    """Hamilton product a * b (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def axis_angle_to_rotmat(axis_angle: Tensor) -> Tensor:  # [..., 3] -> [..., 3, 3]
    """Rodrigues' formula; the rotation angle is the vector's norm (radians)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    small = angle < 1e-8
    axis = axis_angle / torch.where(small, torch.ones_like(angle), angle)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(axis.shape[:-1] + (3, 3))
    sin = torch.sin(angle)[..., None]
    cos = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand(skew.shape)
    rot = eye + sin * skew + (1 - cos) * (skew @ skew)
    return torch.where(small[..., None], eye + _skew(axis_angle), rot)


def _skew(v: Tensor) -> Tensor:
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(v.shape[:-1] + (3, 3))


def rotmat_to_axis_angle(rot: Tensor) -> Tensor:  # [..., 3, 3] -> [..., 3]
    """Inverse of `axis_angle_to_rotmat` (through the quaternion, stable near 0 and pi)."""
    q = rotmat_to_quat(rot)
    sin_half = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    scale = torch.where(sin_half < 1e-8, 2.0 * torch.ones_like(angle), angle / sin_half.clamp_min(1e-12))
    return q[..., 1:] * scale


def triangle_frames(
    vertices: Tensor,  # [..., V, 3]
    faces: Tensor,  # [F, 3] int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-triangle frames of GaussianAvatars (CONVENTIONS 3).

    a0 = n(v1 - v0); a1 = n(a0 x (v2 - v0)); a2 = -n(a1 x a0); R = [a0 a1 a2] (columns);
    centre c = (v0 + v1 + v2) / 3; scale s = (|v1 - v0| + |a2 . (v2 - v0)|) / 2.

    Returns rotations [..., F, 3, 3], centres [..., F, 3], scales [..., F].
    """
    v0 = vertices[..., faces[:, 0], :]
    v1 = vertices[..., faces[:, 1], :]
    v2 = vertices[..., faces[:, 2], :]
    e01 = v1 - v0
    e02 = v2 - v0
    a0 = F.normalize(e01, dim=-1)
    a1 = F.normalize(torch.cross(a0, e02, dim=-1), dim=-1)
    a2 = -F.normalize(torch.cross(a1, a0, dim=-1), dim=-1)
    rot = torch.stack([a0, a1, a2], dim=-1)
    centre = (v0 + v1 + v2) / 3.0
    scale = 0.5 * (e01.norm(dim=-1) + (a2 * e02).sum(-1).abs())
    return rot, centre, scale
