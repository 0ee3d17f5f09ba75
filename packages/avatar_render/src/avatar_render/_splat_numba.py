"""Compiled set-up and compositing loop for the fast CPU path (numba): the kernel's loop written out.

Imported lazily by rasterize_cpu_fast.py, which falls back to its pure-PyTorch compositor when numba
is missing. Two steps:

`prepare` (serial): visible Gaussians, stable depth sort (LSD radix sort of the float keys: ties keep
index order, like the reference's stable argsort and gsplat's radix sort), per Gaussian the pixel box
of centres within its radius clipped to the gsplat tile rectangle the reference bins it to, the
gathered per-Gaussian tables, and a counting sort of (Gaussian, work tile) overlaps by tile that
keeps depth order within a tile. All of it is O(Gaussians + overlaps), ~2-4 ms for demo avatars.

`composite_tiles` (parallel over work tiles): Gaussian-major, as RasterizeToPixels3DGSFwd.cu walks a
tile: each Gaussian of the tile's depth-ordered list visits only the pixels of its box in the tile,
and of those only the ones (a) still live (per-row bit masks: a pixel leaves at the Gaussian that
would take its T to <= 1e-4) and (b) within a conservative span of the ellipse alpha >= 1/255 on
that row. Each pixel still sees its Gaussians in depth order with the reference's arithmetic, and a
tile's pixels belong to one thread only, so the image does not depend on the thread count.

Why Gaussian-major (demo-003, 256 px, one thread, loaded machine): the earlier pixel-major walk tested
every Gaussian of a tile's list against every pixel's box (~72 ms); Gaussian-major over box pixels
~40 ms; skipping finished pixels and pixels outside the ellipse span leaves ~1 M alpha evaluations
for ~5 M box pairs (~30 ms), and selects instead of branches in the pixel loop ~19 ms of CPU time.
CPU time per frame (prepare + composite, one thread): 32 px 1.8 + 2.2 ms, 64 px 2.0 + 3.6,
128 px 2.3 + 7.3, 256 px 2.8 + 18.8, 512 px 3.2 + 55, 1024 px 4.2 + 178.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SLACK = 1e-3  # pixels on the radius box and span tests: covers float rounding of the bounds


@numba.njit(cache=True, nogil=True)
def _sort_keys(depths: np.ndarray, vis: np.ndarray) -> np.ndarray:  # uint64 keys, ascending = ascending depth
    """Order-preserving integer keys of float depths (-0 == +0, NaN after +inf, as torch's sort orders them)."""
    n = vis.shape[0]
    vals = np.empty(n, dtype=np.float64)
    for i in range(n):
        v = np.float64(depths[vis[i]])
        vals[i] = 0.0 if v == 0.0 else v  # -0 -> +0
    keys = vals.view(np.uint64).copy()
    sign = np.uint64(0x8000000000000000)
    for i in range(n):
        if vals[i] != vals[i]:
            keys[i] = np.uint64(0xFFF8000000000000)  # above +inf's key 0xFFF0...
        elif keys[i] & sign:
            keys[i] = ~keys[i]
        else:
            keys[i] = keys[i] | sign
    return keys


@numba.njit(cache=True, nogil=True)
def _radix_argsort(keys: np.ndarray) -> np.ndarray:  # stable argsort of uint64 keys
    n = keys.shape[0]
    idx = np.arange(n)
    tmp = np.empty(n, dtype=np.int64)
    counts = np.empty(2049, dtype=np.int64)
    shift = np.uint64(0)
    mask = np.uint64(2047)
    for _ in range(6):  # 6 x 11 bits >= 64 bits
        # Skip a pass whose digit is the same for every key (most of them for positive depths).
        first = (keys[idx[0]] >> shift) & mask if n > 0 else np.uint64(0)
        same = True
        for i in range(n):
            if ((keys[i] >> shift) & mask) != first:
                same = False
                break
        if not same:
            counts[:] = 0
            for i in range(n):
                counts[np.int64((keys[i] >> shift) & mask) + 1] += 1
            for b in range(2048):
                counts[b + 1] += counts[b]
            for i in range(n):
                k = idx[i]
                d = np.int64((keys[k] >> shift) & mask)
                tmp[counts[d]] = k
                counts[d] += 1
            idx, tmp = tmp, idx
        shift += np.uint64(11)
    return idx


@numba.njit(cache=True, nogil=True)
def prepare(
    means2d: np.ndarray,  # [N, 2] input dtype
    conics: np.ndarray,  # [N, 3] input dtype
    colors: np.ndarray,  # [N, D]
    opacities: np.ndarray,  # [N] input dtype
    radii: np.ndarray,  # [N, 2] int, 0 = culled
    depths: np.ndarray,  # [N]
    tile_size: int,  # the reference's (gsplat) tile size: boxes are clipped to its tile rectangle
    width: int,
    height: int,
    work_tile: int,  # edge of this path's work tiles
    alpha_threshold: float,
):  # noqa: ANN201 - (offsets, ids, feats, boxes, cols, sig_t)
    """Depth-sorted, box-clipped, gathered Gaussians binned to work tiles (see the module docstring).

    Returns offsets [tiles + 1] and ids [overlaps] (tile t owns ids[offsets[t]:offsets[t + 1]], indices
    into the gathered tables, ascending = depth order), feats [K, 6] (mx, my, a, b, c, opacity; input
    dtype), boxes [K, 4] int64 (x0, y0, x1, y1 half-open), cols [K, D] float64, sig_t [K] float64
    ln(opacity / threshold): alpha >= threshold needs sigma <= sig_t.
    """
    n = means2d.shape[0]
    nvis = 0
    for i in range(n):
        if radii[i, 0] > 0 and radii[i, 1] > 0:
            nvis += 1
    vis = np.empty(nvis, dtype=np.int64)
    j = 0
    for i in range(n):
        if radii[i, 0] > 0 and radii[i, 1] > 0:
            vis[j] = i
            j += 1
    order = vis[_radix_argsort(_sort_keys(depths, vis))]

    # Pixel boxes: centres within the radius (+ slack), clipped to the gsplat tile rectangle computed in
    # float32 with bin_gaussians_to_tiles' ops, and to the image.
    boxes = np.empty((nvis, 4), dtype=np.int64)
    keep = np.empty(nvis, dtype=np.int64)
    ts32 = np.float32(tile_size)
    lim_x = np.float32(math.ceil(width / tile_size))
    lim_y = np.float32(math.ceil(height / tile_size))
    k = 0
    for i in range(nvis):
        g = order[i]
        ok = True
        for ax in range(2):
            lim = lim_x if ax == 0 else lim_y
            size = width if ax == 0 else height
            m32 = np.float32(means2d[g, ax]) / ts32
            r32 = np.float32(radii[g, ax]) / ts32
            tlo = min(max(np.floor(m32 - r32), np.float32(0.0)), lim)
            thi = min(max(np.ceil(m32 + r32), np.float32(0.0)), lim)
            md = np.float64(means2d[g, ax])
            rd = np.float64(radii[g, ax]) + _SLACK
            lo = max(int(math.ceil(md - rd - 0.5)), int(tlo) * tile_size, 0)
            hi = min(int(math.floor(md + rd - 0.5)) + 1, int(thi) * tile_size, size)
            boxes[k, ax] = lo
            boxes[k, ax + 2] = hi
            ok = ok and hi > lo
        if ok:
            keep[k] = g
            k += 1
    boxes = boxes[:k]
    d = colors.shape[1]
    feats = np.empty((k, 6), dtype=means2d.dtype)
    cols = np.empty((k, d), dtype=np.float64)
    sig_t = np.empty(k, dtype=np.float64)
    for i in range(k):
        g = keep[i]
        feats[i, 0] = means2d[g, 0]
        feats[i, 1] = means2d[g, 1]
        feats[i, 2] = conics[g, 0]
        feats[i, 3] = conics[g, 1]
        feats[i, 4] = conics[g, 2]
        feats[i, 5] = opacities[g]
        for c in range(d):
            cols[i, c] = colors[g, c]
        o = np.float64(opacities[g])
        sig_t[i] = math.log(o / alpha_threshold) if o > 0 else -np.inf

    # Counting sort of (Gaussian, work tile) overlaps by tile: Gaussians stay in depth order per tile.
    tiles_w = (width + work_tile - 1) // work_tile
    tiles_h = (height + work_tile - 1) // work_tile
    offsets = np.zeros(tiles_w * tiles_h + 1, dtype=np.int64)
    for g in range(k):
        for ty in range(boxes[g, 1] // work_tile, (boxes[g, 3] - 1) // work_tile + 1):
            for tx in range(boxes[g, 0] // work_tile, (boxes[g, 2] - 1) // work_tile + 1):
                offsets[ty * tiles_w + tx + 1] += 1
    for t in range(tiles_w * tiles_h):
        offsets[t + 1] += offsets[t]
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], dtype=np.int64)
    for g in range(k):
        for ty in range(boxes[g, 1] // work_tile, (boxes[g, 3] - 1) // work_tile + 1):
            for tx in range(boxes[g, 0] // work_tile, (boxes[g, 2] - 1) // work_tile + 1):
                t = ty * tiles_w + tx
                ids[fill[t]] = g
                fill[t] += 1
    return offsets, ids, feats, boxes, cols, sig_t


@numba.njit(parallel=True, cache=True, fastmath=False, nogil=True)
def composite_tiles(
    offsets: np.ndarray,  # [tiles + 1] int64
    ids: np.ndarray,  # [overlaps] int64 into the Gaussian tables, depth order within a tile
    feats: np.ndarray,  # [K, 6] mx, my, a, b, c, opacity (input dtype)
    boxes: np.ndarray,  # [K, 4] int64 x0, y0, x1, y1 (half-open pixel box)
    colors: np.ndarray,  # [K, D] float64
    sig_t: np.ndarray,  # [K] float64 ln(opacity / alpha threshold)
    width: int,
    height: int,
    tile: int,  # work tile edge, <= 32 (row masks are int64)
    centres: np.ndarray,  # [max(H, W)] input dtype: pixel centres i + 0.5
    consts: np.ndarray,  # [5] input dtype: 0.5, 1, 1/255, 0.999, 1e-4
    out: np.ndarray,  # [H * W, D + 1] float64 zeros: sum of w * colour, then sum of w
) -> None:
    half, one, thr, max_alpha, t_eps = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero = one - one  # in the input dtype
    d = colors.shape[1]
    tiles_w = (width + tile - 1) // tile
    n_tiles = offsets.shape[0] - 1
    for t in numba.prange(n_tiles):
        lo, hi = offsets[t], offsets[t + 1]
        if lo == hi:
            continue
        tx0 = (t % tiles_w) * tile
        ty0 = (t // tiles_w) * tile
        tx1 = min(tx0 + tile, width)
        ty1 = min(ty0 + tile, height)
        trans = np.empty(tile * tile, dtype=feats.dtype)
        trans[:] = one
        live_rows = np.empty(tile, dtype=np.int64)  # bit x - tx0 set while pixel (x, y) is live
        full = (np.int64(1) << (tx1 - tx0)) - 1
        live_rows[:] = full
        live = (tx1 - tx0) * (ty1 - ty0)
        for k in range(lo, hi):
            g = ids[k]
            x0, x1 = max(boxes[g, 0], tx0), min(boxes[g, 2], tx1)
            y0, y1 = max(boxes[g, 1], ty0), min(boxes[g, 3], ty1)
            mx, my = feats[g, 0], feats[g, 1]
            ca, cb, cc, op = feats[g, 2], feats[g, 3], feats[g, 4], feats[g, 5]
            st = sig_t[g]
            box_bits = ((np.int64(1) << (x1 - tx0)) - 1) ^ ((np.int64(1) << (x0 - tx0)) - 1)
            # Per row, the span where sigma <= st can hold: 0.5 a dx^2 + b dx dy + 0.5 c dy^2 <= tm solved in
            # float64, dx = mx + (b / a) dy +- sqrt(2 tm / a - det / a^2 dy^2) with det = a c - b^2. The margin
            # on st covers the input dtype's rounding of sigma (relative to the size of its terms over the
            # box) and of exp; a wider span only costs time, the exact test per pixel decides.
            ad, bd, cd, mxd = np.float64(ca), np.float64(cb), np.float64(cc), np.float64(mx)
            ex = max(abs(mxd - (x0 + 0.5)), abs(mxd - (x1 - 0.5)))
            ey = max(abs(np.float64(my) - (y0 + 0.5)), abs(np.float64(my) - (y1 - 0.5)))
            terms = 0.5 * ad * ex * ex + abs(bd) * ex * ey + 0.5 * cd * ey * ey
            tm = st + 1e-3 * (1.0 + abs(st)) + 1e-4 * terms
            spans = ad > 0.0  # else (not positive definite, NaN): whole box rows
            q0, q1, slope = 0.0, 0.0, 0.0
            if spans:
                q0 = 2.0 * tm / ad
                q1 = (ad * cd - bd * bd) / (ad * ad)
                slope = bd / ad
            for py in range(y0, y1):
                ry = py - ty0
                m = live_rows[ry] & box_bits
                if m == 0:
                    continue
                dy = my - centres[py]
                sx0, sx1 = x0, x1
                if spans:
                    dyd = np.float64(dy)
                    q = q0 - q1 * dyd * dyd
                    if q < 0.0:
                        continue  # the row misses the ellipse
                    if q >= 0.0:  # (NaN: whole row)
                        h = math.sqrt(q) + _SLACK
                        cx = mxd + slope * dyd - 0.5
                        sx0 = max(x0, int(math.ceil(max(cx - h, x0 - 1.0))))
                        sx1 = min(x1, int(math.floor(min(cx + h, x1 + 1.0))) + 1)
                        if sx1 <= sx0:
                            continue
                        m &= ((np.int64(1) << (sx1 - tx0)) - 1) ^ ((np.int64(1) << (sx0 - tx0)) - 1)
                        if m == 0:
                            continue
                hc = -(half * (cc * dy * dy))
                base = ry * tile - tx0
                row = py * width
                for px in range(sx0, sx1):
                    bit = np.int64(1) << (px - tx0)
                    if (m & bit) == 0:
                        continue
                    dx = mx - centres[px]
                    # The reference's rounding: -0.5 (a dx^2) - 0.5 (c dy^2) - (b dx) dy, no FMA.
                    neg_sigma = (-(half * (ca * dx * dx)) + hc) + (-(cb * dx)) * dy
                    # Selects rather than branches (~30% faster at 256 px): inside the span most pixels pass,
                    # and a rejected pair (alpha 0) leaves T and the sums unchanged.
                    alpha = min(max_alpha, op * np.exp(min(neg_sigma, zero)))
                    if not (neg_sigma <= zero and alpha >= thr):
                        alpha = zero
                    p = base + px
                    tr = trans[p]
                    next_t = tr * (one - alpha)
                    keep = next_t > t_eps  # else the pixel ends here, without this Gaussian
                    w = np.float64(alpha) * np.float64(tr) if keep else 0.0
                    if not keep:
                        live_rows[ry] &= ~bit
                        live -= 1
                    trans[p] = next_t
                    o = row + px
                    for j in range(d):
                        out[o, j] += w * colors[g, j]
                    out[o, d] += w
            if live == 0:
                break
