"""Pinhole cameras in the project's conventions (OpenCV axes, world-to-camera `viewmat`).

See CONVENTIONS.md section 1: x right, y down, z forward; pixel (i, j) has its centre at
(i + 0.5, j + 0.5), so a centred principal point is (W/2, H/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: Horizontal field of view of a square crop of an iPhone-like 26 mm main camera (CONVENTIONS 1).
DEFAULT_FOV_DEG = 53.1


def focal_from_fov(fov_deg: float, size_px: int) -> float:
    """Focal length in pixels that spans `fov_deg` over `size_px` pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    return 0.5 * size_px / math.tan(math.radians(fov_deg) / 2.0)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> Tensor:
    """K [3, 3] (float32)."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def look_at_viewmat(
    eye: Tensor,  # [..., 3]
    target: Tensor,  # [..., 3]
    up: Tensor | Sequence[float] = (0.0, 1.0, 0.0),
) -> Tensor:  # [..., 4, 4]
    """World-to-camera matrices looking from `eye` at `target` (CONVENTIONS 1).

    f = n(target - eye); r = n(f x up); d = f x r; R_c2w = [r d f]; viewmat = [R^T | -R^T eye].
    """
    eye = torch.as_tensor(eye)
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    if bool((right.norm(dim=-1) < 1e-8).any()):
        raise ValueError("look_at: the viewing direction is parallel to the up vector")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.cross(forward, right, dim=-1)
    r_c2w = torch.stack([right, down, forward], dim=-1)  # columns
    r_w2c = r_c2w.transpose(-1, -2)
    viewmat = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    viewmat[..., :3, :3] = r_w2c
    viewmat[..., :3, 3] = -(r_w2c @ eye.unsqueeze(-1)).squeeze(-1)
    viewmat[..., 3, 3] = 1.0
    return viewmat


@dataclass
class Camera:
    """A batch of C pinhole cameras sharing one image size.

    K: [C, 3, 3] intrinsics in pixels; viewmat: [C, 4, 4] world-to-camera (OpenCV axes).
    """

    K: Tensor
    viewmat: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.K.dim() == 2:
            self.K = self.K.unsqueeze(0)
        if self.viewmat.dim() == 2:
            self.viewmat = self.viewmat.unsqueeze(0)
        if self.K.shape[-2:] != (3, 3) or self.viewmat.shape[-2:] != (4, 4):
            raise ValueError(
                f"Camera: K must be [C,3,3] and viewmat [C,4,4], got {tuple(self.K.shape)} "
                f"and {tuple(self.viewmat.shape)}"
            )
        if self.K.shape[0] != self.viewmat.shape[0]:
            if self.K.shape[0] == 1:
                self.K = self.K.expand(self.viewmat.shape[0], 3, 3)
            else:
                raise ValueError(f"Camera: {self.K.shape[0]} intrinsics for {self.viewmat.shape[0]} poses")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Camera: image size must be positive, got {self.width}x{self.height}")
        if not (torch.isfinite(self.K).all() and torch.isfinite(self.viewmat).all()):
            raise ValueError("Camera: K and viewmat must be finite")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_fov(
        cls,
        width: int,
        height: int,
        fov_deg: float = DEFAULT_FOV_DEG,
        viewmat: Tensor | None = None,
        fov_y_deg: float | None = None,
    ) -> Camera:
        """Camera with horizontal FoV `fov_deg` (vertical `fov_y_deg`, square pixels if None)."""
        fx = focal_from_fov(fov_deg, width)
        fy = fx if fov_y_deg is None else focal_from_fov(fov_y_deg, height)
        K = intrinsics(fx, fy, width / 2.0, height / 2.0)
        viewmat = torch.eye(4) if viewmat is None else viewmat
        viewmat = viewmat if viewmat.dim() == 3 else viewmat.unsqueeze(0)
        return cls(K=K.expand(viewmat.shape[0], 3, 3).clone(), viewmat=viewmat.float(), width=width, height=height)

    @classmethod
    def look_at(
        cls,
        eye: Tensor,  # [C, 3] or [3]
        target: Tensor,  # [C, 3] or [3]
        width: int,
        height: int,
        fov_deg: float = DEFAULT_FOV_DEG,
        up: Sequence[float] = (0.0, 1.0, 0.0),
    ) -> Camera:
        """Cameras at `eye` looking at `target` with world up `up` (+Y by default)."""
        eye = torch.as_tensor(eye, dtype=torch.float32)
        eye = eye if eye.dim() == 2 else eye.unsqueeze(0)
        target = torch.as_tensor(target, dtype=torch.float32).expand_as(eye)
        return cls.from_fov(width, height, fov_deg, viewmat=look_at_viewmat(eye, target, up))

    @staticmethod
    def cat(cameras: Sequence[Camera]) -> Camera:
        """Concatenate batches of cameras with the same image size."""
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"Camera.cat: cameras have different image sizes {sorted(sizes)}")
        return Camera(
            K=torch.cat([c.K for c in cameras]),
            viewmat=torch.cat([c.viewmat for c in cameras]),
            width=cameras[0].width,
            height=cameras[0].height,
        )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.viewmat.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Camera:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Camera(K=self.K[index], viewmat=self.viewmat[index], width=self.width, height=self.height)

    @property
    def c2w(self) -> Tensor:  # [C, 4, 4]
        return torch.linalg.inv(self.viewmat)

    @property
    def position(self) -> Tensor:  # [C, 3]
        """Camera centres in world coordinates."""
        rot = self.viewmat[:, :3, :3]
        return -(rot.transpose(-1, -2) @ self.viewmat[:, :3, 3:]).squeeze(-1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Camera:
        return Camera(
            K=self.K.to(device=device, dtype=dtype),
            viewmat=self.viewmat.to(device=device, dtype=dtype),
            width=self.width,
            height=self.height,
        )

    def resized(self, width: int, height: int) -> Camera:
        """Same cameras for another image size (intrinsics scaled per axis)."""
        K = self.K.clone()
        K[:, 0] *= width / self.width
        K[:, 1] *= height / self.height
        return Camera(K=K, viewmat=self.viewmat, width=width, height=height)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points [C, N, 3] or [N, 3] -> pixel coords [C, N, 2] and depths [C, N]."""
        pts = points if points.dim() == 3 else points.unsqueeze(0).expand(len(self), -1, -1)
        cam = pts @ self.viewmat[:, :3, :3].transpose(-1, -2) + self.viewmat[:, None, :3, 3]
        z = cam[..., 2]
        uv = (cam[..., :2] / z.unsqueeze(-1)) * torch.stack([self.K[:, 0, 0], self.K[:, 1, 1]], -1)[:, None]
        uv = uv + self.K[:, None, :2, 2]
        return uv, z
