"""CPU splatting backend on a demo avatar: ms/frame of the reference (differentiable, tiled) path, the no-grad
fast path that `render(..., backend="cpu")` takes without gradients, and a straightforward PyTorch compositor
that expands every Gaussian x pixel pair in the Gaussians' bounding boxes (same projection, same compositing
rules); speed-ups, PSNR between them and peak memory; then the end-to-end effect on the README's demo command
(`datagen render` with configs/demo.toml), frames/s with the reference path forced and with the default.
gsplat is timed too when CUDA is present.

    uv run python benchmarks/render_cpu.py [--avatar demo-003] [--sizes 32 64 ... 1024] [--no-e2e]
        [--markdown benchmarks/results/render_cpu.md]

Timings are the best of a few repeats (fewer at large sizes): on a shared machine the best run is the
least disturbed one; the CPU time (process, all threads) of the same runs is printed too, as on a machine
loaded by other jobs wall time mostly measures the scheduler. Peak memory is the process's peak RSS after
each path has run at that size (it only grows, so each path is run for all sizes before the next path).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from avatar_render import Camera, load_avatar
from avatar_render.projection import project_gaussians
from avatar_render.rasterize_cpu import rasterize_to_pixels
from avatar_render.rasterize_cpu_fast import rasterize_to_pixels_fast
from avatar_render.rendering import CPU_TILE_SIZE

ROOT = Path(__file__).resolve().parents[1]

# Imported by every Python process of the "before" demo run (Ray workers inherit PYTHONPATH): it makes
# rasterization_cpu default to the reference path, i.e. the backend as it was before the fast path.
_FORCE_REFERENCE = """
import functools, importlib.abc, sys


class _Patch(importlib.abc.MetaPathFinder):
    # Lazy: only processes that import avatar_render.rasterize_cpu pay for it (Ray's helpers do not).
    def find_spec(self, name, path=None, target=None):
        if name != "avatar_render.rasterize_cpu":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            module.rasterization_cpu = functools.partial(module.rasterization_cpu, fast=False)

        loader.exec_module = exec_module
        return spec


import importlib.util
sys.meta_path.insert(0, _Patch())
"""


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


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


#: CPU time (process, all threads) of the best-of-repeats runs, per (path, size): on a machine loaded by other
#: jobs wall time mostly measures the scheduler, CPU time the work.
CPU_MS: dict[tuple[str, int], float] = {}


def best_ms(fn, repeats: int, cpu_key: tuple[str, int] | None = None) -> tuple[float, object]:
    result, best, best_cpu = None, math.inf, math.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    if cpu_key is not None:
        CPU_MS[cpu_key] = 1e3 * best_cpu
    return 1e3 * best, result


def repeats_for(size: int, base: int) -> int:
    return max(1, base if size <= 256 else base // 2 if size <= 512 else 1)


def demo_fps(force_reference: bool) -> tuple[float, int, float]:
    """Run the README's demo command in a subprocess; return (frames/s, frames, wall s)."""
    import tomllib

    config = tomllib.loads((ROOT / "packages/datagen/configs/demo.toml").read_text())
    lines = (ROOT / "pipelines/demo_avatars.txt").read_text().splitlines()
    avatars = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    frames = len(avatars) * int(config["sequences"]) * int(config["frames"])
    out = Path(tempfile.mkdtemp(prefix="render-cpu-bench-"))
    env = dict(os.environ)
    if force_reference:
        site = out / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_FORCE_REFERENCE)
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [
        sys.executable, "-m", "datagen.cli", "render",
        "--avatars", str(ROOT / "pipelines/demo_avatars.txt"),
        "--config", str(ROOT / "packages/datagen/configs/demo.toml"),
        "--out", str(out / "demo"),
    ]  # fmt: skip
    try:
        t = time.perf_counter()
        for attempt in range(2):  # Ray's node start-up can time out on a loaded machine: retry once
            done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            if done.returncode == 0:
                break
            if attempt == 1:
                raise RuntimeError(f"demo command failed (exit {done.returncode}): {' '.join(cmd)}")
            t = time.perf_counter()
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return frames / wall, frames, wall


