"""Camera conditioning: Plücker ray maps and their reduction to Wan latent resolution.

Conventions (CONVENTIONS.md sections 1, 5, 6):

* OpenCV camera axes (x right, y down, z forward); `viewmat` is world-to-camera, `c2w` its inverse.
* Pixel (i, j) (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5).
* Plücker ray of that pixel: d_c = n((u - cx)/fx, (v - cy)/fy, 1); d = R_c2w d_c; o = t_c2w;
  map = [o x d, d] (6 channels, moment first).
* Cameras are made relative to the REFERENCE IMAGE's camera (paper Sec. 4.1): c2w_i' = w2c_ref c2w_i, so the
  reference camera becomes the identity and a static novel view keeps its rotation in the ray maps.
* The Wan VAE keeps frame 0 alone and then compresses chunks of 4 frames, so T frames give
  1 + (T - 1) // 4 latent frames and T must be 1 + 4k.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Spatial / temporal compression of the Wan 2.1 VAE (CONVENTIONS 5).
SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4

# R^T R may differ from I by float32 round-off and by poses that came out of an estimator; this
# only catches matrices that are not rotations at all (scaled, sheared, garbage).
_RIGID_TOL = 1e-3


def _compute_dtype(*tensors: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype to compute in, dtype to return): float64 stays float64, everything else float32 inside."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        return torch.float32, torch.float32
    # Half precision cannot hold pixel coordinates of a 1024 px image exactly: compute in float32.
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return compute, dtype


def _check_finite_per_frame(x: Tensor, name: str, fn: str) -> None:
    """ValueError naming the first frame (leading index) of `x` that holds a NaN or inf."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        frame = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"{fn}: {name} of frame {frame} is not finite (NaN or inf): {x[frame].tolist()}")


def _check_rigid(c2w: Tensor, name: str, fn: str) -> None:
    """ValueError unless every [..., 4, 4] matrix is [R t; 0 0 0 1] with R a rotation (up to _RIGID_TOL)."""
    flat = c2w.reshape(-1, 4, 4).to(torch.float64)
    if flat.shape[0] == 0:
        return
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=flat.dtype, device=flat.device)
    rot = flat[:, :3, :3]
    ortho_err = (
        (rot.transpose(-1, -2) @ rot - torch.eye(3, dtype=flat.dtype, device=flat.device)).abs().amax(dim=(-1, -2))
    )
    bad = ((flat[:, 3, :] - bottom).abs().amax(dim=-1) > _RIGID_TOL) | (ortho_err > _RIGID_TOL)
    bad |= torch.linalg.det(rot) < 0  # a reflection would flip the handedness of the camera frame
    if bool(bad.any()):
        frame = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"{fn}: {name} of frame {frame} is not a rigid transform [R t; 0 0 0 1] with R a rotation: "
            f"{flat[frame].tolist()}"
        )


def _rigid_inverse(m: Tensor) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """[R t; 0 1]^-1 = [R^T -R^T t; 0 1], exact up to one rounding per entry (no general inverse)."""
    rot_t = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ m[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def viewmat_to_c2w(viewmat: Tensor) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """Camera-to-world matrices from world-to-camera `viewmat`s (rigid inverse R^T, -R^T t)."""
    fn = "viewmat_to_c2w"
    if viewmat.dim() < 2 or viewmat.shape[-2:] != (4, 4):
        raise ValueError(f"{fn}: viewmat must be [..., 4, 4], got {tuple(viewmat.shape)}")
    flat = viewmat.reshape(-1, 4, 4)
    if flat.shape[0]:
        _check_finite_per_frame(flat, "viewmat", fn)
    _check_rigid(flat, "viewmat", fn)
    return _rigid_inverse(viewmat)


def relative_to_reference(c2w: Tensor, reference_c2w: Tensor) -> Tensor:  # [F, 4, 4], [4, 4] -> [F, 4, 4]
    """Cameras relative to the reference camera: c2w_i' = inverse(reference_c2w) @ c2w_i (CONVENTIONS 6).

    A camera equal to the reference becomes exactly the identity. Invariant to any rigid transform G applied to
    every camera including the reference (c2w -> G c2w), so the ray maps do not depend on the world origin.
    """
    fn = "relative_to_reference"
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{fn}: c2w must be [F, 4, 4], got {tuple(c2w.shape)}")
    if reference_c2w.shape != (4, 4):
        raise ValueError(f"{fn}: reference_c2w must be [4, 4], got {tuple(reference_c2w.shape)}")
    if c2w.shape[0]:
        _check_finite_per_frame(c2w, "c2w", fn)
    _check_rigid(c2w, "c2w", fn)
    if not bool(torch.isfinite(reference_c2w).all()):
        raise ValueError(f"{fn}: reference_c2w is not finite (NaN or inf): {reference_c2w.tolist()}")
    _check_rigid(reference_c2w[None], "reference_c2w", fn)
    dtype = torch.promote_types(c2w.dtype, reference_c2w.dtype)
    c2w, ref = c2w.to(dtype), reference_c2w.to(dtype=dtype, device=c2w.device)
    ref_rot_t = ref[:3, :3].transpose(-1, -2)  # [3, 3]
    out = torch.zeros_like(c2w)
    out[:, :3, :3] = ref_rot_t @ c2w[:, :3, :3]
    # Subtract the centres before rotating: R_ref^T (t_i - t_ref) is exactly zero for a camera at the reference
    # and avoids cancelling two large terms when the cameras sit far from the world origin.
    out[:, :3, 3] = (c2w[:, :3, 3] - ref[:3, 3]) @ ref_rot_t.transpose(-1, -2)
    out[:, 3, 3] = 1.0
    same = (c2w == ref).reshape(c2w.shape[0], -1).all(dim=1)
    out[same] = torch.eye(4, dtype=dtype, device=c2w.device)  # R^T R is I only up to round-off
    return out


def relative_to_first(c2w: Tensor) -> Tensor:  # [F, 4, 4] -> [F, 4, 4]
    """Cameras relative to frame 0 (`relative_to_reference` with frame 0 as the reference); frame 0 -> identity.

    Not the model's convention any more (that is relative to the reference image's camera); kept for callers
    that want a path expressed relative to its own start.
    """
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4) or c2w.shape[0] < 1:
        raise ValueError(f"relative_to_first: c2w must be [F, 4, 4] with F >= 1, got {tuple(c2w.shape)}")
    return relative_to_reference(c2w, c2w[0])


