"""Model-ready conditions from per-frame cameras and normal maps (CONVENTIONS 6).

Cameras: the ray maps of every generated frame are Plücker maps of the camera relative to the REFERENCE IMAGE's
camera, c2w_i' = w2c_ref c2w_i (paper Sec. 4.1); the prepended reference frame gets the identity camera's rays
(with the reference image's intrinsics). In training the reference camera is the one recorded for the reference
frame in its own manifest row; at inference a user's photo is the identity camera at the default distance and
camera paths are given relative to it (`factorportrait.inference.camera_paths`).

Normal maps: "no surface" is black, (0, 0, 0) after the (n + 1) / 2 encoding, i.e. -1 in every channel after
normalisation to [-1, 1]. The prepended reference frame has no normal map: its normal slot is the VAE latent of
an all-black frame (`no_surface_normals`), and a row without a normal video (null `normal_path`) gets all-black
frames too, so both mean the same thing the background of a rendered normal map means.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cameras import identity_rays, plucker_rays, rays_to_latent, relative_to_reference

#: The value of a "no surface" normal-map pixel after normalisation to [-1, 1] (black in the video encoding).
NO_SURFACE = -1.0


def camera_features(
    K: Tensor,  # [T, 3, 3] (or [3, 3]) pixels at height x width
    c2w: Tensor,  # [T, 4, 4] OpenCV camera-to-world, T = 1 + 4k
    height: int,
    width: int,
    *,
    reference_c2w: Tensor,  # [4, 4] camera-to-world of the reference image, same world frame as c2w
    reference_K: Tensor,  # [3, 3] intrinsics of the reference image at height x width
) -> tuple[Tensor, Tensor]:
    """Ray features of a clip and of its reference frame.

    Returns ray_features [1536, F_lat, H/8, W/8] of the cameras made relative to the reference camera
    (c2w_i' = w2c_ref c2w_i) and reference_rays [1536, 1, H/8, W/8] of the identity camera with `reference_K`
    (what the prepended reference frame gets).
    """
    if reference_K.shape != (3, 3):
        raise ValueError(f"camera_features: reference_K must be [3, 3], got {tuple(reference_K.shape)}")
    rays = plucker_rays(K, relative_to_reference(c2w, reference_c2w), height, width)  # [T, 6, H, W]
    features = rays_to_latent(rays).permute(1, 0, 2, 3)  # [1536, F_lat, h, w]
    reference = rays_to_latent(identity_rays(reference_K.to(K), height, width)[None]).permute(1, 0, 2, 3)
    return features.contiguous(), reference.to(features).contiguous()  # reference: [1536, 1, h, w]


def no_surface_normals(*leading: int, height: int, width: int) -> Tensor:  # [*leading, H, W], e.g. [3, T, H, W]
    """A normal-map tensor in [-1, 1] that shows no surface anywhere (all black): shape [*leading, H, W]."""
    return torch.full((*leading, height, width), NO_SURFACE)


def no_surface_latent(
    vae, batch: int, height: int, width: int, device, dtype, frames: int = 1
) -> Tensor:  # [B, 16, F_lat, h, w]
    """VAE latents of an all-black `frames`-frame normal video: no surface anywhere.

    frames = 1 is the prepended reference frame's normal-map condition; a whole clip's is what a dropped normal
    condition (training) becomes. Memoised on the VAE object per (frames, size, device, dtype): the VAE is frozen.
    """
    cache = vae.__dict__.setdefault("_no_surface_latents", {})
    key = (frames, height, width, str(device), dtype)
    if key not in cache:
        with torch.no_grad():
            video = no_surface_normals(1, 3, frames, height=height, width=width).to(device)
            cache[key] = vae.encode_video(video).to(dtype)
    return cache[key].expand(batch, -1, -1, -1, -1)
