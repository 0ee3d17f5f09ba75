"""Model-ready camera conditions from per-frame cameras (CONVENTIONS 6)."""

from __future__ import annotations

from torch import Tensor

from .cameras import identity_rays, plucker_rays, rays_to_latent, relative_to_first


def camera_features(K: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray features of a clip and of its reference frame.

    K [T, 3, 3] (pixels, at height x width), c2w [T, 4, 4] (OpenCV camera-to-world), T = 1 + 4k.
    Returns ray_features [1536, F_lat, H/8, W/8] of the cameras made relative to the first frame, and
    reference_rays [1536, 1, H/8, W/8] of the identity camera (what the prepended reference frame gets).
    """
    rays = plucker_rays(K, relative_to_first(c2w), height, width)  # [T, 6, H, W]
    features = rays_to_latent(rays).permute(1, 0, 2, 3)  # [1536, F_lat, h, w]
    k0 = K if K.dim() == 2 else K[0]
    reference = rays_to_latent(identity_rays(k0, height, width)[None]).permute(1, 0, 2, 3)  # [1536, 1, h, w]
    return features.contiguous(), reference.to(features).contiguous()
