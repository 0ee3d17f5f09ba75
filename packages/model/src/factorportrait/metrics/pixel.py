"""Pixel-alignment metrics: PSNR and SSIM over video frames.

Accepted inputs (pred and gt must have the same layout and shape):
  * float tensors/arrays [T, 3, H, W] (or one frame [3, H, W]) with values in [0, data_range];
  * uint8 tensors/arrays [T, H, W, 3] (or one frame [H, W, 3]): converted to floats in [0, 1] [T, 3, H, W], so
    `data_range` must then stay 1.0 (the default).
Both functions return the mean over frames of the per-frame value.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# skimage's gaussian_weights=True with sigma=1.5 and truncate=3.5 gives an 11-tap window (radius 5).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_frames(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] or float [T, 3, H, W] (single frames without T too) -> float64 [T, 3, H, W]."""
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype == torch.uint8:
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be [T, H, W, 3], got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).to(torch.float64) / 255.0
    if not t.is_floating_point():
        raise ValueError(f"frames must be uint8 [T, H, W, 3] or float [T, 3, H, W], got dtype {t.dtype}")
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"float frames must be [T, 3, H, W], got {tuple(t.shape)}")
    return t.to(torch.float64)


def _pair(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = to_frames(pred), to_frames(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    return p, g.to(p.device)


def psnr_per_frame(pred, gt, data_range: float = 1.0) -> torch.Tensor:
    """Per-frame PSNR [T] in dB (inf where a frame is identical)."""
    p, g = _pair(pred, gt)
    mse = (p - g).pow(2).flatten(1).mean(1)  # [T]
    return 10.0 * torch.log10(data_range**2 / mse)  # mse 0 -> inf (torch divides without warnings)


def psnr(pred, gt, data_range: float = 1.0) -> float:
    """Mean over frames of the per-frame PSNR (dB); inf if every frame is identical."""
    return float(psnr_per_frame(pred, gt, data_range).mean())


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()  # [11], the same taps as scipy.ndimage.gaussian_filter


def _blur_valid(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region only: [N, C, H, W] -> [N, C, H-10, W-10].

    skimage filters with reflect padding and then crops (win_size - 1) // 2 = 5 pixels per border before averaging,
    so the pixels it keeps never see the padding: a valid convolution gives the same numbers.
    """
    c = x.shape[1]
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_per_frame(pred, gt, data_range: float = 1.0, chunk: int = 16) -> torch.Tensor:
    """Per-frame SSIM [T]: Gaussian 11x11 (sigma 1.5) window, population covariances, mean over RGB channels.

    Matches skimage.metrics.structural_similarity(p, g, channel_axis=-1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range) frame by frame.
    """
    p, g = _pair(pred, gt)
    if min(p.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {p.shape[-2]}x{p.shape[-1]}")
    w = _gaussian_window(p.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = []
    for i in range(0, p.shape[0], chunk):  # chunks bound the memory of the 5 filtered maps
        x, y = p[i : i + chunk], g[i : i + chunk]
        n = x.shape[0]
        mu = _blur_valid(torch.cat([x, y, x * x, y * y, x * y], 0), w)  # [5n, 3, H-10, W-10]
        ux, uy, uxx, uyy, uxy = mu.split(n, 0)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(s.flatten(1).mean(1))  # channel means averaged == mean over all cropped values
    return torch.cat(out)


def ssim(pred, gt, data_range: float = 1.0) -> float:
    """Mean over frames of the per-frame SSIM (1.0 for identical videos)."""
    return float(ssim_per_frame(pred, gt, data_range).mean())


__all__ = ["psnr", "psnr_per_frame", "ssim", "ssim_per_frame", "to_frames"]
