"""The no-grad fast CPU compositor against the differentiable reference path and the kernel's rules.

The reference (rasterize_cpu.rasterize_to_pixels) is an independent implementation: tiles, padded
batches and a float cumprod, where the fast path's torch engine expands (Gaussian, pixel) pairs per row
with float64 log-sums and its numba engine walks ellipse spans of live pixels per work tile. Both must
give the same image (up to rounding) and exactly the same coverage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import avatar_render.rasterize_cpu_fast as fast_mod
from avatar_render.camera import Camera
from avatar_render.gaussians import GaussianSet
from avatar_render.projection import project_gaussians
from avatar_render.rasterize_cpu import rasterization_cpu, rasterize_to_pixels
from avatar_render.rasterize_cpu_fast import rasterize_to_pixels_fast
from avatar_render.rendering import render


def random_scene(
    n: int, seed: int, dtype: torch.dtype, spread: float = 0.3, scale: tuple[float, float] = (0.005, 0.08)
) -> GaussianSet:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    # Per-axis scales drawn independently: many thin, tilted ellipses (the hard case for span bounds).
    scales = scale[0] * (scale[1] / scale[0]) ** torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.02 + 0.98 * torch.rand(n, generator=g, dtype=dtype)
    sh = torch.randn(n, 1, 3, generator=g, dtype=dtype) * 0.5
    return GaussianSet(means=means, quats=quats, log_scales=scales.log(), opacity_logits=torch.logit(opac), sh=sh)


def cameras(count: int, width: int, height: int, dist: float, dtype: torch.dtype) -> Camera:
    angles = torch.linspace(-0.7, 0.7, count, dtype=torch.float64)
    eye = torch.stack([dist * torch.sin(angles), 0.1 * torch.cos(2 * angles), -dist * torch.cos(angles)], -1)
    return Camera.look_at(eye, torch.tensor([0.01, -0.02, 0.0]), width, height, fov_deg=55.0).to(dtype=dtype)


def projected(gs: GaussianSet, cam: Camera) -> tuple[Tensor, ...]:
    proj = project_gaussians(gs.means, gs.quats, gs.scales, gs.opacities, cam.viewmat, cam.K, cam.width, cam.height)
    colors = gs.rgb.clamp_min(0)[None].expand(len(cam), -1, -1)
    # A depth channel as render() composites it (RGB+ED), so depth is checked too.
    colors = torch.cat([colors, proj.depths[..., None]], dim=-1)
    return proj.means2d, proj.conics, colors, proj.opacities, proj.radii, proj.depths


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


ENGINES = [
    "torch",
    pytest.param("numba", marks=pytest.mark.skipif(fast_mod._numba_kernel() is None, reason="no numba")),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("dtype", "seed", "width", "height", "tile", "dist"),
    [
        (torch.float32, 0, 37, 53, 8, 1.0),  # odd size, partial tiles
        (torch.float64, 1, 64, 48, 16, 0.9),
        (torch.float32, 2, 41, 29, 16, 0.25),  # camera inside the cloud: Gaussians behind it and crossing edges
    ],
)
def test_fast_matches_reference_on_random_scenes(
    engine: str, dtype: torch.dtype, seed: int, width: int, height: int, tile: int, dist: float
) -> None:
    gs = random_scene(1500, seed, dtype)
    cam = cameras(2, width, height, dist, dtype)
    eye = -cam.viewmat[0, :3, :3].T @ cam.viewmat[0, :3, 3]
    gs.means[:100] = 1.5 * eye + 0.1 * gs.means[:100]  # behind the first camera
    args = projected(gs, cam)
    radii, depths, means2d = args[4], args[5], args[0]
    visible = (radii > 0).all(-1)
    # The scene exercises what it claims: culled Gaussians behind the camera, boxes crossing the border.
    assert bool((depths < 0).any())
    r = radii.to(means2d.dtype)
    assert bool((visible & ((means2d[..., 0] - r[..., 0] < 0) | (means2d[..., 0] + r[..., 0] > width))).any())
    bg = torch.tensor([[0.2, 0.5, 0.9, 0.0], [1.0, 0.0, 0.3, 0.0]], dtype=dtype)
    ref_c, ref_a = rasterize_to_pixels(*args, width, height, backgrounds=bg, tile_size=tile)
    # torch engine: one chunk, and many chunks (early termination across chunks).
    for max_pairs in (2**21, 20000) if engine == "torch" else (2**21,):
        fast_c, fast_a = rasterize_to_pixels_fast(
            *args, width, height, backgrounds=bg, tile_size=tile, max_pairs=max_pairs, engine=engine
        )
        assert fast_c.dtype == dtype and fast_c.shape == ref_c.shape and fast_a.shape == ref_a.shape
        assert torch.equal(fast_a > 0, ref_a > 0)  # identical coverage
        tol = 2e-5 if dtype == torch.float32 else 1e-10
        assert torch.allclose(fast_a, ref_a, atol=tol, rtol=0)
        assert torch.allclose(fast_c[..., :3], ref_c[..., :3], atol=tol, rtol=0)
        assert torch.allclose(fast_c[..., 3], ref_c[..., 3], atol=tol * 10, rtol=tol)  # depth sum, z ~ 1
    if dist > 0.5:
        assert 0.2 < float((ref_a > 0).float().mean()) < 1.0  # both drawn and empty pixels


def test_fast_matches_reference_on_demo_avatar() -> None:
    from avatar_render import load_avatar

    avatar = load_avatar("demo-001")
    codes, poses = avatar.capture_segment(4, 1)
    g = avatar.pose(codes, poses).frame(0)
    cam = Camera.look_at(torch.tensor([[0.06, 0.03, 0.28]]), torch.tensor([0.0, -0.02, 0.0]), 40, 48)
    kwargs = dict(sh_degree=g.sh_degree, backgrounds=torch.ones(1, 3), render_mode="RGB+ED", tile_size=8)
    common = (g.means, g.quats, g.scales, g.opacities, g.sh, cam.viewmat, cam.K, 40, 48)
    with torch.no_grad():
        ref_c, ref_a, _ = rasterization_cpu(*common, fast=False, **kwargs)
        fast_c, fast_a, _ = rasterization_cpu(*common, fast=True, **kwargs)
    covered = ref_a[..., 0] > 0
    assert 0.2 < float(covered.float().mean()) < 0.95
    assert torch.equal(fast_a[..., 0] > 0, covered)
    assert psnr(fast_c[..., :3], ref_c[..., :3]) >= 60.0
    assert psnr(fast_a, ref_a) >= 60.0
    depth_ref, depth_fast = ref_c[..., 3][covered], fast_c[..., 3][covered]
    assert torch.allclose(depth_fast, depth_ref, rtol=1e-4, atol=1e-6)


def _thread_scene() -> tuple[tuple[Tensor, ...], int, int]:
    """A frame large enough (>= 2 x 16384 px) that the numba engine runs 2 threads when allowed."""
    gs = random_scene(3000, 5, torch.float32, scale=(0.01, 0.1))
    w, h = 184, 180
    return projected(gs, cameras(1, w, h, 0.9, torch.float32)), w, h


def _thread_case(out_path: str) -> None:
    """Run in a subprocess with NUMBA_NUM_THREADS=2: the numba engine's image at 2 threads."""
    import numba

    torch.set_num_threads(2)
    args, w, h = _thread_scene()
    image = rasterize_to_pixels_fast(*args, w, h, engine="numba")
    torch.save({"image": image, "threads": numba.get_num_threads()}, out_path)