def memory_check(g) -> tuple[int, float, float]:  # noqa: ANN001
    """1024 px with ~100k Gaussians (the avatar three times, jittered): (count, ms, peak RSS GiB)."""
    gen = torch.Generator().manual_seed(1)
    n = len(g)
    means = torch.cat([g.means + 0.002 * torch.randn(n, 3, generator=gen) for _ in range(3)])
    cat = [torch.cat([t] * 3) for t in (g.quats, g.scales, g.opacities, g.rgb.clamp_min(0))]
    cam = Camera.look_at(torch.tensor([[0.05, 0.02, 0.30]]), torch.tensor([0.0, -0.02, 0.0]), 1024, 1024)
    with torch.no_grad():
        proj = project_gaussians(means, cat[0], cat[1], cat[2], cam.viewmat, cam.K, 1024, 1024)
        a = (proj.means2d, proj.conics, cat[3][None], proj.opacities, proj.radii, proj.depths, 1024, 1024)
        ms, _ = best_ms(lambda: rasterize_to_pixels_fast(*a, tile_size=CPU_TILE_SIZE), 1)
    return len(means), ms, peak_rss_gib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", default="demo-003")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=5, help="repeats up to 256 px (fewer above)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end demo command")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    def save() -> None:
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.markdown.with_suffix(args.markdown.suffix + ".tmp")
            head = "# CPU splatting benchmark\n\n`uv run python benchmarks/render_cpu.py`\n\n"
            tmp.write_text(head + "\n".join(lines) + "\n")
            tmp.replace(args.markdown)

    avatar = load_avatar(args.avatar)
    codes, poses = avatar.capture_segment(200, 1)
    g = avatar.pose(codes, poses).frame(0)
    say(
        f"avatar {args.avatar}: {len(g)} Gaussians, torch threads {torch.get_num_threads()}, "
        f"tile size {CPU_TILE_SIZE} (as render() uses); ms/frame = best of {args.repeats} up to 256 px"
    )
    cases = {}
    for size in args.sizes:
        cam = Camera.look_at(torch.tensor([[0.05, 0.02, 0.30]]), torch.tensor([0.0, -0.02, 0.0]), size, size)
        with torch.no_grad():
            proj = project_gaussians(g.means, g.quats, g.scales, g.opacities, cam.viewmat, cam.K, size, size)
        colors = g.rgb[None].clamp_min(0)
        cases[size] = (proj, colors, (proj.means2d, proj.conics, colors, proj.opacities, proj.radii, proj.depths))
    results: dict[int, dict[str, object]] = {s: {} for s in args.sizes}
    # One path at all sizes before the next: peak RSS only grows (the naive baseline needs the most).
    paths = [
        ("fast", lambda s, a: rasterize_to_pixels_fast(*a, s, s, tile_size=CPU_TILE_SIZE)[0]),
        ("torch", lambda s, a: rasterize_to_pixels_fast(*a, s, s, tile_size=CPU_TILE_SIZE, engine="torch")[0]),
        ("reference", lambda s, a: rasterize_to_pixels(*a, s, s, tile_size=CPU_TILE_SIZE)[0]),
        ("naive", lambda s, a: naive_composite(cases[s][0], cases[s][1], s, s)),
    ]
    for name, fn in paths:
        for size in args.sizes:
            a = cases[size][2]
            with torch.no_grad():
                if size <= 256:
                    fn(size, a)  # warm-up
                ms, image = best_ms(
                    lambda size=size, a=a, fn=fn: fn(size, a), repeats_for(size, args.repeats), (name, size)
                )
            results[size][name] = (ms, image, peak_rss_gib())
        if name == "fast":
            big = memory_check(g)

    say()
    say("fast = the path render(..., backend='cpu') takes without gradients (numba engine); torch = its "
        "pure-PyTorch fallback engine; reference = the differentiable tiled path; naive = the straightforward "
        "compositor.")  # fmt: skip
    say()
    say("| size | reference ms | fast ms | torch-engine ms | naive ms | fast vs ref | torch vs ref | fast vs naive "
        "| torch vs naive | PSNR fast/ref dB | PSNR torch/ref dB | coverage diff px | peak RSS GiB fast / torch "
        "/ ref / naive |")  # fmt: skip
    say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        r = results[size]
        (t_f, im_f, m_f), (t_t, im_t, m_t) = r["fast"], r["torch"]
        (t_r, im_r, m_r), (t_n, _, m_n) = r["reference"], r["naive"]
        cov = int(((im_f.sum(-1) > 0) != (im_r.sum(-1) > 0)).sum() + ((im_t.sum(-1) > 0) != (im_r.sum(-1) > 0)).sum())
        say(
            f"| {size} | {t_r:.1f} | {t_f:.1f} | {t_t:.1f} | {t_n:.1f} | {t_r / t_f:.1f}x | {t_r / t_t:.1f}x | "
            f"{t_n / t_f:.1f}x | {t_n / t_t:.1f}x | {psnr(im_f, im_r):.1f} | {psnr(im_t, im_r):.1f} | {cov} | "
            f"{m_f:.2f} / {m_t:.2f} / {m_r:.2f} / {m_n:.2f} |"
        )
    say()
    say("coverage diff: pixels drawn by fast or torch engine and not by the reference, or the reverse.")
    say()
    say("CPU time (process, all threads; best of the same repeats), ms/frame:")
    say()
    say("| size | reference CPU ms | fast CPU ms | torch-engine CPU ms | naive CPU ms | fast vs ref | fast vs naive |")
    say("|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        c = {name: CPU_MS[(name, size)] for name in ("reference", "fast", "torch", "naive")}
        say(
            f"| {size} | {c['reference']:.1f} | {c['fast']:.1f} | {c['torch']:.1f} | {c['naive']:.1f} | "
            f"{c['reference'] / c['fast']:.1f}x | {c['naive'] / c['fast']:.1f}x |"
        )
    say()
    say(f"memory: 1024 px, {big[0]} Gaussians, fast path: {big[1]:.0f} ms, process peak RSS {big[2]:.2f} GiB")
    say()
    # Load from other jobs drifts over the minutes between the blocks above; back-to-back pairs see the same load.
    say("Interleaved: reference and fast run back to back, repeats as above; ratio of the medians (and range of")
    say("the per-pair ratios).")
    say()
    say("| size | reference ms (median) | fast ms (median) | fast vs ref | per-pair range |")
    say("|---:|---:|---:|---:|---:|")
    ref_fn, fast_fn = dict(paths)["reference"], dict(paths)["fast"]
    for size in args.sizes:
        a, pairs = cases[size][2], []
        with torch.no_grad():
            for _ in range(repeats_for(size, args.repeats)):
                t_r, _ = best_ms(lambda size=size, a=a: ref_fn(size, a), 1)
                t_f, _ = best_ms(lambda size=size, a=a: fast_fn(size, a), 1)
                pairs.append((t_r, t_f))
        med_r = statistics.median(p[0] for p in pairs)
        med_f = statistics.median(p[1] for p in pairs)
        ratios = [p[0] / p[1] for p in pairs]
        say(f"| {size} | {med_r:.1f} | {med_f:.1f} | {med_r / med_f:.1f}x | {min(ratios):.1f}x - {max(ratios):.1f}x |")
    save()

    if not args.no_e2e:
        say()
        say("End to end: `uv run datagen render --avatars pipelines/demo_avatars.txt "
            "--config packages/datagen/configs/demo.toml --out ...`")  # fmt: skip
        before = demo_fps(force_reference=True)
        after = demo_fps(force_reference=False)
        say("| run | frames | wall s | frames/s |")
        say("|---|---:|---:|---:|")
        say(f"| before (reference path forced) | {before[1]} | {before[2]:.1f} | {before[0]:.2f} |")
        say(f"| after (fast path) | {after[1]} | {after[2]:.1f} | {after[0]:.2f} |")
        say(f"speed-up end to end: {after[0] / before[0]:.2f}x")

    if torch.cuda.is_available():
        from avatar_render import render

        gc = g.to("cuda")
        for size in args.sizes:
            cam = Camera.look_at(torch.tensor([[0.05, 0.02, 0.30]]), torch.tensor([0.0, -0.02, 0.0]), size, size)
            cam = cam.to("cuda")
            render(gc, cam, backend="gsplat")
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(20):
                render(gc, cam, backend="gsplat")
            torch.cuda.synchronize()
            say(
                f"gsplat {size}px: {1e3 * (time.perf_counter() - t) / 20:.2f} ms/frame, peak CUDA "
                f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            )
    save()


if __name__ == "__main__":
    main()
