"""Compiled per-pixel compositing loop for the fast CPU path (numba), the kernel's loop written out.

Imported lazily by rasterize_cpu_fast.py, which falls back to its pure-PyTorch compositor when numba
is missing. Tiles of pixels run in parallel; each pixel walks its tile's depth-sorted list and stops at
the first Gaussian that would take T to <= 1e-4, exactly as RasterizeToPixels3DGSFwd.cu does, so the
result does not depend on the thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, fastmath=False, nogil=True)
def composite_tiles(
    offsets: np.ndarray,  # [tiles + 1] int64
    ids: np.ndarray,  # [isects] int64 into the Gaussian arrays, depth order within a tile
    feats: np.ndarray,  # [K, 6] mx, my, a, b, c, opacity (input dtype)
    boxes: np.ndarray,  # [K, 4] int64 x0, y0, x1, y1 (half-open pixel box)
    colors: np.ndarray,  # [K, D] float64
    width: int,
    height: int,
    tile: int,
    tiles_w: int,
    centres: np.ndarray,  # [max(H, W)] input dtype: pixel centres i + 0.5
    consts: np.ndarray,  # [5] input dtype: 0.5, 1, 1/255, 0.999, 1e-4
    out: np.ndarray,  # [H * W, D + 1] float64: sum of w * colour, then sum of w
) -> None:
    half, one, thr, max_alpha, t_eps = consts[0], consts[1], consts[2], consts[3], consts[4]
    d = colors.shape[1]
    n_tiles = offsets.shape[0] - 1
    for t in numba.prange(n_tiles):
        lo, hi = offsets[t], offsets[t + 1]
        if lo == hi:
            continue
        tx0 = (t % tiles_w) * tile
        ty0 = (t // tiles_w) * tile
        for py in range(ty0, min(ty0 + tile, height)):
            fy = centres[py]
            for px in range(tx0, min(tx0 + tile, width)):
                fx = centres[px]
                trans = one
                row = py * width + px
                for k in range(lo, hi):
                    g = ids[k]
                    if px < boxes[g, 0] or px >= boxes[g, 2] or py < boxes[g, 1] or py >= boxes[g, 3]:
                        continue
                    dx = feats[g, 0] - fx
                    dy = feats[g, 1] - fy
                    # The reference's rounding: -0.5 (a dx^2) - 0.5 (c dy^2) - (b dx) dy, no FMA.
                    neg_sigma = (-(half * (feats[g, 2] * dx * dx)) + -(half * (feats[g, 4] * dy * dy))) + (
                        -(feats[g, 3] * dx)
                    ) * dy
                    if neg_sigma > 0:
                        continue
                    alpha = min(max_alpha, feats[g, 5] * np.exp(neg_sigma))
                    if alpha < thr:
                        continue
                    next_t = trans * (one - alpha)
                    if next_t <= t_eps:
                        break
                    w = np.float64(alpha) * np.float64(trans)
                    for j in range(d):
                        out[row, j] += w * colors[g, j]
                    out[row, d] += w
                    trans = next_t


@numba.njit(cache=True, nogil=True)
def bin_to_tiles(
    boxes: np.ndarray,  # [K, 4] int64 x0, y0, x1, y1 (half-open, non-empty), depth order
    tile: int,
    tiles_w: int,
    tiles_h: int,
) -> tuple[np.ndarray, np.ndarray]:  # offsets [tiles + 1], ids [isects]
    """Counting sort of (Gaussian, tile) overlaps by tile; within a tile Gaussians stay in depth order."""
    k = boxes.shape[0]
    counts = np.zeros(tiles_w * tiles_h + 1, dtype=np.int64)
    for g in range(k):
        for ty in range(boxes[g, 1] // tile, (boxes[g, 3] - 1) // tile + 1):
            for tx in range(boxes[g, 0] // tile, (boxes[g, 2] - 1) // tile + 1):
                counts[ty * tiles_w + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], dtype=np.int64)
    for g in range(k):
        for ty in range(boxes[g, 1] // tile, (boxes[g, 3] - 1) // tile + 1):
            for tx in range(boxes[g, 0] // tile, (boxes[g, 2] - 1) // tile + 1):
                t = ty * tiles_w + tx
                ids[fill[t]] = g
                fill[t] += 1
    return offsets, ids


@numba.njit(cache=True, nogil=True)
def pixel_boxes(
    means2d: np.ndarray,  # [V, 2] input dtype
    radii: np.ndarray,  # [V, 2] int32
    tile_size: int,
    width: int,
    height: int,
) -> np.ndarray:  # [V, 4] int64 x0, y0, x1, y1: the same boxes as rasterize_cpu_fast._pixel_boxes
    """Serial twin of `_pixel_boxes` (radius box clipped to the gsplat tile rectangle and the image)."""
    v = means2d.shape[0]
    out = np.empty((v, 4), dtype=np.int64)
    ts32 = np.float32(tile_size)
    limit = (math.ceil(width / tile_size), math.ceil(height / tile_size))
    size = (width, height)
    for i in range(v):
        for ax in range(2):
            m32 = np.float32(means2d[i, ax]) / ts32
            r32 = np.float32(radii[i, ax]) / ts32
            tlo = min(max(np.floor(m32 - r32), np.float32(0.0)), np.float32(limit[ax]))
            thi = min(max(np.ceil(m32 + r32), np.float32(0.0)), np.float32(limit[ax]))
            md = np.float64(means2d[i, ax])
            rd = np.float64(radii[i, ax]) + 1e-3
            lo = max(int(math.ceil(md - rd - 0.5)), int(tlo) * tile_size, 0)
            hi = min(int(math.floor(md + rd - 0.5)) + 1, int(thi) * tile_size, size[ax])
            out[i, ax] = lo
            out[i, ax + 2] = hi
    return out
