"""CPU splatting backend: frames/s and peak memory on a demo avatar at 256, 512 and 1024 px, and the
speed-up over a straightforward PyTorch compositor that expands every Gaussian x pixel pair in the
Gaussians' bounding boxes (same projection, same compositing rules). gsplat is timed too when CUDA is present.

    uv run python benchmarks/render_cpu.py [--avatar demo-003] [--sizes 256 512 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from avatar_render import Camera, load_avatar
from avatar_render.projection import project_gaussians
from avatar_render.rasterize_cpu import rasterize_to_pixels


def naive_composite(proj, colors: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Baseline: every (Gaussian, pixel) pair inside each bounding box, sorted per pixel by depth."""
    out = []
    for c in range(proj.means2d.shape[0]):
        radii = proj.radii[c]
        vis = (radii > 0).all(-1).nonzero().squeeze(-1)
        mean = proj.means2d[c, vis]
        rx, ry = radii[vis, 0].long(), radii[vis, 1].long()
        x0 = (mean[:, 0] - rx).floor().long().clamp(0, width)
        x1 = (mean[:, 0] + rx).ceil().long().clamp(0, width)
        y0 = (mean[:, 1] - ry).floor().long().clamp(0, height)
        y1 = (mean[:, 1] + ry).ceil().long().clamp(0, height)
        bw, bh = x1 - x0, y1 - y0
        counts = bw * bh
        g = torch.repeat_interleave(torch.arange(len(vis)), counts)
        offset = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        px = x0[g] + offset % bw[g]
        py = y0[g] + offset // bw[g]
        dx = mean[g, 0] - (px + 0.5)
        dy = mean[g, 1] - (py + 0.5)
        conic = proj.conics[c, vis][g]
        sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
        alpha = (proj.opacities[c, vis][g] * torch.exp(-sigma)).clamp(max=0.999)
        keep = (sigma >= 0) & (alpha >= 1 / 255)
        g, alpha, pix = g[keep], alpha[keep], (py * width + px)[keep]
        depth_rank = torch.argsort(torch.argsort(proj.depths[c, vis]))
        order = torch.argsort(pix * len(vis) + depth_rank[g])
        g, alpha, pix = g[order], alpha[order], pix[order]
        log_t = torch.cumsum(torch.log1p(-alpha.double()), 0)  # float64: a global cumsum over all pairs
        start = torch.ones_like(pix, dtype=torch.bool)
        start[1:] = pix[1:] != pix[:-1]
        seg_start = torch.cummax(torch.where(start, torch.arange(len(pix)), 0), 0).values
        before = torch.where(seg_start > 0, log_t[(seg_start - 1).clamp(min=0)], torch.zeros_like(log_t))
        t_incl = torch.exp(log_t - before).float()
        t_excl = t_incl / (1 - alpha)
        weight = torch.where(t_incl > 1e-4, alpha * t_excl, torch.zeros_like(alpha))
        image = torch.zeros(height * width, colors.shape[-1])
        image.index_add_(0, pix, weight[:, None] * colors[c, vis][g])
        out.append(image.reshape(height, width, -1))
    return torch.stack(out)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", default="demo-003")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    avatar = load_avatar(args.avatar)
    codes, poses = avatar.capture_segment(200, 1)
    g = avatar.pose(codes, poses).frame(0)
    print(f"avatar {args.avatar}: {len(g)} Gaussians, torch threads {torch.get_num_threads()}")
    # Ours first at every size (the process's peak RSS only grows: the naive baseline needs far more memory).
    cases = []
    for size in args.sizes:
        cam = Camera.look_at(torch.tensor([[0.05, 0.02, 0.30]]), torch.tensor([0.0, -0.02, 0.0]), size, size)
        with torch.no_grad():
            proj = project_gaussians(g.means, g.quats, g.scales, g.opacities, cam.viewmat, cam.K, size, size)
            colors = g.rgb[None].clamp_min(0)
            args_ = (proj.means2d, proj.conics, colors, proj.opacities, proj.radii, proj.depths, size, size)
            rasterize_to_pixels(*args_)  # warm-up
            t = time.perf_counter()
            for _ in range(args.repeats):
                image = rasterize_to_pixels(*args_)[0]
            cases.append((size, proj, colors, image, (time.perf_counter() - t) / args.repeats, peak_rss_gib()))
    print(f"{'size':>6} {'ours fps':>9} {'ours peak RSS GiB':>18} {'naive fps':>10} {'speed-up':>9} {'max |diff|':>11}")
    for size, proj, colors, image, t_ours, rss in cases:
        with torch.no_grad():
            t = time.perf_counter()
            reference = naive_composite(proj, colors, size, size)
            t_naive = time.perf_counter() - t
        diff = float((image - reference).abs().max())
        print(f"{size:>6} {1 / t_ours:>9.2f} {rss:>18.2f} {1 / t_naive:>10.2f} {t_naive / t_ours:>8.1f}x {diff:>11.2e}")
    print(f"peak RSS with the naive baseline: {peak_rss_gib():.2f} GiB")
    if torch.cuda.is_available():
        from avatar_render import render

        gc = g.to("cuda")
        for size in args.sizes:
            cam = Camera.look_at(torch.tensor([[0.05, 0.02, 0.30]]), torch.tensor([0.0, -0.02, 0.0]), size, size).to(
                "cuda"
            )
            render(gc, cam, backend="gsplat")
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(20):
                render(gc, cam, backend="gsplat")
            torch.cuda.synchronize()
            print(
                f"gsplat {size}px: {20 / (time.perf_counter() - t):.1f} fps, peak CUDA "
                f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            )


if __name__ == "__main__":
    main()
