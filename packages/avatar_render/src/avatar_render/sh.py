"""Real spherical harmonics with gsplat 1.5.3's constants and sign conventions.

The basis is Sloan's "Efficient Spherical Harmonic Evaluation" (JCGT 2013) ordering, as used by
INRIA's 3DGS and gsplat: for degree 1 the bases are (-C1 y, C1 z, -C1 x). gsplat's rasterization()
turns the SH value into a colour with clamp_min(value + 0.5, 0); `sh_to_rgb` does the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Highest degree we evaluate (gsplat supports 0..4).
MAX_SH_DEGREE = 4

_C0 = 0.2820947917738781
_C1 = 0.48860251190292


def sh_basis(dirs: Tensor, degree: int) -> Tensor:  # [..., 3] unit -> [..., (degree + 1)^2]
    """Real SH basis values at unit directions `dirs`, in gsplat's order and signs."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, _C0)]
    if degree >= 1:
        bases += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        z2 = z * z
        tmp_b = -1.092548430592079 * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        sh6 = 0.9461746957575601 * z2 - 0.3153915652525201
        bases += [0.5462742152960395 * s1, tmp_b * y, sh6, tmp_b * x, 0.5462742152960395 * c1]
    if degree >= 3:
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b3 = 1.445305721320277 * z
        c2 = x * c1 - y * s1
        s2 = x * s1 + y * c1
        sh12 = z * (1.865881662950577 * z2 - 1.119528997770346)
        bases += [
            -0.5900435899266435 * s2,
            tmp_b3 * s1,
            tmp_c * y,
            sh12,
            tmp_c * x,
            tmp_b3 * c1,
            -0.5900435899266435 * c2,
        ]
    if degree >= 4:
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c4 = 3.31161143515146 * z2 - 0.47308734787878
        tmp_b4 = -1.770130769779931 * z
        c3 = x * c2 - y * s2
        s3 = x * s2 + y * c2
        sh20 = 1.984313483298443 * z * sh12 - 1.006230589874905 * sh6
        bases += [
            0.6258357354491763 * s3,
            tmp_b4 * s2,
            tmp_c4 * s1,
            tmp_d * y,
            sh20,
            tmp_d * x,
            tmp_c4 * c1,
            tmp_b4 * c2,
            0.6258357354491763 * c3,
        ]
    return torch.stack(bases, dim=-1)


def eval_sh_colors(
    sh: Tensor,  # [..., K, 3]
    dirs: Tensor,  # [..., 3], need not be unit length
    degree: int,
) -> Tensor:  # [..., 3]
    """Raw SH value sum_k Y_k(dir) sh_k over the first (degree + 1)^2 coefficients.

    Same value as gsplat's `spherical_harmonics`; coefficients beyond the degree are ignored.
    """
    num = (degree + 1) ** 2
    if sh.shape[-2] < num:
        raise ValueError(f"SH degree {degree} needs {num} coefficients, got {sh.shape[-2]}")
    if sh.shape[-1] != 3 or dirs.shape[-1] != 3:
        raise ValueError(f"expected sh [..., K, 3] and dirs [..., 3], got {tuple(sh.shape)} and {tuple(dirs.shape)}")
    basis = sh_basis(F.normalize(dirs, dim=-1), degree).to(sh.dtype)  # [..., num]
    return (basis.unsqueeze(-1) * sh[..., :num, :]).sum(dim=-2)


def sh_to_rgb(
    sh: Tensor,  # [..., K, 3]
    dirs: Tensor,  # [..., 3]
    degree: int,
) -> Tensor:  # [..., 3]
    """Colour as gsplat's rasterization() makes it from SH: clamp_min(value + 0.5, 0)."""
    return torch.clamp_min(eval_sh_colors(sh, dirs, degree) + 0.5, 0.0)
