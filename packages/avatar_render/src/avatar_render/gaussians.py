"""`GaussianSet`: a batch of 3D Gaussians in the parameterisation of 3DGS / gsplat.

Parameters are stored pre-activation (log scales, opacity logits), as in INRIA's PLY files;
`scales` / `opacities` give the activated values that `gsplat.rasterization` takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

#: Zeroth-order real spherical harmonic, Y_0^0 = 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814


def sh_coeffs_for_degree(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_for_coeffs(num_coeffs: int) -> int:
    degree = math.isqrt(num_coeffs) - 1
    if (degree + 1) ** 2 != num_coeffs or degree < 0:
        raise ValueError(f"{num_coeffs} SH coefficients is not (degree + 1)^2 for any degree")
    return degree


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> zeroth SH coefficient (RGB = SH_C0 * f_dc + 0.5)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    return dc * SH_C0 + 0.5


@dataclass
class GaussianSet:
    """N Gaussians. Shapes: means [N,3], quats [N,4] (wxyz), log_scales [N,3],
    opacity_logits [N], sh [N,K,3] with K = (sh_degree + 1)^2."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"GaussianSet.{name}: expected shape {shape}, got {got}")
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"GaussianSet.sh: expected shape ({n}, K, 3), got {tuple(self.sh.shape)}")
        sh_degree_for_coeffs(self.sh.shape[1])

    # ------------------------------------------------------------------ activated values
    @property
    def sh_degree(self) -> int:
        return sh_degree_for_coeffs(self.sh.shape[1])

    @property
    def scales(self) -> Tensor:  # [N, 3]
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:  # [N]
        return torch.sigmoid(self.opacity_logits)

    @property
    def rgb(self) -> Tensor:  # [N, 3]
        """View-independent colour (the DC term)."""
        return sh_dc_to_rgb(self.sh[:, 0])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    # ------------------------------------------------------------------ construction / views
    @classmethod
    def from_activated(
        cls, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, rgb: Tensor, sh_degree: int = 0
    ) -> GaussianSet:
        """Build from activated values (scales > 0, opacities in (0, 1), rgb in [0, 1])."""
        eps = torch.finfo(opacities.dtype).eps
        sh = torch.zeros(means.shape[0], sh_coeffs_for_degree(sh_degree), 3, dtype=means.dtype, device=means.device)
        sh[:, 0] = rgb_to_sh_dc(rgb)
        return cls(
            means=means,
            quats=quats,
            log_scales=scales.log(),
            opacity_logits=torch.logit(opacities.clamp(eps, 1 - eps)),
            sh=sh,
        )

    def __len__(self) -> int:
        return self.means.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> GaussianSet:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return GaussianSet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(sets: Sequence[GaussianSet]) -> GaussianSet:
        """Concatenate sets; lower SH degrees are zero-padded to the highest one."""
        if not sets:
            raise ValueError("GaussianSet.cat: nothing to concatenate")
        k = max(s.sh.shape[1] for s in sets)
        sh = [torch.nn.functional.pad(s.sh, (0, 0, 0, k - s.sh.shape[1])) for s in sets]
        return GaussianSet(
            means=torch.cat([s.means for s in sets]),
            quats=torch.cat([s.quats for s in sets]),
            log_scales=torch.cat([s.log_scales for s in sets]),
            opacity_logits=torch.cat([s.opacity_logits for s in sets]),
            sh=torch.cat(sh),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GaussianSet:
        return GaussianSet(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def with_sh_degree(self, degree: int) -> GaussianSet:
        """Truncate or zero-pad the SH coefficients to `degree`."""
        k = sh_coeffs_for_degree(degree)
        sh = (
            self.sh[:, :k]
            if k <= self.sh.shape[1]
            else torch.nn.functional.pad(self.sh, (0, 0, 0, k - self.sh.shape[1]))
        )
        return GaussianSet(self.means, self.quats, self.log_scales, self.opacity_logits, sh)

    def check_finite(self, source: str = "GaussianSet") -> None:
        """Raise ValueError naming the first field with NaN or Inf."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).sum())
                raise ValueError(f"{source}: field '{f.name}' has {bad} non-finite values")
