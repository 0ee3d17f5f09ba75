"""Fast no-grad forward path of the CPU rasterizer: the same image as `rasterize_cpu.rasterize_to_pixels`.

Why a second path: the reference path (rasterize_cpu.py) evaluates alpha for every (tile, Gaussian,
pixel) triple of every depth chunk, padded to the longest list of a batch of tiles. A profile on
demo-003 (35.7k Gaussians) at 64 px put ~85% of its ~0.35-0.7 s in `torch.exp` and `_composite_chunk`,
while the useful work is a few hundred thousand (Gaussian, pixel) pairs.

Both engines take the visible Gaussians sorted by depth once per camera (stable: ties keep index
order, as gsplat's radix sort does), and per Gaussian the pixel box whose centres lie within its
opacity-aware radius (beyond it alpha < 1/255), clipped to the gsplat tile rectangle the reference
bins it to, so exactly the same (Gaussian, pixel) pairs are candidates.

engine "numba" (default when numba imports; _splat_numba.py), set-up and compositing compiled:
`prepare` sorts (LSD radix sort of the depth keys), boxes, gathers and counting-sorts the
(Gaussian, work tile) overlaps by tile in one serial pass; `composite_tiles` runs the work tiles in
parallel, Gaussian-major like the CUDA kernel: each Gaussian of a tile's depth-ordered list visits the
pixels of its box in the tile that are still live (row bit masks) and inside a conservative span of
its ellipse alpha >= 1/255 on that row, and a pixel leaves at the first Gaussian that would take T to
<= 1e-4. Why, measured (demo-003, one thread, loaded 2-core machine): the previous pixel-major walk
tested every Gaussian of a tile's list against every pixel of the tile (~5 M box pairs at 256 px,
~75 ms), and its numpy / PyTorch set-up (stable argsort, gathers, boxes, binning) cost ~10 ms at every
size, more than the walk itself at 64 px. Gaussian-major with live masks and spans evaluates ~1 M
alphas at 256 px (about the pairs a pixel really composites), ~19 ms of CPU time; the compiled set-up
costs ~2-3 ms (64 px: 2.0 + 3.6 ms, 128 px: 2.3 + 7.3 ms).

engine "torch" (fallback without numba): the depth-sorted Gaussians are walked in chunks of about
4 pairs per pixel. Each chunk is expanded to (Gaussian, row) spans solved from the ellipse
sigma <= ln(255 o) (with a rounding margin), spans and then pairs on finished pixels are dropped
(summed-area / row prefix counts of live pixels: the early termination), alpha is computed only for
the survivors, pairs are sorted by (pixel, depth), and T is a segmented product formed from float64
cumsums of log(1 - alpha). No scatter-add with a thread-dependent order is involved.

Measured earlier on demo-003 at 2 threads on a quiet machine (ms/frame, reference / torch engine):
64 px 362 / 32, 128 px 368 / 58, 256 px 394 / 136. The pure-PyTorch engine meets the 10x target only
at <= 64 px, being bound by ~30 tensor passes over every candidate pair; the compiled loop meets it at
every size (benchmarks/results/render_cpu.md), so it is the default and PyTorch the fallback. numba
ships wheels for Linux, macOS and Windows; nothing is compiled at install time, the kernels are
JIT-compiled on first use per dtype (~8 s on a loaded 2-core machine) and cached next to the module
(loading the cache: ~1.5 s per process).

Same rules as the kernel and the reference: sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with the
reference's rounding, alpha = min(0.999, o exp(-sigma)), skipped for sigma < 0 or alpha < 1/255, a
Gaussian is kept iff T after it stays > 1e-4. Colours are accumulated in float64 and rounded once,
so values differ from the reference's float32 cumprod only by rounding (PSNR ~145 dB on demo
avatars) and the coverage is identical.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD

TRANSMITTANCE_EPS = 1e-4
MAX_ALPHA = 0.999
#: Slack (pixels) on the box test: a pixel whose centre is this far outside the radius cannot reach
#: alpha >= 1/255 in exact arithmetic; the slack covers float rounding of the radius.
_BOX_SLACK = 1e-3


def _pixel_boxes(
    means2d: Tensor,  # [V, 2]
    radii: Tensor,  # [V, 2] int, > 0
    tile_size: int,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:  # x0y0 [V, 2], x1y1 [V, 2] int64, half-open pixel ranges (possibly empty)
    """Pixels whose centre lies within the Gaussian's radius, clipped to its gsplat tile rectangle."""
    m = means2d.float()
    r = radii.float()
    # Tile rectangle exactly as bin_gaussians_to_tiles (float32, same ops).
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    limit = torch.tensor([tw, th], dtype=torch.float32)
    tlo = torch.minimum(torch.floor(m / tile_size - r / tile_size).clamp_min(0), limit).long() * tile_size
    thi = torch.minimum(torch.ceil(m / tile_size + r / tile_size).clamp_min(0), limit).long() * tile_size
    md = means2d.double()
    rd = radii.double() + _BOX_SLACK
    lo = torch.ceil(md - rd - 0.5).long()
    hi = torch.floor(md + rd - 0.5).long() + 1
    size = torch.tensor([width, height])
    lo = torch.maximum(torch.maximum(lo, tlo), torch.zeros(2, dtype=torch.long))
    hi = torch.minimum(torch.minimum(hi, thi), size)
    return lo, hi


