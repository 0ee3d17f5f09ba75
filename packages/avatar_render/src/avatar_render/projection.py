"""EWA projection of 3D Gaussians to screen space, following gsplat 1.5.3's CUDA kernel.

Mirrors `projection_ewa_3dgs_fused_fwd_kernel` (ProjectionEWA3DGSFused.cu) with the pinhole
`persp_proj` of Utils.cuh: the Jacobian uses the camera-space x/y clamped to 1.3x the field of
view, eps2d is added to the 2D covariance (`add_blur`), and the screen extent is opacity aware
(extend = min(3.33, sqrt(2 ln(opacity * 255)))). A Gaussian is culled (radii = 0) when its depth
is outside [near, far], the blurred 2D covariance is not positive definite, its opacity is below
1/255, or its box misses the image. Pure PyTorch, so it runs anywhere and autograd gives the
gradients w.r.t. means, quats, scales and opacities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .geometry import quat_to_rotmat

#: gsplat's ALPHA_THRESHOLD: contributions below this are dropped.
ALPHA_THRESHOLD = 1.0 / 255.0
#: gsplat's cap on the screen-space extent in standard deviations.
MAX_EXTENT_SIGMAS = 3.33


@dataclass
class ProjectedGaussians:
    """Per-camera screen-space Gaussians. Values are only meaningful where radii > 0."""

    means2d: Tensor  # [C, N, 2] pixel coordinates (pixel (i, j) has its centre at (i + 0.5, j + 0.5))
    conics: Tensor  # [C, N, 3] upper triangle (a, b, c) of the inverse blurred 2D covariance
    depths: Tensor  # [C, N] camera-space z
    radii: Tensor  # [C, N, 2] int32 screen extent in pixels per axis; 0 = culled
    opacities: Tensor  # [C, N] opacities, times the antialiasing compensation when antialiased
    compensations: Tensor | None = None  # [C, N] sqrt(det(cov2d) / det(cov2d + eps2d I)) if antialiased


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:  # [N, 4] wxyz, [N, 3] -> [N, 3, 3]
    """Sigma = R S S^T R^T with R from the (normalised) quaternion."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # R S: scale column j of R by s_j
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated (positive)
    opacities: Tensor,  # [N] activated, in (0, 1)
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> ProjectedGaussians:
    """Project N Gaussians into C pinhole cameras exactly as gsplat's fused CUDA projection does."""
    n = means.shape[0]
    if means.shape != (n, 3) or quats.shape != (n, 4) or scales.shape != (n, 3) or opacities.shape != (n,):
        raise ValueError(
            f"project_gaussians: bad shapes means {tuple(means.shape)}, quats "
            f"{tuple(quats.shape)}, scales {tuple(scales.shape)}, "
            f"opacities {tuple(opacities.shape)}"
        )
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(
            f"project_gaussians: expected viewmats [C,4,4] and Ks [C,3,3], got "
            f"{tuple(viewmats.shape)} and {tuple(Ks.shape)}"
        )
    dtype = means.dtype
    viewmats = viewmats.to(dtype)
    Ks = Ks.to(dtype)

    # World -> camera.
    rot = viewmats[:, :3, :3]  # [C, 3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + viewmats[:, None, :3, 3]  # [C, N, 3]
    rot_n = rot[:, None]  # [C, 1, 3, 3]
    covar_c = rot_n @ covariance_3d(quats, scales)[None] @ rot_n.transpose(-1, -2)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)  # [C, N]

    # The kernel returns before projecting when z is outside [near, far]; a safe z keeps the unused
    # branch finite so that masked-out entries cannot turn gradients into NaN.
    depth_ok = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(depth_ok, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Clamp the point used by the Jacobian to 1.3x the view frustum (Utils.cuh persp_proj), so that
    # Gaussians far outside the image do not get huge, badly linearised footprints.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    rz = 1.0 / zs
    tx = zs * torch.clamp(x * rz, min=-lim_x_neg, max=lim_x_pos)
    ty = zs * torch.clamp(y * rz, min=-lim_y_neg, max=lim_y_pos)

    zero = torch.zeros_like(zs)
    jac = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(
        zs.shape + (2, 3)
    )  # [C, N, 2, 3]
    cov2d = jac @ covar_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C, N, 2]; no skew, like the kernel

    # add_blur: a low-pass filter of eps2d px^2 so that every splat covers at least about a pixel.
    a0, b, c0 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a0 * c0 - b * cov2d[..., 1, 0]
    a, c = a0 + eps2d, c0 + eps2d
    det = a * c - b * cov2d[..., 1, 0]
    det_ok = det > 0
    det_s = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)  # inverse of [[a, b], [b, c]]

    opac = opacities.to(dtype)[None].expand(zs.shape)  # [C, N]
    compensations = None
    if antialiased:
        ratio = det_orig / det_s
        pos = ratio > 0
        compensations = torch.where(
            pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio)
        )
        opac = opac * compensations

    with torch.no_grad():
        opac_ok = opac >= ALPHA_THRESHOLD
        # Opacity-aware extent (arXiv 2402.00525 B.2): beyond this radius alpha < 1/255 anyway.
        ratio_thr = torch.where(opac_ok, opac / ALPHA_THRESHOLD, torch.ones_like(opac))
        extend = torch.clamp_max(torch.sqrt(2.0 * torch.log(ratio_thr)), MAX_EXTENT_SIGMAS)
        rad_x = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        rad_y = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_image = (mx + rad_x > 0) & (mx - rad_x < width) & (my + rad_y > 0) & (my - rad_y < height)
        visible = depth_ok & det_ok & opac_ok & ((rad_x > 0) | (rad_y > 0)) & on_image
        radii = torch.stack([rad_x, rad_y], dim=-1)
        radii = torch.where(visible[..., None] & torch.isfinite(radii), radii, 0.0).to(torch.int32)

    return ProjectedGaussians(
        means2d=means2d, conics=conics, depths=z, radii=radii, opacities=opac, compensations=compensations
    )


def camera_centres(viewmats: Tensor) -> Tensor:  # [C, 4, 4] -> [C, 3]
    """World-space camera centres of world-to-camera matrices (as gsplat: inverse(viewmat)[:3, 3])."""
    return torch.linalg.inv(viewmats)[:, :3, 3]


__all__ = [
    "ALPHA_THRESHOLD",
    "MAX_EXTENT_SIGMAS",
    "ProjectedGaussians",
    "camera_centres",
    "covariance_3d",
    "project_gaussians",
]
