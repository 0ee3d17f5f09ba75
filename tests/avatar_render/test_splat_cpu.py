"""The PyTorch CPU Gaussian splatting backend against independent expectations.

References used here: a closed-form image of one Gaussian, gsplat's own pure-torch projection and
SH code, a per-pixel Python loop written from the CUDA kernel's rules, finite differences, and (on
a CUDA machine) gsplat itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from avatar_render.camera import Camera, intrinsics
from avatar_render.gaussians import GaussianSet
from avatar_render.projection import project_gaussians
from avatar_render.rasterize_cpu import rasterization_cpu, rasterize_to_pixels
from avatar_render.rendering import render
from avatar_render.sh import eval_sh_colors

CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------- helpers
def random_scene(
    n: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    sh_degree: int = 0,
    spread: float = 0.25,
    scale: tuple[float, float] = (0.01, 0.08),
) -> GaussianSet:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype)
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.5
    return GaussianSet(means=means, quats=quats, log_scales=scales.log(), opacity_logits=torch.logit(opac), sh=sh)


def orbit_cameras(
    count: int,
    width: int,
    height: int,
    dist: float = 1.2,
    fov: float = 50.0,
    dtype: torch.dtype = torch.float64,
) -> Camera:
    angles = torch.linspace(-0.6, 0.6, count, dtype=torch.float64)
    eye = torch.stack([dist * torch.sin(angles), 0.15 * torch.cos(3 * angles), -dist * torch.cos(angles)], -1)
    cam = Camera.look_at(eye, torch.tensor([0.02, -0.01, 0.0]), width, height, fov_deg=fov)
    return cam.to(dtype=dtype)


def naive_composite(
    means2d: np.ndarray,
    conics: np.ndarray,
    colors: np.ndarray,
    opac: np.ndarray,
    depths: np.ndarray,
    visible: np.ndarray,
    width: int,
    height: int,
    bg: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One camera, one pixel at a time, straight from RasterizeToPixels3DGSFwd.cu's rules."""
    order = [i for i in np.argsort(depths, kind="stable") if visible[i]]
    out = np.zeros((height, width, colors.shape[1]))
    alpha_img = np.zeros((height, width, 1))
    stops = 0
    for y in range(height):
        for x in range(width):
            px, py = x + 0.5, y + 0.5
            t = 1.0
            acc = np.zeros(colors.shape[1])
            for i in order:
                dx, dy = means2d[i, 0] - px, means2d[i, 1] - py
                sigma = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
                alpha = min(0.999, opac[i] * math.exp(-sigma))
                if sigma < 0 or alpha < 1.0 / 255.0:
                    continue
                if t * (1.0 - alpha) <= 1e-4:
                    stops += 1
                    break
                acc += colors[i] * alpha * t
                t *= 1.0 - alpha
            out[y, x] = acc + t * bg
            alpha_img[y, x] = 1.0 - t
    return out, alpha_img, stops


# ---------------------------------------------------------------------------- closed form
@pytest.mark.parametrize("opacity", [0.8, 0.03])
def test_single_isotropic_gaussian_matches_closed_form(opacity: float) -> None:
    width, height, f, z, s = 40, 28, 30.0, 2.0, 0.12
    f64 = torch.float64
    cam = Camera(
        K=intrinsics(f, f, width / 2, height / 2).to(f64),
        viewmat=torch.eye(4, dtype=f64),
        width=width,
        height=height,
    )
    colour = torch.tensor([0.9, 0.4, 0.2], dtype=f64)
    gs = GaussianSet.from_activated(
        means=torch.tensor([[0.0, 0.0, z]], dtype=f64),
        quats=torch.tensor([[1.0, 0, 0, 0]], dtype=f64),
        scales=torch.full((1, 3), s, dtype=f64),
        opacities=torch.tensor([opacity], dtype=f64),
        rgb=colour[None],
    )
    bg = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    out = render(gs, cam, backend="cpu", background=bg)

    # Independent expectation: EWA gives an isotropic 2D variance s^2 f^2 / z^2, plus the 0.3 px^2 blur.
    var = s * s * f * f / (z * z) + 0.3
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    r2 = (xs - width / 2) ** 2 + (ys - height / 2) ** 2
    alpha = torch.clamp_max(opacity * torch.exp(-0.5 * r2 / var), 0.999)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))[None, ..., None]
    assert (alpha > 0).sum() > 20 and (alpha == 0).sum() > 20  # both regimes present
    assert torch.allclose(out.alpha, alpha, atol=1e-12)
    assert torch.allclose(out.rgb, colour * alpha + bg * (1 - alpha), atol=1e-12)
    drawn = alpha[..., 0] > 0
    assert torch.allclose(out.depth[..., 0][drawn], torch.full_like(out.depth[..., 0][drawn], z), atol=1e-12)
    assert torch.all(out.depth[..., 0][~drawn] == 0)