def _chunk_pairs(npix: int, max_pairs: int) -> int:
    """Pairs per depth chunk. Smaller chunks let finished pixels drop out sooner, but each chunk costs
    a few passes over the image (liveness tables): ~4 pairs a pixel measured best on demo avatars from
    64 to 1024 px (within 10-20% over 2-16), with a floor that keeps small frames in a few chunks."""
    return max(1, min(max_pairs, max(2**17, 4 * npix)))


def _take(x: Tensor, index: Tensor) -> Tensor:
    """x[index] along dim 0; index_select is several times faster than advanced indexing on CPU."""
    return x.index_select(0, index)


def _live_in_boxes(alive: Tensor, lo: Tensor, hi: Tensor) -> Tensor:  # [H, W] bool, [K, 2], [K, 2] -> [K] bool
    """Whether each box [lo, hi) holds a live pixel, by a summed-area table."""
    h, w = alive.shape
    sat = torch.zeros(h + 1, w + 1, dtype=torch.int32)
    torch.cumsum(torch.cumsum(alive, 0, dtype=torch.int32), 1, out=sat[1:, 1:])
    sat = sat.reshape(-1)
    top, bottom = lo[:, 1] * (w + 1), hi[:, 1] * (w + 1)
    x0, x1 = lo[:, 0], hi[:, 0]
    return (_take(sat, bottom + x1) - _take(sat, top + x1) - _take(sat, bottom + x0) + _take(sat, top + x0)) > 0


