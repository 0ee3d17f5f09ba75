"""Rigid head pose from 2-D landmarks: a linear weak-perspective start, then batched Levenberg-Marquardt.

Pose [6] = axis-angle (rad) + translation (m) in the avatar's world frame, the convention of
`Avatar.pose_mesh`: x' = R(x - head_pivot) + head_pivot + t (per-vertex head weights, see `rig.py`).
The camera is fixed: K [3,3] and viewmat [4,4] (world-to-camera, OpenCV axes).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jacfwd, vmap

from avatar_render.geometry import rotmat_to_axis_angle

from .rig import LandmarkRig, project


def residuals(
    rig: LandmarkRig,
    weights: Tensor | None,
    pose: Tensor,
    uv: Tensor,
    mask: Tensor,
    scale: Tensor,
    K: Tensor,
    V: Tensor,
) -> Tensor:
    """Reprojection residuals [T, P, 2] in units of the face's image size `scale` [T] (0 on masked points)."""
    pred, _ = project(rig.points(weights, pose), K, V)
    return (pred - uv.nan_to_num()) * (mask[..., None] / scale[:, None, None])


def initial_pose(rig: LandmarkRig, uv: Tensor, mask: Tensor, K: Tensor, V: Tensor, iterations: int = 4) -> Tensor:
    """Weak-perspective start [T, 6] from landmarks uv [T, P, 2] (mask [T, P]: usable points).

    Normalised image points m ~ (R_c y + T_c)_xy / Z with y the neutral points about the pivot: a least-squares
    affine map A [2, 3] from centred y to centred m gives R_c's first two rows (orthonormalised, scale 1/Z), the
    third row is their cross product, and the centroid's depth Z and image position give T_c. A few POSIT
    iterations (DeMenthon & Davis 1995) then correct the image points for perspective.
    """
    dt = rig.neutral.dtype
    m = torch.stack([(uv[..., 0] - K[0, 2]) / K[0, 0], (uv[..., 1] - K[1, 2]) / K[1, 1]], -1).nan_to_num()
    w = mask.to(dt)[..., None]  # [T, P, 1]
    y = (rig.neutral - rig.pivot).expand(uv.shape[0], -1, -1)
    count = w.sum(1, keepdim=True).clamp_min(1)
    y_bar = (w * y).sum(1, keepdim=True) / count
    yc = w * (y - y_bar)
    m_corr = m
    for _ in range(iterations):
        m_bar = (w * m_corr).sum(1, keepdim=True) / count
        a_t = torch.linalg.lstsq(yc, w * (m_corr - m_bar)).solution  # [T, 3, 2] = A^T
        U, S, Vh = torch.linalg.svd(a_t.transpose(1, 2), full_matrices=False)  # A = U S Vh, Vh [T, 2, 3]
        rows = U @ Vh  # nearest 2x3 with orthonormal rows
        r_c = torch.stack([rows[:, 0], rows[:, 1], torch.linalg.cross(rows[:, 0], rows[:, 1])], 1)
        depth = 1.0 / S.mean(-1).clamp_min(1e-6)  # [T]
        centre_cam = depth[:, None] * torch.cat([m_bar[:, 0], torch.ones_like(depth)[:, None]], -1)
        t_c = centre_cam - (r_c @ y_bar[:, 0, :, None])[..., 0]
        # POSIT's correction: scale each image point by its estimated depth over the centroid's, which turns
        # the perspective image into the weak-perspective one the next affine fit assumes.
        z = (y @ r_c[:, 2:].transpose(1, 2))[..., 0] + t_c[:, 2:]  # [T, P]
        m_corr = m * (z / depth[:, None]).clamp(0.5, 2.0)[..., None]
    # Back to the world frame: R = Rv^T R_c, t = Rv^T (T_c - tv) - pivot (T_c = Rv (pivot + t) + tv).
    rv, tv = V[:3, :3], V[:3, 3]
    rot = rv.T @ r_c
    trans = (t_c - tv) @ rv - rig.pivot
    return torch.cat([rotmat_to_axis_angle(rot), trans], -1)


def fit_rigid(
    rig: LandmarkRig,
    uv: Tensor,
    mask: Tensor,
    scale: Tensor,
    K: Tensor,
    V: Tensor,
    pose: Tensor | None = None,
    weights: Tensor | None = None,
    iterations: int = 15,
) -> Tensor:
    """Per-frame Levenberg-Marquardt on the reprojection error (frames independent, batched) -> pose [T, 6]."""
    pose = initial_pose(rig, uv, mask, K, V) if pose is None else pose.clone()
    w = weights if weights is not None else torch.zeros(uv.shape[0], rig.num_blendshapes, dtype=pose.dtype)

    def one(p: Tensor, wt: Tensor, u: Tensor, mk: Tensor, s: Tensor) -> Tensor:
        return residuals(rig, wt[None], p[None], u[None], mk[None], s[None], K, V).reshape(-1)

    jac = vmap(jacfwd(one, argnums=0))

    def cost(p: Tensor) -> Tensor:
        r = residuals(rig, w, p, uv, mask, scale, K, V)
        _, z = project(rig.points(w, p), K, V)
        behind = ((z <= 1e-3) & mask).any(1)  # an iterate with a point behind the camera is rejected
        return torch.where(behind, torch.full_like(scale, torch.inf), r.square().sum((1, 2)))

    damping = torch.full_like(scale, 1e-3)
    current = cost(pose)
    eye = torch.eye(6, dtype=pose.dtype)
    for _ in range(iterations):
        r = residuals(rig, w, pose, uv, mask, scale, K, V).reshape(uv.shape[0], -1)
        J = jac(pose, w, uv, mask, scale)  # [T, 2P, 6]
        H = J.transpose(1, 2) @ J
        H = H + damping[:, None, None] * (H.diagonal(dim1=1, dim2=2)[..., None] * eye + 1e-9 * eye)
        step = -torch.linalg.solve(H, (J.transpose(1, 2) @ r[..., None]))[..., 0]
        trial = pose + step
        new = cost(trial)
        better = new < current
        pose = torch.where(better[:, None], trial, pose)
        current = torch.where(better, new, current)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-7, 1e7)
    return pose