def test_thread_count_does_not_change_the_image_torch() -> None:
    gs = random_scene(3000, 5, torch.float32, scale=(0.01, 0.1))
    w, h = 96, 80
    args = projected(gs, cameras(1, w, h, 0.9, torch.float32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rasterize_to_pixels_fast(*args, w, h, max_pairs=20000, engine="torch")
        torch.set_num_threads(2)
        two = rasterize_to_pixels_fast(*args, w, h, max_pairs=20000, engine="torch")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert bool((one[1] > 0).any())


@pytest.mark.skipif(fast_mod._numba_kernel() is None, reason="no numba")
def test_thread_count_does_not_change_the_image_numba(tmp_path: Path) -> None:
    # numba's thread pool size is fixed per process (NUMBA_NUM_THREADS), so 2 threads run in a child.
    out = tmp_path / "two.pt"
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2")
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_splat_fast as t; "
    code += f"t._thread_case({str(out)!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    two = torch.load(out)
    assert two["threads"] == 2  # the child really composited on 2 threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        args, w, h = _thread_scene()
        one = rasterize_to_pixels_fast(*args, w, h, engine="numba")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two["image"][0]) and torch.equal(one[1], two["image"][1])
    assert bool((one[1] > 0).any())


@pytest.mark.skipif(fast_mod._numba_kernel() is None, reason="no numba")
def test_numba_work_tile_does_not_change_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    gs = random_scene(2000, 11, torch.float32, scale=(0.003, 0.15))
    w, h = 71, 45
    args = projected(gs, cameras(1, w, h, 0.8, torch.float32))
    images = []
    for tile in (8, 16, 32):
        monkeypatch.setattr(fast_mod, "_work_tile", lambda width, height, threads, tile=tile: tile)
        images.append(rasterize_to_pixels_fast(*args, w, h, tile_size=16, engine="numba"))
    for other in images[1:]:
        assert torch.equal(images[0][0], other[0]) and torch.equal(images[0][1], other[1])
    ref_c, ref_a = rasterize_to_pixels(*args, w, h, tile_size=16)
    assert torch.equal(images[0][1] > 0, ref_a > 0)
    assert torch.allclose(images[0][0][..., :3], ref_c[..., :3], atol=2e-5, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_fast_matches_reference_on_hard_cases(engine: str) -> None:
    """Depth ties (order by index), thin and strongly tilted large ellipses, opacities near 1/255 and near 1."""
    gs = random_scene(1200, 13, torch.float32, scale=(0.0005, 0.12))
    gen = torch.Generator().manual_seed(3)
    logits = gs.opacity_logits.clone()
    pick = torch.rand(len(gs), generator=gen)
    logits[pick < 0.2] = torch.logit(torch.tensor(1.05 / 255))  # just above the threshold
    logits[pick > 0.8] = torch.logit(torch.tensor(0.9995))  # pixels finish early (T <= 1e-4)
    gs = GaussianSet(means=gs.means, quats=gs.quats, log_scales=gs.log_scales, opacity_logits=logits, sh=gs.sh)
    w, h = 53, 37
    cam = cameras(1, w, h, 1.3, torch.float32)
    means2d, conics, colors, opac, radii, depths = projected(gs, cam)
    depths = (depths * 8).round() / 8  # many exact ties
    visible = (radii > 0).all(-1)
    assert int(visible.sum()) - int(torch.unique(depths[visible]).numel()) > 100
    # Strongly correlated (thin, tilted) ellipses are present: |b| / sqrt(a c) close to 1.
    corr = conics[..., 1].abs() / (conics[..., 0] * conics[..., 2]).sqrt()
    assert bool((visible & (corr > 0.95)).any())
    args = (means2d, conics, colors, opac, radii, depths)
    ref_c, ref_a = rasterize_to_pixels(*args, w, h, tile_size=8)
    fast_c, fast_a = rasterize_to_pixels_fast(*args, w, h, tile_size=8, engine=engine)
    assert torch.equal(fast_a > 0, ref_a > 0)
    assert torch.allclose(fast_a, ref_a, atol=2e-5, rtol=0)
    assert torch.allclose(fast_c[..., :3], ref_c[..., :3], atol=2e-5, rtol=0)
    assert 0.2 < float((ref_a > 0).float().mean()) < 1.0
    assert float((ref_a > 0.999).float().mean()) > 0.05  # finished pixels exist


def test_render_dispatch_uses_fast_path_without_grad_and_reference_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = fast_mod.rasterize_to_pixels_fast

    def counting(*args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fast_mod, "rasterize_to_pixels_fast", counting)
    gs = random_scene(300, 7, torch.float64)
    cam = cameras(1, 24, 20, 1.0, torch.float64)

    with torch.no_grad():
        out_nograd = render(gs, cam, backend="cpu")
    assert len(calls) == 1
    out_plain = render(gs, cam, backend="cpu")  # grad mode on, but nothing requires grad
    assert len(calls) == 2
    assert torch.allclose(out_plain.rgb, out_nograd.rgb, atol=0, rtol=0)

    leaf = gs.means.clone().requires_grad_(True)
    gs_grad = GaussianSet(
        means=leaf, quats=gs.quats, log_scales=gs.log_scales, opacity_logits=gs.opacity_logits, sh=gs.sh
    )
    out = render(gs_grad, cam, backend="cpu")
    assert len(calls) == 2  # the differentiable reference path
    out.rgb.sum().backward()
    assert leaf.grad is not None and bool((leaf.grad != 0).any())
    # Same image either way.
    assert torch.allclose(out.rgb.detach(), out_nograd.rgb, atol=1e-10)
    assert torch.allclose(out.depth.detach(), out_nograd.depth, atol=1e-9)

    with pytest.raises(ValueError, match="fast=True"):
        rasterization_cpu(
            leaf, gs.quats, gs.scales, gs.opacities, gs.sh, cam.viewmat, cam.K, 24, 20, sh_degree=0, fast=True
        )
