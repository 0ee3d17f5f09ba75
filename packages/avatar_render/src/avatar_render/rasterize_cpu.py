"""A PyTorch (CPU-capable) tile rasterizer for 3D Gaussian splatting, matching gsplat 1.5.3.

Why our own: gsplat's rasterizer is CUDA-only. Even `gsplat.cuda._torch_impl._rasterize_to_pixels`
calls a CUDA op to find the Gaussians per pixel, so there is no gsplat path that renders without an
NVIDIA GPU. This module re-implements the maths of `rasterize_to_pixels_3dgs_fwd_kernel`
(RasterizeToPixels3DGSFwd.cu) and of `rasterization()` (rendering.py) with plain tensor ops, so the
same scene renders the same image on a laptop, in CI, and is differentiable by autograd.

Per pixel (centre px = x + 0.5, py = y + 0.5), Gaussians are taken front to back by depth:
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   alpha = min(0.999, opacity exp(-sigma)),
skipped when sigma < 0 or alpha < 1/255; a Gaussian that would take the transmittance T to
<= 1e-4 ends the pixel and is itself left out; colour = sum alpha_i T_i c_i + T bg, alpha = 1 - T.

How: Gaussians are binned to 16x16 tiles exactly as gsplat's `intersect_tile` does (same tile
rectangles, same (tile, depth) order, ties by index), then tiles are composited in batches. A batch
gathers its tiles' Gaussians padded to a common length (tiles are sorted by count so that padding
stays small) and evaluates alphas [B, 256, M] at once; the transmittance is a cumprod. Long lists
are cut into depth chunks that carry T from one chunk to the next, and B * 256 * M never exceeds
`max_chunk_elements`, so memory is bounded whatever the scene. Tiles whose pixels are all done are
dropped from later chunks (the kernel's early exit). With autograd on, each chunk is recomputed in backward:
only its small gathered inputs are kept and the chunk is recomputed in backward, so training-time
memory is bounded the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD, camera_centres, project_gaussians
from .sh import sh_to_rgb

#: The kernel stops a pixel before the Gaussian that would take its transmittance to this or below.
TRANSMITTANCE_EPS = 1e-4
#: Alpha is clamped below 1 so that T never reaches exactly 0 (keeps the backward pass finite).
MAX_ALPHA = 0.999
#: Smallest depth chunk we choose when tiles are dense: shorter chunks only add Python overhead.
_MIN_CHUNK_DEPTH = 64

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


# ---------------------------------------------------------------------------------------------- binning
@torch.no_grad()
def bin_gaussians_to_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int, 0 = culled
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> tuple[Tensor, Tensor]:
    """Gaussian-tile intersections sorted by (camera, tile, depth) like gsplat's isect_tiles.

    Returns flat ids [n_isects] (index into C*N) and tile offsets [C * tiles + 1] (int64) such
    that tile k (= camera * tiles + row * tile_width + col) owns flat_ids[offsets[k]:offsets[k+1]].
    """
    cams, n = means2d.shape[:2]
    num_tiles = tile_width * tile_height
    device = means2d.device
    visible = (radii[..., 0] > 0) & (radii[..., 1] > 0)
    cam, gid = visible.nonzero(as_tuple=True)  # ascending flat index
    flat = cam * n + gid
    # Stable sorts: by depth first, then by tile key below, so equal (tile, depth) keep index order
    # as the stable radix sort over gsplat's (image | tile | depth) keys does.
    order = torch.argsort(depths[cam, gid], stable=True)
    cam, gid, flat = cam[order], gid[order], flat[order]

    # Same float32 arithmetic as the CUDA kernel, so tile rectangles match bit for bit.
    m = means2d[cam, gid].float() / tile_size
    r = radii[cam, gid].float() / tile_size
    lo = torch.floor(m - r)
    hi = torch.ceil(m + r)
    limit = torch.tensor([tile_width, tile_height], dtype=torch.float32, device=device)
    lo = torch.minimum(lo.clamp_min(0), limit).long()
    hi = torch.minimum(hi.clamp_min(0), limit).long()
    span = (hi - lo).clamp_min(0)  # [V, 2] tiles per axis
    per_gauss = span[:, 0] * span[:, 1]

    total = int(per_gauss.sum())
    src = torch.repeat_interleave(torch.arange(per_gauss.numel(), device=device), per_gauss)  # [n_isects]
    start = torch.cumsum(per_gauss, 0) - per_gauss
    local = torch.arange(total, device=device) - start[src]
    w = span[src, 0]
    tx = lo[src, 0] + local % w.clamp_min(1)
    ty = lo[src, 1] + local // w.clamp_min(1)
    key = cam[src] * num_tiles + ty * tile_width + tx
    key_order = torch.argsort(key, stable=True)
    flat_ids = flat[src][key_order]
    counts = torch.bincount(key, minlength=cams * num_tiles)
    offsets = torch.zeros(cams * num_tiles + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(counts, 0)
    return flat_ids, offsets


def _plan_batches(counts: np.ndarray, cap: int) -> list[tuple[int, int, int]]:
    """Split tiles (counts sorted ascending) into (first, last_exclusive, chunk_depth) batches.

    A batch is as many tiles as fit whole (B * max_count <= cap); when tiles are dense we still take
    cap / _MIN_CHUNK_DEPTH tiles and walk their lists in depth chunks, which lets finished tiles drop out.
    """
    plans = []
    i, k = 0, len(counts)
    while i < k:
        rest = counts[i:]
        fits = np.arange(1, len(rest) + 1) * rest <= cap  # monotone: True ... True False ...
        b = int(fits.sum())
        b = min(len(rest), max(b, cap // _MIN_CHUNK_DEPTH, 1))
        depth = max(1, min(cap // b, int(rest[b - 1])))
        plans.append((i, i + b, depth))
        i += b
    return plans


# ---------------------------------------------------------------------------------------------- compositing
def _composite_chunk(
    means2d: Tensor,  # [B, M, 2]
    conics: Tensor,  # [B, M, 3]
    opacities: Tensor,  # [B, M], 0 for padding
    colors: Tensor,  # [B, M, D + 1], last channel 1 so that the output's last channel is sum(weights)
    px: Tensor,  # [B, S] pixel-centre x of the tile's columns
    py: Tensor,  # [B, S] pixel-centre y of the tile's rows
    r_prev: Tensor,  # [B, P] product of (1 - alpha) over every valid Gaussian so far (= T while not done)
) -> tuple[Tensor, Tensor]:  # sum of weight * colour [B, P, D + 1], r [B, P]
    """Composite one depth chunk of Gaussians over a batch of S x S tiles (P = S * S).

    Work on [B, P, M] tensors dominates, so everything per (tile, column or row, Gaussian) is folded
    into small [B, S, M] tensors first, and sigma is built negated: halving and negating are exact in
    floating point, so -sigma has the kernel's rounding (0.5 (a dx^2 + c dy^2) + b dx dy).
    """
    b, s = px.shape
    dx = means2d[:, None, :, 0] - px[:, :, None]  # [B, S(x), M]
    dy = means2d[:, None, :, 1] - py[:, :, None]  # [B, S(y), M]
    ca, cb, cc = conics[:, None, :, 0], conics[:, None, :, 1], conics[:, None, :, 2]  # [B, 1, M]
    half_a = -0.5 * (ca * dx * dx)  # [B, S(x), M]
    half_c = -0.5 * (cc * dy * dy)  # [B, S(y), M]
    neg_sigma = torch.addcmul(half_a[:, None] + half_c[:, :, None], -(cb * dx)[:, None], dy[:, :, None])
    neg_sigma = neg_sigma.reshape(b, s * s, -1)  # [B, P, M], pixel p = y * S + x
    # clamp_max keeps exp finite where sigma < 0 (dropped below anyway), so gradients never see inf * 0.
    alpha = torch.clamp_max(opacities[:, None, :] * torch.exp(neg_sigma.clamp_max(0)), MAX_ALPHA)
    valid = (alpha >= ALPHA_THRESHOLD).logical_and_(neg_sigma <= 0)
    alpha = torch.where(valid, alpha, 0.0)
    # Prepending the carried product makes this the same sequential product the kernel forms.
    r = torch.cumprod(torch.cat([r_prev[..., None], 1.0 - alpha], dim=-1), dim=-1)  # [B, P, M + 1]
    # T only decreases, so "the pixel is done at the first Gaussian that would take T to <= 1e-4, and
    # that Gaussian is left out" is exactly "keep Gaussian k iff T after k > 1e-4". Invalid ones have
    # alpha 0, so they add nothing either way.
    weights = torch.where(r[..., 1:] > TRANSMITTANCE_EPS, alpha, 0.0) * r[..., :-1]  # alpha_k * T_before_k
    return torch.bmm(weights, colors), r[..., -1]


class _RecomputedChunk(torch.autograd.Function):
    """`_composite_chunk` that keeps only its inputs and recomputes itself in backward.

    The [B, P, M] intermediates of every chunk would otherwise stay alive until backward, so memory
    would grow with the scene. (torch.utils.checkpoint does the same but imports torch._dynamo,
    which costs seconds on first use.)
    """

    @staticmethod
    def forward(ctx: Any, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return _composite_chunk(*inputs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        inputs = [
            x.detach().requires_grad_(need) for x, need in zip(ctx.saved_tensors, ctx.needs_input_grad, strict=True)
        ]
        wanted = [x for x in inputs if x.requires_grad]
        if not wanted:
            return (None,) * len(inputs)
        with torch.enable_grad():
            outputs = _composite_chunk(*inputs)
        grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
        return tuple(next(grads) if x.requires_grad else None for x in inputs)


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int, 0 = culled
    depths: Tensor,  # [C, N] sort key (camera-space z)
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]
    tile_size: int = 16,
    max_chunk_elements: int = 2**24,
) -> tuple[Tensor, Tensor]:  # colors [C, H, W, D], alphas [C, H, W, 1]
    """Alpha-composite projected Gaussians front to back, as gsplat's CUDA rasterizer does.

    Differentiable w.r.t. means2d, conics, colors, opacities (and backgrounds). The per-pixel work is
    done in chunks of at most `max_chunk_elements` (tiles x pixels x Gaussians); a chunk keeps about
    eight such tensors alive, so the default 2**24 peaks near 0.5 GiB in float32 (1 GiB in float64).
    The returned alpha is sum_k alpha_k T_k, which equals the kernel's 1 - T up to rounding.
    """
    cams, n = means2d.shape[:2]
    d = colors.shape[-1]
    if conics.shape != (cams, n, 3) or colors.shape[:2] != (cams, n) or opacities.shape != (cams, n):
        raise ValueError(
            f"rasterize_to_pixels: inconsistent shapes means2d {tuple(means2d.shape)}, "
            f"conics {tuple(conics.shape)}, colors {tuple(colors.shape)}, "
            f"opacities {tuple(opacities.shape)}"
        )
    if radii.shape != (cams, n, 2) or depths.shape != (cams, n):
        raise ValueError(
            f"rasterize_to_pixels: radii must be [C,N,2] and depths [C,N], got "
            f"{tuple(radii.shape)}, {tuple(depths.shape)}"
        )
    if max_chunk_elements < tile_size * tile_size:
        raise ValueError(
            f"max_chunk_elements must hold at least one tile ({tile_size * tile_size}), got {max_chunk_elements}"
        )
    dtype, device = means2d.dtype, means2d.device
    ts = int(tile_size)
    tile_w, tile_h = math.ceil(width / ts), math.ceil(height / ts)
    num_tiles = tile_w * tile_h
    p = ts * ts

    flat_ids, offsets = bin_gaussians_to_tiles(means2d.detach(), radii, depths.detach(), ts, tile_w, tile_h)
    m2_flat = means2d.reshape(-1, 2)
    con_flat = conics.to(dtype).reshape(-1, 3)
    op_flat = opacities.to(dtype).reshape(-1)
    # A channel of ones makes the same matmul return sum(weights) = 1 - T, the pixel's alpha.
    ones = torch.ones(cams * n, 1, dtype=dtype, device=device)
    col_flat = torch.cat([colors.to(dtype).reshape(-1, d), ones], dim=1)  # [C * N, D + 1]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, colors, opacities))

    counts = offsets[1:] - offsets[:-1]  # [C * tiles]
    nonempty = torch.nonzero(counts > 0).squeeze(1)
    nonempty = nonempty[torch.argsort(counts[nonempty], stable=True)]  # ascending count: little padding
    counts_np = counts[nonempty].cpu().numpy()
    cap = max(1, int(max_chunk_elements) // p)
    lane = torch.arange(ts, device=device, dtype=dtype) + 0.5

    tile_parts, acc_parts = [], []
    for first, last, depth in _plan_batches(counts_np, cap):
        tiles = nonempty[first:last]  # [B] global tile index (camera * tiles + tile)
        nb = tiles.numel()
        starts, tcounts = offsets[tiles], counts[tiles]
        local = tiles % num_tiles
        px_all = ((local % tile_w) * ts).to(dtype)[:, None] + lane  # [B, S]
        py_all = ((local // tile_w) * ts).to(dtype)[:, None] + lane
        # Pixels outside the image start "done" (as out-of-bounds threads do in the kernel).
        outside = ((px_all[:, None, :] >= width) | (py_all[:, :, None] >= height)).reshape(nb, p)
        acc = torch.zeros(nb, p, d + 1, dtype=dtype, device=device)
        r_run = torch.ones(nb, p, dtype=dtype, device=device)
        tile_done = torch.zeros(nb, dtype=torch.bool, device=device)
        offs = torch.arange(depth, device=device)
        for lo in range(0, int(tcounts.max()), depth):
            active = torch.nonzero((tcounts > lo) & ~tile_done).squeeze(1)
            if active.numel() == 0:
                break
            everyone = active.numel() == nb
            pos = lo + offs  # [M]
            in_list = pos[None, :] < tcounts[active, None]  # [A, M]
            gid = flat_ids[torch.where(in_list, starts[active, None] + pos[None, :], 0)]  # [A, M] into C * N
            args = (
                m2_flat[gid],
                con_flat[gid],
                op_flat[gid] * in_list,
                col_flat[gid],
                px_all if everyone else px_all[active],
                py_all if everyone else py_all[active],
                r_run if everyone else r_run[active],
            )
            out, r_new = _RecomputedChunk.apply(*args) if needs_grad else _composite_chunk(*args)
            # In place when no graph is being built; out of place otherwise, so autograd sees every step.
            if everyone:
                acc = acc + out if needs_grad else acc.add_(out)
                r_run = r_new
            elif needs_grad:
                acc = acc.index_add(0, active, out)
                r_run = r_run.index_copy(0, active, r_new)
            else:
                acc.index_add_(0, active, out)
                r_run.index_copy_(0, active, r_new)
            with torch.no_grad():
                tile_done[active] = ((r_new <= TRANSMITTANCE_EPS) | outside[active]).all(dim=1)
        tile_parts.append(tiles)
        acc_parts.append(acc)

    image = torch.zeros(cams * num_tiles, p, d + 1, dtype=dtype, device=device)
    if tile_parts:
        image = image.index_copy(0, torch.cat(tile_parts), torch.cat(acc_parts))
    image = _tiles_to_image(image, cams, tile_h, tile_w, ts)[:, :height, :width]  # [C, H, W, D + 1]
    colour, alpha = image[..., :d], image[..., d:]
    if backgrounds is not None:
        colour = colour + (1.0 - alpha) * backgrounds.to(dtype)[:, None, None, :]
    return colour, alpha


def _tiles_to_image(x: Tensor, cams: int, tile_h: int, tile_w: int, ts: int) -> Tensor:
    """[C * tiles, S * S, D] -> [C, tile_h * S, tile_w * S, D]."""
    d = x.shape[-1]
    return (
        x.reshape(cams, tile_h, tile_w, ts, ts, d).permute(0, 1, 3, 2, 4, 5).reshape(cams, tile_h * ts, tile_w * ts, d)
    )


# ---------------------------------------------------------------------------------------------- full pipeline
def rasterization_cpu(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, D] or [C, N, D] post-activation; or [N, K, 3] / [C, N, K, 3] SH with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D] (D = colour channels)
    render_mode: str = "RGB+ED",
    rasterize_mode: str = "classic",
    eps2d: float = 0.3,
    tile_size: int = 16,
    max_chunk_elements: int = 2**24,
    fast: bool | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:  # colors [C, H, W, X], alphas [C, H, W, 1], meta
    """CPU counterpart of `gsplat.rasterization` (non-packed, pinhole) for the arguments above.

    Render modes: "RGB"; "D" accumulated z sum(w z); "ED" expected z sum(w z) / max(alpha, 1e-10);
    "RGB+D" / "RGB+ED" append that depth as the last channel. Backgrounds apply to colour channels only.
    fast: None (default) composites with the no-grad fast path (rasterize_cpu_fast.py, same image)
    when no gradient can be asked for (under torch.no_grad() or no input requires grad), and with this
    module's differentiable path otherwise; True / False force one of them (True needs no gradients).
    """
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    n, cams = means.shape[0], viewmats.shape[0]
    inputs = (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if fast is None:
        fast = not wants_grad
    elif fast and wants_grad:
        raise ValueError("rasterization_cpu: fast=True has no backward pass, but an input requires grad")
    proj = project_gaussians(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        antialiased=rasterize_mode == "antialiased",
    )

    if sh_degree is None:
        if colors.dim() == 2 and colors.shape[0] == n:
            colors = colors[None].expand(cams, n, colors.shape[-1])
        elif not (colors.dim() == 3 and colors.shape[:2] == (cams, n)):
            raise ValueError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}")
    else:
        if not (
            colors.dim() in (3, 4)
            and colors.shape[-1] == 3
            and colors.shape[-3] == n
            and (colors.dim() == 3 or colors.shape[0] == cams)
        ):
            raise ValueError(f"SH colors must be [N, K, 3] or [C, N, K, 3], got {tuple(colors.shape)}")
        dirs = means[None] - camera_centres(viewmats.to(means.dtype))[:, None]  # [C, N, 3]
        sh = colors if colors.dim() == 4 else colors[None]
        colors = sh_to_rgb(sh, dirs, sh_degree)  # [C, N, 3], as gsplat: clamp_min(value + 0.5, 0)

    depth_col = proj.depths[..., None]
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depth_col.to(colors.dtype)], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(cams, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depth_col
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(cams, 1)

    raster_args = (proj.means2d, proj.conics, colors, proj.opacities, proj.radii, proj.depths, width, height)
    if fast:
        from .rasterize_cpu_fast import rasterize_to_pixels_fast

        render_colors, render_alphas = rasterize_to_pixels_fast(
            *raster_args, backgrounds=backgrounds, tile_size=tile_size
        )
    else:
        render_colors, render_alphas = rasterize_to_pixels(
            *raster_args, backgrounds=backgrounds, tile_size=tile_size, max_chunk_elements=max_chunk_elements
        )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp_min(1e-10)], dim=-1
        )
    meta = {
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": cams,
    }
    return render_colors, render_alphas, meta
