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


def _sample_directions(count: int = 32) -> Tensor:  # [count, 3] unit, float64
    """Fixed, well-spread unit directions (a Fibonacci sphere): where `band_rotations` fits each band."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / count
    r = (1.0 - z * z).sqrt()
    phi = i * torch.pi * (3.0 - 5.0**0.5)
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


def band_rotations(rot: Tensor, degree: int) -> list[Tensor]:  # [..., 3, 3] -> [[..., 2l+1, 2l+1] for l in 1..degree]
    """Per-band matrices D_l with sum_m (D_l a)_m Y_lm(d) = sum_m a_m Y_lm(rot^T d) for every direction d.

    A rotation maps each band's functions onto the same band, so D_l is exactly the least-squares fit on
    directions S: D_l = pinv(Y_l(S)) Y_l(rot^T S) (solved in float64; S has more points than any band has
    functions). Written here because neither gsplat nor torch offers SH rotation (gsplat evaluates SH in world
    directions only).
    """
    dirs = _sample_directions().to(rot.device)
    rotated = torch.einsum("...de,md->...me", rot.double(), dirs)  # rot^T s for every sample s
    basis, basis_rot = sh_basis(dirs, degree), sh_basis(rotated, degree)  # [M, K], [..., M, K]
    out = []
    for band in range(1, degree + 1):
        cols = slice(band * band, (band + 1) * (band + 1))
        solve = torch.linalg.pinv(basis[:, cols])  # [2l+1, M]
        out.append((solve @ basis_rot[..., cols]).to(rot.dtype))
    return out


def rotate_sh(
    sh: Tensor,  # [N, K, 3]
    rot: Tensor,  # [N, 3, 3], or [F, 3, 3] with `index`
    index: Tensor | None = None,  # [N] long: the row of `rot` each coefficient set takes
) -> Tensor:  # [N, K, 3]
    """SH coefficients of the same colours after the object turns by `rot`: the new coefficients seen from
    direction rot d give the colour the old ones gave from d (band 0 is unchanged)."""
    degree = int(round(sh.shape[-2] ** 0.5)) - 1
    if (degree + 1) ** 2 != sh.shape[-2]:
        raise ValueError(f"rotate_sh needs (degree + 1)^2 coefficients per Gaussian, got {sh.shape[-2]}")
    if degree == 0:
        return sh
    blocks = band_rotations(rot, degree)
    parts = [sh[..., :1, :]]
    for band, block in enumerate(blocks, start=1):
        if index is not None:
            block = block[index]
        parts.append(block @ sh[..., band * band : (band + 1) * (band + 1), :])
    return torch.cat(parts, dim=-2)