def _row_spans(
    means2d: Tensor,  # [K, 2]
    conics: Tensor,  # [K, 3]
    opacities: Tensor,  # [K]
    lo: Tensor,  # [K, 2] pixel boxes, non-empty
    hi: Tensor,  # [K, 2]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # row_g [R], y [R], x0 [R], x1 [R] (half-open, non-empty)
    """Per Gaussian and pixel row of its box, the pixels where alpha >= 1/255 can hold.

    Solves 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= ln(255 o) for dx in float64 with a margin (the exact
    float test is applied per pair later, so a wider span only costs time, a narrower one would change
    the image). Rows are in Gaussian order, i.e. depth order.
    """
    span_y = hi[:, 1] - lo[:, 1]
    row_g = torch.repeat_interleave(torch.arange(lo.shape[0]), span_y)
    first = torch.cumsum(span_y, 0) - span_y
    y = lo[:, 1].index_select(0, row_g) + (torch.arange(row_g.numel()) - first.index_select(0, row_g))
    m = means2d.double().index_select(0, row_g)
    con = conics.double().index_select(0, row_g)
    a, b, c = con[:, 0], con[:, 1], con[:, 2]
    # Margin on sigma's threshold: the per-pair test runs in the input dtype, whose rounding error scales
    # with the size of sigma's terms over the box (large for thin, tilted ellipses), not with sigma.
    ex, ey = (hi - lo).double().index_select(0, row_g).unbind(1)
    terms = 0.5 * a * ex * ex + (b * ex * ey).abs() + 0.5 * c * ey * ey
    t = torch.log(opacities.double().index_select(0, row_g) / ALPHA_THRESHOLD)
    t = t + 1e-3 * (1.0 + t) + 1e-4 * terms
    dy = m[:, 1] - (y.double() + 0.5)
    disc = b * b * dy * dy - a * (c * dy * dy - 2.0 * t)
    root = torch.sqrt(disc.clamp_min(0))
    # pixel centre x + 0.5 = mx - dx, dx in [(-b dy - root) / a, (-b dy + root) / a]
    cx = m[:, 0] + b * dy / a - 0.5
    half = root / a + _BOX_SLACK
    x0 = torch.maximum(torch.ceil(cx - half).long(), lo[:, 0].index_select(0, row_g))
    x1 = torch.minimum(torch.floor(cx + half).long() + 1, hi[:, 0].index_select(0, row_g))
    keep = ((disc >= -1e-6 * (b * b * dy * dy).abs() - 1e-9) & (x1 > x0)).nonzero().squeeze(1)
    return _take(row_g, keep), _take(y, keep), _take(x0, keep), _take(x1, keep)


def _composite_camera(
    means2d: Tensor,  # [V, 2] depth-sorted visible Gaussians of one camera
    conics: Tensor,  # [V, 3]
    colors: Tensor,  # [V, D]
    opacities: Tensor,  # [V]
    lo: Tensor,  # [V, 2] pixel boxes
    hi: Tensor,  # [V, 2]
    width: int,
    height: int,
    chunk_pairs: int,
) -> tuple[Tensor, Tensor]:  # sum of weight * colour [H * W, D] float64, sum of weights [H * W] float64
    d = colors.shape[1]
    npix = width * height
    acc = torch.zeros(npix, d + 1, dtype=torch.float64)
    log_t = torch.zeros(npix, dtype=torch.float64)  # log of the product of (1 - alpha) so far
    log_eps = math.log(TRANSMITTANCE_EPS)
    idx = ((hi > lo).all(dim=1)).nonzero().squeeze(1)  # still depth order
    if idx.numel() == 0:
        return acc[:, :d], acc[:, d]
    feats = torch.cat([means2d, conics, opacities[:, None]], dim=1).index_select(0, idx)  # [K, 6]
    col1 = torch.cat([colors.double(), colors.new_ones(colors.shape[0], 1, dtype=torch.float64)], dim=1)
    col1 = col1.index_select(0, idx)  # [K, D + 1]: the ones column sums the weights (the alpha)
    lo, hi = lo.index_select(0, idx), hi.index_select(0, idx)
    area = (hi - lo).prod(dim=1)
    area_cum = torch.cumsum(area, 0)
    n_all = idx.numel()
    start = 0
    composited = False  # nothing is finished before the first chunk: skip the liveness tests
    alive_flat = torch.ones(npix, dtype=torch.bool)
    while start < n_all:
        # Chunk of Gaussians [start, end): at least one, at most chunk_pairs box pixels before culling.
        base = int(area_cum[start - 1]) if start > 0 else 0
        end = min(max(int(torch.searchsorted(area_cum, base + chunk_pairs, right=True)), start + 1), n_all)
        gs = torch.arange(start, end)
        start = end
        check_live = composited
        if check_live:
            alive_flat = log_t > log_eps
            if not bool(alive_flat.any()):
                break
            alive = alive_flat.reshape(height, width)
            gs = _take(gs, _live_in_boxes(alive, _take(lo, gs), _take(hi, gs)).nonzero().squeeze(1))
            if gs.numel() == 0:
                continue
        f_g = feats.index_select(0, gs)
        row_g, row_y, row_x0, row_x1 = _row_spans(f_g[:, :2], f_g[:, 2:5], f_g[:, 5], _take(lo, gs), _take(hi, gs))
        if check_live:
            # Live pixels per row segment by a per-row prefix count: drop rows with none.
            rowcum = torch.zeros(height, width + 1, dtype=torch.int32)
            torch.cumsum(alive, dim=1, dtype=torch.int32, out=rowcum[:, 1:])
            rc = rowcum.reshape(-1)
            ry = row_y * (width + 1)
            keep = (_take(rc, ry + row_x1) > _take(rc, ry + row_x0)).nonzero().squeeze(1)
            row_g, row_y, row_x0, row_x1 = (_take(x, keep) for x in (row_g, row_y, row_x0, row_x1))
            if row_g.numel() == 0:
                continue
        composited = True
        # Everything a pair needs from its row, gathered in one index_select. Per row, dy and the c term are
        # computed with the same float ops as the reference does per pixel, so the values are identical.
        rf = f_g.index_select(0, row_g)
        dy = rf[:, 1] - (row_y.to(rf.dtype) + 0.5)
        half_c = -0.5 * (rf[:, 4] * dy * dy)
        row_tab = torch.stack([rf[:, 0], rf[:, 2], rf[:, 3], dy, half_c, rf[:, 5]], 1)
        row_yw = row_y * width
        row_gg = _take(gs, row_g)  # index into the chunked arrays (col1)
        rows = torch.arange(row_g.numel())
        row_w = row_x1 - row_x0
        row_start = row_yw + row_x0
        # Expand rows to (Gaussian, pixel) pairs.
        cnt = _take(row_w, rows)
        pair_r = torch.repeat_interleave(rows, cnt)
        local = torch.arange(pair_r.numel()) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        pix = _take(row_start, pair_r) + local
        if check_live:
            live = _take(alive_flat, pix).nonzero().squeeze(1)
            pair_r, pix = _take(pair_r, live), _take(pix, live)
        f = row_tab.index_select(0, pair_r)  # [P, 6]: mx, a, b, dy, half_c, opacity
        # The reference's arithmetic (rasterize_cpu._composite_chunk), so thresholds decide alike.
        dx = f[:, 0] - ((pix - _take(row_yw, pair_r)).to(f.dtype) + 0.5)
        half_a = -0.5 * (f[:, 1] * dx * dx)
        neg_sigma = torch.addcmul(half_a + f[:, 4], -(f[:, 2] * dx), f[:, 3])
        alpha = torch.clamp_max(f[:, 5] * torch.exp(neg_sigma.clamp_max(0)), MAX_ALPHA)
        ok = ((alpha >= ALPHA_THRESHOLD) & (neg_sigma <= 0)).nonzero().squeeze(1)
        if ok.numel() == 0:
            continue
        # (pixel, depth) order: pairs are in depth (= row) order, a stable sort by pixel keeps it.
        pix_s, order = torch.sort(_take(pix, ok).int(), stable=True)
        ok = _take(ok, order)
        pair_g, alpha = _take(row_gg, _take(pair_r, ok)), _take(alpha, ok)
        uniq, counts = torch.unique_consecutive(pix_s, return_counts=True)
        uniq = uniq.long()
        ends = torch.cumsum(counts, 0)
        starts = ends - counts
        l1m = torch.log1p(-alpha.double())
        cs0 = torch.zeros(l1m.numel() + 1, dtype=torch.float64)
        torch.cumsum(l1m, 0, out=cs0[1:])  # cs0[k] = sum over the chunk's pairs before k
        carried = _take(log_t, uniq)
        log_before = torch.repeat_interleave(carried - _take(cs0, starts), counts) + cs0[:-1]
        # T only decreases: "stop before the Gaussian taking T to <= 1e-4" = "keep iff T after > 1e-4".
        w = torch.where(log_before + l1m > log_eps, alpha.double() * torch.exp(log_before), 0.0)
        wc0 = torch.zeros(w.numel() + 1, d + 1, dtype=torch.float64)
        torch.cumsum(w[:, None] * col1.index_select(0, pair_g), 0, out=wc0[1:])
        acc.index_add_(0, uniq, _take(wc0, ends) - _take(wc0, starts))  # unique indices: order-free
        log_t.index_copy_(0, uniq, carried + (_take(cs0, ends) - _take(cs0, starts)))
    return acc[:, :d], acc[:, d]


ENGINES = ("auto", "numba", "torch")


def _numba_kernel():  # noqa: ANN202 - (prepare, composite_tiles) numba dispatchers, or None without numba
    try:
        from ._splat_numba import composite_tiles, prepare
    except Exception:  # not installed, or unusable here (e.g. no writable cache location): use PyTorch
        return None
    return prepare, composite_tiles


def _work_tile(width: int, height: int, threads: int) -> int:
    """Edge of the compiled engine's work tiles (any value <= 32 gives the same image).

    Larger tiles mean fewer (Gaussian, tile) overlaps to walk (finished pixels cost little: row bit
    masks), smaller ones more tiles to spread over threads. On demo-003 (one thread, 32-512 px) 32 px
    tiles measured 10-30% faster than 16 and 8; with several threads we keep >= 16 tiles per thread.
    """
    tiles32 = math.ceil(width / 32) * math.ceil(height / 32)
    return 32 if threads == 1 or tiles32 >= 16 * threads else 16


def _rasterize_numba(
    kernels,  # noqa: ANN001 - (prepare, composite_tiles)
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int, 0 = culled
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    backgrounds: Tensor | None,  # [C, D]
    tile_size: int,
) -> tuple[Tensor, Tensor]:  # colors [C, H, W, D], alphas [C, H, W, 1] in the means' dtype, on its device
    """The compiled engine: set-up (sort, boxes, binning) and compositing both in numba, glue in numpy.

    Why the set-up is compiled too: after the compositing loop became Gaussian-major (see _splat_numba),
    the numpy / PyTorch set-up (stable argsort, gathers, box and tile passes over every Gaussian) was
    ~10 ms of a 15-35 ms frame on demo-003 at 64-256 px; in one serial numba pass it is ~2-4 ms. The
    glue avoids PyTorch ops too: on a 2-core machine busy with other work, each of PyTorch's parallel
    regions (copies and casts of >= 32k elements) can wait a scheduler time slice for its second thread,
    which measured several ms per frame at 64 px.
    """
    import numba
    import numpy as np

    prepare, kernel = kernels
    cams, d = colors.shape[0], colors.shape[-1]
    device = means2d.device
    # The reference computes in the means' dtype (colours and conics cast to it); float32 or float64 here.
    dtype = torch.float32 if means2d.dtype == torch.float32 else torch.float64
    np_dtype = np.float32 if dtype == torch.float32 else np.float64

    def arr(t: Tensor, to: torch.dtype) -> np.ndarray:
        t = t.detach().cpu()
        return (t if t.dtype == to else t.to(to)).numpy()  # a view when nothing needs converting

    depth_dtype = torch.float64 if depths.dtype == torch.float64 else torch.float32
    m2, con, col, op = (arr(t, dtype) for t in (means2d, conics, colors, opacities))
    rad, dep = arr(radii, torch.int64), arr(depths, depth_dtype)
    bg = None if backgrounds is None else arr(backgrounds, torch.float64)
    colour = np.empty((cams, height, width, d), dtype=np_dtype)
    alpha = np.empty((cams, height, width, 1), dtype=np_dtype)
    # Below ~128 x 128 px a parallel launch on a busy machine costs more than it saves: one thread there
    # (the image does not depend on the count).
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, width * height // 16384))
    ts = _work_tile(width, height, threads)
    consts = np.array([0.5, 1.0, ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_EPS], dtype=np_dtype)
    centres = (np.arange(max(width, height)) + 0.5).astype(np_dtype)
    c_ = np.ascontiguousarray
    for c in range(cams):
        out = np.zeros((width * height, d + 1), dtype=np.float64)  # sum of w * colour, sum of w
        offsets, ids, feats, boxes, cols, sig_t = prepare(
            c_(m2[c]), c_(con[c]), c_(col[c]), c_(op[c]), c_(rad[c]), c_(dep[c]), tile_size, width, height, ts,
            ALPHA_THRESHOLD,
        )  # fmt: skip
        if ids.size > 0:
            numba.set_num_threads(threads)
            kernel(offsets, ids, feats, boxes, cols, sig_t, width, height, ts, centres, consts, out)
        acc = out[:, :d]
        if bg is not None:
            acc = acc + (1.0 - out[:, d:]) * bg[c]
        colour[c] = acc.reshape(height, width, d)  # rounded once to the output dtype
        alpha[c] = out[:, d:].reshape(height, width, 1)
    out_dtype = means2d.dtype
    return torch.from_numpy(colour).to(device, out_dtype), torch.from_numpy(alpha).to(device, out_dtype)


@torch.no_grad()
def rasterize_to_pixels_fast(
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
    max_pairs: int = 2**21,
    engine: str = "auto",
) -> tuple[Tensor, Tensor]:  # colors [C, H, W, D], alphas [C, H, W, 1]
    """No-grad counterpart of `rasterize_cpu.rasterize_to_pixels` (same arguments, same image).

    Runs on the CPU whatever the inputs' device and returns on that device. engine: "numba" (compiled,
    the default when numba imports), "torch" (pure PyTorch) or "auto". Memory: the numba engine holds
    ~100 bytes per Gaussian, 8 per (Gaussian, work tile) overlap and float64 per-pixel sums (8 (D + 1)
    bytes a pixel); the torch engine's chunk holds at most `max_pairs` (Gaussian, pixel) pairs, ~200
    bytes each, plus per-pixel accumulators. Both peak well under 1 GiB on demo scenes up to 1024 px.
    """
    cams, n = means2d.shape[:2]
    d = colors.shape[-1]
    if conics.shape != (cams, n, 3) or colors.shape[:2] != (cams, n) or opacities.shape != (cams, n):
        raise ValueError(
            f"rasterize_to_pixels_fast: inconsistent shapes means2d {tuple(means2d.shape)}, "
            f"conics {tuple(conics.shape)}, colors {tuple(colors.shape)}, opacities {tuple(opacities.shape)}"
        )
    if radii.shape != (cams, n, 2) or depths.shape != (cams, n):
        raise ValueError(
            f"rasterize_to_pixels_fast: radii must be [C,N,2] and depths [C,N], got "
            f"{tuple(radii.shape)}, {tuple(depths.shape)}"
        )
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    kernel = _numba_kernel() if engine in ("auto", "numba") else None
    if engine == "numba" and kernel is None:
        raise RuntimeError("engine='numba' needs the numba package (pip install numba); engine='torch' does without")
    if kernel is not None:
        return _rasterize_numba(
            kernel, means2d, conics, colors, opacities, radii, depths, width, height, backgrounds, int(tile_size)
        )
    dtype, device = means2d.dtype, means2d.device
    out_c, out_a = [], []
    for c in range(cams):
        vis = ((radii[c, :, 0] > 0) & (radii[c, :, 1] > 0)).nonzero().squeeze(1).cpu()
        order = vis[torch.argsort(depths[c, vis.to(device)].cpu(), stable=True)]
        m2 = means2d[c].cpu()[order]
        lo, hi = _pixel_boxes(m2, radii[c].cpu()[order], int(tile_size), width, height)
        inputs = (
            m2,
            conics[c].cpu()[order].to(dtype),
            colors[c].cpu()[order],
            opacities[c].cpu()[order].to(dtype),
            lo,
            hi,
            width,
            height,
        )
        col, alpha = _composite_camera(*inputs, _chunk_pairs(width * height, int(max_pairs)))
        out_c.append(col.reshape(height, width, d))
        out_a.append(alpha.reshape(height, width, 1))
    colour = torch.stack(out_c)
    alpha = torch.stack(out_a)
    if backgrounds is not None:
        colour = colour + (1.0 - alpha) * backgrounds.cpu().double()[:, None, None, :]
    return colour.to(device=device, dtype=dtype), alpha.to(device=device, dtype=dtype)