# ---------------------------------------------------------------------------- against gsplat's torch code
def test_projection_matches_gsplat_torch_reference() -> None:
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    width, height = 64, 48
    for seed in range(3):
        gs = random_scene(400, seed, spread=0.8, scale=(0.002, 0.2))
        gs.means[:5, 2] = -1.5  # some behind the cameras
        cam = orbit_cameras(3, width, height, dist=1.3)
        covars, _ = _quat_scale_to_covar_preci(gs.quats, gs.scales, compute_preci=False)
        for antialiased in (False, True):
            radii_ref, m2_ref, d_ref, con_ref, comp_ref = _fully_fused_projection(
                gs.means, covars, cam.viewmat, cam.K, width, height, calc_compensations=antialiased
            )
            # gsplat's torch reference has no opacity-aware extent: with opacity 1 the extents agree
            # except where sqrt(2 ln 255) = 3.3290 < 3.33 rounds up to a different pixel.
            ours = project_gaussians(
                gs.means,
                gs.quats,
                gs.scales,
                torch.ones(len(gs), dtype=gs.dtype),
                cam.viewmat,
                cam.K,
                width,
                height,
                antialiased=antialiased,
            )
            vis = (ours.radii > 0).all(-1)
            vis_ref = (radii_ref > 0).all(-1)
            assert vis.sum() > 300
            assert torch.all(vis_ref[vis])
            assert torch.all(ours.radii[vis] <= radii_ref[vis])
            assert (ours.radii[vis] == radii_ref[vis]).float().mean() > 0.9
            assert torch.allclose(ours.means2d[vis], m2_ref[vis], rtol=1e-5, atol=1e-5)
            assert torch.allclose(ours.depths[vis], d_ref[vis], rtol=1e-5, atol=1e-5)
            assert torch.allclose(ours.conics[vis], con_ref[vis], rtol=1e-5, atol=1e-7)
            if antialiased:
                assert torch.allclose(ours.compensations[vis], comp_ref[vis], rtol=1e-5, atol=1e-7)
                assert torch.allclose(ours.opacities[vis], comp_ref[vis], rtol=1e-5, atol=1e-7)

            # Random opacities: the tighter extent only shrinks boxes and culls more.
            tight = project_gaussians(
                gs.means,
                gs.quats,
                gs.scales,
                gs.opacities,
                cam.viewmat,
                cam.K,
                width,
                height,
                antialiased=antialiased,
            )
            vis2 = (tight.radii > 0).all(-1)
            assert torch.all(vis_ref[vis2]) and torch.all(tight.radii[vis2] <= radii_ref[vis2])


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_torch_reference(degree: int) -> None:
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(500, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(500, 3, generator=g, dtype=torch.float64) * 3.0  # not unit: normalised inside
    ref = _spherical_harmonics(degree, dirs, coeffs)
    assert torch.allclose(eval_sh_colors(coeffs, dirs, degree), ref, atol=1e-12)


# ---------------------------------------------------------------------------- compositor vs per-pixel loop
def test_compositor_matches_naive_per_pixel_loop() -> None:
    width, height, n = 24, 20, 60
    gs = random_scene(n, seed=7)
    # A stack of large, nearly opaque Gaussians in front of the centre makes early stopping happen.
    opac = gs.opacities.clone()
    opac[:12] = 0.97
    scales = gs.scales.clone()
    scales[:12] = 0.12
    cam = orbit_cameras(2, width, height)
    proj = project_gaussians(gs.means, gs.quats, scales, opac, cam.viewmat, cam.K, width, height)
    g = torch.Generator().manual_seed(3)
    colors = torch.rand(2, n, 3, generator=g, dtype=torch.float64)
    bgs = torch.rand(2, 3, generator=g, dtype=torch.float64)
    img, alpha = rasterize_to_pixels(
        proj.means2d,
        proj.conics,
        colors,
        proj.opacities,
        proj.radii,
        proj.depths,
        width,
        height,
        backgrounds=bgs,
    )
    total_stops = 0
    for c in range(2):
        ref_img, ref_alpha, stops = naive_composite(
            proj.means2d[c].numpy(),
            proj.conics[c].numpy(),
            colors[c].numpy(),
            proj.opacities[c].numpy(),
            proj.depths[c].numpy(),
            (proj.radii[c] > 0).all(-1).numpy(),
            width,
            height,
            bgs[c].numpy(),
        )
        total_stops += stops
        assert np.allclose(img[c].numpy(), ref_img, atol=1e-5)
        assert np.allclose(alpha[c].numpy(), ref_alpha, atol=1e-5)
    assert total_stops > 20  # the early-stop rule was exercised


def test_chunking_is_exact() -> None:
    width, height = 40, 36
    gs = random_scene(150, seed=11, scale=(0.02, 0.1))
    cam = orbit_cameras(2, width, height)
    args = (gs.means, gs.quats, gs.scales, gs.opacities, gs.sh, cam.viewmat, cam.K, width, height)
    big, big_a, _ = rasterization_cpu(*args, sh_degree=0)
    for chunk in (256 * 3, 256 * 50):  # 3 Gaussians of one tile per chunk; several tiles, several chunks
        small, small_a, _ = rasterization_cpu(*args, sh_degree=0, max_chunk_elements=chunk)
        assert torch.allclose(small, big, atol=1e-10) and torch.allclose(small_a, big_a, atol=1e-10)


def test_chunking_keeps_gradients_exact() -> None:
    width, height = 24, 20
    gs = random_scene(40, seed=4, scale=(0.03, 0.1))
    cam = orbit_cameras(2, width, height)
    w = torch.rand(2, height, width, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for chunk in (256 * 2, 2**24):  # many recomputed chunks with tiles dropping out vs. one chunk
        leaves = (gs.means, gs.scales, gs.opacities, gs.sh)
        means, scales, opac, sh = (t.clone().requires_grad_(True) for t in leaves)
        img, alpha, _ = rasterization_cpu(
            means,
            gs.quats,
            scales,
            opac,
            sh,
            cam.viewmat,
            cam.K,
            width,
            height,
            sh_degree=0,
            max_chunk_elements=chunk,
        )
        ((img * w).sum() + alpha.sum()).backward()
        grads.append([means.grad, scales.grad, opac.grad, sh.grad])
    for small, big in zip(*grads, strict=True):
        assert torch.isfinite(small).all() and small.abs().sum() > 0
        assert torch.allclose(small, big, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------- consistency
def test_alpha_depth_and_background_consistency() -> None:
    width, height = 48, 40
    gs = random_scene(200, seed=5, sh_degree=2, dtype=torch.float32)
    cam = orbit_cameras(2, width, height, dtype=torch.float32)
    plain = render(gs, cam, backend="cpu")
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    with_bg = render(gs, cam, backend="cpu", background=bg)
    assert torch.all((plain.alpha >= 0) & (plain.alpha <= 1))
    assert torch.allclose(with_bg.alpha, plain.alpha)
    assert torch.allclose(with_bg.rgb, plain.rgb + (1 - plain.alpha) * bg[:, None, None, :], atol=1e-6)
    assert torch.allclose(with_bg.depth, plain.depth)
    _, z = cam.project(gs.means)
    drawn = plain.alpha[..., 0] > 1e-3
    for c in range(2):
        d = plain.depth[c, ..., 0][drawn[c]]
        assert d.numel() > 100
        assert d.min() >= z[c].min() - 1e-4 and d.max() <= z[c].max() + 1e-4
    assert torch.all(plain.rgb >= 0)


def test_nothing_visible_gives_background() -> None:
    gs = random_scene(20, seed=9)
    cam = orbit_cameras(1, 20, 12)
    # The camera looks at the origin from `position`: 1.5 x position is 0.6 m behind it.
    behind = GaussianSet(
        means=0.2 * gs.means + 1.5 * cam.position[0],
        quats=gs.quats,
        log_scales=gs.log_scales,
        opacity_logits=gs.opacity_logits,
        sh=gs.sh,
    )
    out = render(behind, cam, backend="cpu", background=torch.tensor([0.25, 0.5, 0.75]))
    assert torch.all(out.alpha == 0) and torch.all(out.depth == 0)
    assert torch.allclose(out.rgb, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64).expand(1, 12, 20, 3))


# ---------------------------------------------------------------------------- gradients
def test_gradients_are_finite_and_match_finite_differences() -> None:
    width, height = 20, 16
    gs = random_scene(30, seed=2, sh_degree=1)
    cam = orbit_cameras(2, width, height)
    params = {
        name: getattr(gs, name).clone().requires_grad_(True)
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh")
    }
    g = torch.Generator().manual_seed(0)
    w_rgb = torch.rand(2, height, width, 3, generator=g, dtype=torch.float64)
    w_a = torch.rand(2, height, width, 1, generator=g, dtype=torch.float64)

    def loss_of(p: dict[str, Tensor]) -> Tensor:
        out = render(GaussianSet(**p), cam, backend="cpu", background=torch.tensor([0.3, 0.3, 0.3]))
        return (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum()

    loss_of(params).backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "quats":
            assert p.grad.abs().sum() > 0, name

    with torch.no_grad():
        for name, index in (("means", (3, 0)), ("log_scales", (4, 1)), ("opacity_logits", (6,))):
            eps = 1e-6
            plus = {k: v.detach().clone() for k, v in params.items()}
            minus = {k: v.detach().clone() for k, v in params.items()}
            plus[name][index] += eps
            minus[name][index] -= eps
            fd = (loss_of(plus) - loss_of(minus)) / (2 * eps)
            analytic = params[name].grad[index]
            assert abs(fd) > 1e-3, name
            assert torch.allclose(analytic, fd, rtol=1e-4, atol=1e-6), (name, analytic, fd)


# ---------------------------------------------------------------------------- backends
def test_render_backend_errors() -> None:
    gs = random_scene(5, seed=0, dtype=torch.float32)
    cam = orbit_cameras(1, 16, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="auto, gsplat, cpu"):
        render(gs, cam, backend="opengl")
    if not CUDA:
        with pytest.raises(RuntimeError, match="CUDA"):
            render(gs, cam, backend="gsplat")
        assert render(gs, cam, backend="auto").rgb.shape == (1, 16, 16, 3)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device for gsplat")
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_gsplat_backend_matches_cpu_backend(rasterize_mode: str) -> None:
    width, height = 96, 80
    gs = random_scene(2000, seed=1, sh_degree=3, dtype=torch.float32, spread=0.3)
    cam = orbit_cameras(3, width, height, dtype=torch.float32)
    bg = torch.tensor([0.1, 0.2, 0.3])
    cpu = render(gs, cam, backend="cpu", background=bg, rasterize_mode=rasterize_mode)
    gpu = render(gs.to("cuda"), cam, backend="gsplat", background=bg, rasterize_mode=rasterize_mode)
    for name in ("rgb", "alpha", "depth"):
        a, b = getattr(cpu, name), getattr(gpu, name).cpu()
        diff = (a - b).abs()
        # gsplat uses __expf and float32 sums; rare pixels flip a 1/255 or 1e-4 threshold.
        assert diff.mean() < 1e-4 * (10 if name == "depth" else 1), (name, diff.mean())
        assert (diff > 1e-3 * (10 if name == "depth" else 1)).float().mean() < 1e-3, name


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device for gsplat")
def test_gsplat_backend_gradients_match_cpu_backend() -> None:
    width, height = 96, 80
    gs = random_scene(1000, seed=3, sh_degree=3, dtype=torch.float32, spread=0.3)
    cam = orbit_cameras(2, width, height, dtype=torch.float32)
    w = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(0))
    names = ("means", "quats", "log_scales", "opacity_logits", "sh")
    grads = {}
    for backend, device in (("cpu", "cpu"), ("gsplat", "cuda")):
        params = {k: getattr(gs, k).clone().to(device).requires_grad_(True) for k in names}
        out = render(GaussianSet(**params), cam, backend=backend, background=torch.tensor([0.1, 0.2, 0.3]))
        ((out.rgb * w.to(device)).sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
        grads[backend] = {k: v.grad.cpu() for k, v in params.items()}
    for k in names:
        ours, theirs = grads["cpu"][k], grads["gsplat"][k]
        assert (ours - theirs).norm() <= 1e-3 * theirs.norm(), k  # seen: ~1e-5 relative on an H100