def plucker_rays(K: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Plücker ray maps [F, 6, H, W] = [o x d, d] (moment first) of F pinhole cameras.

    K: [F, 3, 3] intrinsics in pixels (a single [3, 3] is shared by all frames); c2w: [F, 4, 4] rigid
    camera-to-world (OpenCV axes). Pixel (i, j) is the ray through its centre (j + 0.5, i + 0.5);
    d is unit. Computed on c2w's device; float64 inputs give float64, anything else float32
    (half precision is computed in float32 and cast back).
    """
    fn = "plucker_rays"
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise ValueError(f"{fn}: height and width must be positive integers, got height={height}, width={width}")
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{fn}: c2w must be [F, 4, 4], got {tuple(c2w.shape)}")
    num_frames = c2w.shape[0]
    if K.dim() == 2:
        K = K.unsqueeze(0).expand(num_frames, 3, 3)
    if K.dim() != 3 or K.shape[-2:] != (3, 3) or K.shape[0] != num_frames:
        raise ValueError(f"{fn}: K must be [F, 3, 3] (or [3, 3]) with F = {num_frames} as in c2w, got {tuple(K.shape)}")
    if K.device != c2w.device:
        raise ValueError(f"{fn}: K is on {K.device} but c2w on {c2w.device}")
    compute, out_dtype = _compute_dtype(K, c2w)
    K = K.to(compute)
    c2w = c2w.to(compute)
    if num_frames == 0:
        return torch.zeros(0, 6, height, width, dtype=out_dtype, device=c2w.device)

    _check_finite_per_frame(K, "K", fn)
    _check_finite_per_frame(c2w, "c2w", fn)
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]  # [F]
    bad = (fx <= 0) | (fy <= 0)
    if bool(bad.any()):
        frame = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"{fn}: K of frame {frame} needs positive focal lengths, got fx={float(fx[frame])}, fy={float(fy[frame])}"
        )
    # The ray formula has no skew term and assumes K's last row is (0, 0, 1): refuse K it would misread.
    bad = (K[:, 0, 1] != 0) | (K[:, 1, 0] != 0) | (K[:, 2, :] != torch.tensor([0.0, 0.0, 1.0], device=K.device)).any(-1)
    if bool(bad.any()):
        frame = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"{fn}: K of frame {frame} must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {K[frame].tolist()}"
        )
    _check_rigid(c2w, "c2w", fn)

    # Written per component on [F, H, W] planes: reductions and cross products along a channel dim of
    # [F, 3, H, W] are strided and ~20x slower on CPU (81 frames at 480x832 took tens of seconds).
    device = c2w.device
    u = torch.arange(width, dtype=compute, device=device) + 0.5  # [W] pixel-centre x
    v = torch.arange(height, dtype=compute, device=device) + 0.5  # [H] pixel-centre y
    x = (u[None, None, :] - cx[:, None, None]) / fx[:, None, None]  # [F, 1, W]
    y = (v[None, :, None] - cy[:, None, None]) / fy[:, None, None]  # [F, H, 1]
    inv_len = torch.rsqrt(x * x + y * y + 1.0)  # [F, H, W]
    d_cam = (x * inv_len, y * inv_len, inv_len)  # unit camera-frame direction, 3 x [F, H, W]
    r = c2w[:, :3, :3, None, None]  # [F, 3, 3, 1, 1]
    d = [r[:, k, 0] * d_cam[0] + r[:, k, 1] * d_cam[1] + r[:, k, 2] * d_cam[2] for k in range(3)]
    # Unit length again: R is a rotation only up to _RIGID_TOL, and the map's scale must not vary.
    inv_len = torch.rsqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    d = [dk * inv_len for dk in d]
    o = c2w[:, :3, 3, None, None]  # [F, 3, 1, 1]
    out = torch.empty(num_frames, 6, height, width, dtype=compute, device=device)
    out[:, 0] = o[:, 1] * d[2] - o[:, 2] * d[1]  # m = o x d
    out[:, 1] = o[:, 2] * d[0] - o[:, 0] * d[2]
    out[:, 2] = o[:, 0] * d[1] - o[:, 1] * d[0]
    for k in range(3):
        out[:, 3 + k] = d[k]
    return out.to(out_dtype)


def identity_rays(K: Tensor, height: int, width: int) -> Tensor:  # K [3, 3] -> [6, H, W]
    """Ray map of the identity camera (zero moment), used for the prepended reference frame."""
    if K.shape != (3, 3):
        raise ValueError(f"identity_rays: K must be [3, 3], got {tuple(K.shape)}")
    dtype = K.dtype if K.dtype.is_floating_point else torch.float32
    eye = torch.eye(4, dtype=dtype, device=K.device)
    return plucker_rays(K[None], eye[None], height, width)[0]


def _latent_frames(num_frames: int, temporal_factor: int) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        ok = False
    else:
        ok = (num_frames - 1) % temporal_factor == 0
    if not ok:
        examples = ", ".join(str(1 + temporal_factor * k) for k in (3, 6, 12, 20))
        raise ValueError(
            f"invalid number of frames: the Wan VAE needs 1 + {temporal_factor}k frames (e.g. {examples}); "
            f"got {num_frames}"
        )
    return 1 + (num_frames - 1) // temporal_factor


def latent_frame_count(num_frames: int) -> int:
    """Latent frames of the Wan VAE for `num_frames` video frames: 1 + (T - 1) // 4 (13/25/49/81 -> 4/7/13/21)."""
    return _latent_frames(num_frames, TEMPORAL_FACTOR)


def rays_to_latent(
    rays: Tensor,  # [F, C, H, W] or [B, F, C, H, W], C = 6 for ray maps
    spatial_factor: int = SPATIAL_FACTOR,
    temporal_factor: int = TEMPORAL_FACTOR,
) -> Tensor:  # [..., F_lat, C * s^2 * t, H / s, W / s]; 6 * 64 * 4 = 1536 channels by default
    """Bring pixel-space ray maps to the latent grid without a VAE (CONVENTIONS 6).

    Pixel-unshuffle by s = `spatial_factor`, then group frames like the causal VAE: latent frame 0 is
    frame 0 repeated t = `temporal_factor` times, latent frame l >= 1 is frames 1 + t(l - 1) ... t l.

    Channel order of the output (s = 8, t = 4, C = 6 -> 1536 channels):
        channel = k * (C s^2) + c * s^2 + dy * s + dx
    where k in [0, t) is the frame's position inside its chunk (time order), c the ray channel
    (0..2 moment, 3..5 direction), and (dy, dx) the pixel's offset inside its s x s block, i.e.
    out[..., l, channel, y, x] = rays[..., frame(l, k), c, s y + dy, s x + dx]
    (the inner c * s^2 + dy * s + dx is torch.nn.functional.pixel_unshuffle's order).
    """
    fn = "rays_to_latent"
    if rays.dim() not in (4, 5):
        raise ValueError(f"{fn}: rays must be [F, C, H, W] or [B, F, C, H, W], got {tuple(rays.shape)}")
    for name, value in (("spatial_factor", spatial_factor), ("temporal_factor", temporal_factor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{fn}: {name} must be a positive integer, got {value}")
    num_frames, channels, height, width = rays.shape[-4:]
    if height % spatial_factor or width % spatial_factor:
        raise ValueError(
            f"{fn}: height and width must be divisible by {spatial_factor} (the VAE's spatial factor), "
            f"got H={height}, W={width}"
        )
    try:
        n_lat = _latent_frames(num_frames, temporal_factor)
    except ValueError as err:
        raise ValueError(f"{fn}: {err}") from None

    x = torch.nn.functional.pixel_unshuffle(rays, spatial_factor)  # [..., F, C s^2, h, w]
    lead = x.shape[:-4]
    per_frame = x.shape[-3:]  # (C s^2, h, w)
    # The VAE's causal first chunk sees frame 0 alone; repeating it keeps every latent frame t frames wide.
    first = x[..., :1, :, :, :].unsqueeze(-4).expand(*lead, 1, temporal_factor, *per_frame)
    rest = x[..., 1:, :, :, :].reshape(*lead, n_lat - 1, temporal_factor, *per_frame)
    grouped = torch.cat([first, rest], dim=-5)  # [..., F_lat, t, C s^2, h, w]
    return grouped.reshape(*lead, n_lat, temporal_factor * per_frame[0], *per_frame[1:])
