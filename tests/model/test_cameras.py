"""Plücker ray maps and their latent-resolution packing (CONVENTIONS 1, 5, 6).

Every expectation here is computed independently of factorportrait.cameras: by hand, with numpy,
or with a general matrix inverse.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factorportrait.cameras import (
    identity_rays,
    latent_frame_count,
    plucker_rays,
    rays_to_latent,
    relative_to_first,
    viewmat_to_c2w,
)


def _K(fx: float, fy: float, cx: float, cy: float, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def _c2w(rot: np.ndarray, t: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = t
    return torch.tensor(m, dtype=dtype)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_c2w(rng: np.random.Generator, n: int, scale: float = 0.4, dtype=torch.float64) -> torch.Tensor:
    return torch.stack([_c2w(_random_rotation(rng), rng.normal(size=3) * scale, dtype) for _ in range(n)])


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    # numpy rather than torch.testing.assert_close: the latter's first call imports sympy & co. (~4 s).
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=atol)


def _hand_dir(i: int, j: int, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Camera-frame direction of pixel row i, column j: its centre is (u, v) = (j + 0.5, i + 0.5)."""
    d = np.array([((j + 0.5) - cx) / fx, ((i + 0.5) - cy) / fy, 1.0])
    return d / np.linalg.norm(d)


# --- identity camera -----------------------------------------------------------------------------


def test_identity_camera_moment_zero_and_hand_directions():
    H, W = 6, 10
    fx, fy, cx, cy = 40.0, 55.0, 4.3, 2.7
    rays = plucker_rays(_K(fx, fy, cx, cy)[None], torch.eye(4, dtype=torch.float64)[None], H, W)
    assert rays.shape == (1, 6, H, W)
    assert rays.dtype == torch.float64
    assert torch.equal(rays[0, :3], torch.zeros(3, H, W, dtype=torch.float64))
    for i, j in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1), (2, 5), (3, 1)]:
        np.testing.assert_allclose(rays[0, 3:, i, j].numpy(), _hand_dir(i, j, fx, fy, cx, cy), rtol=0, atol=1e-12)
    # A hand-written number for one pixel: (0.5 - 4.3) / 40 = -0.095, (0.5 - 2.7) / 55 = -0.04.
    expected = np.array([-0.095, -0.04, 1.0]) / math.sqrt(0.095**2 + 0.04**2 + 1.0)
    np.testing.assert_allclose(rays[0, 3:, 0, 0].numpy(), expected, atol=1e-12)


def test_identity_camera_centre_pixel_looks_down_z():
    H, W = 9, 13  # odd: the middle pixel's centre is exactly (W/2, H/2)
    rays = identity_rays(_K(30.0, 30.0, W / 2, H / 2, torch.float32), H, W)
    assert rays.shape == (6, H, W) and rays.dtype == torch.float32
    np.testing.assert_allclose(rays[3:, H // 2, W // 2].numpy(), [0.0, 0.0, 1.0], atol=1e-7)
    assert torch.equal(rays[:3], torch.zeros(3, H, W))
    # Right of centre looks to +x, below centre to +y (OpenCV: y down).
    assert rays[3, H // 2, W - 1] > 0 and rays[4, H - 1, W // 2] > 0


def test_identity_rays_matches_plucker_rays_with_identity_c2w():
    K = _K(20.0, 25.0, 8.0, 6.0, torch.float32)
    expected = plucker_rays(K[None], torch.eye(4)[None], 12, 16)[0]
    assert torch.equal(identity_rays(K, 12, 16), expected)


# --- translation and rotation --------------------------------------------------------------------


def test_pure_translation_keeps_directions_and_moment_is_t_cross_d():
    H, W = 5, 7
    fx, fy, cx, cy = 12.0, 14.0, 3.5, 2.5
    t = np.array([0.3, -0.2, 1.5])
    K = _K(fx, fy, cx, cy)
    ident = plucker_rays(K[None], torch.eye(4, dtype=torch.float64)[None], H, W)[0]
    moved = plucker_rays(K[None], _c2w(np.eye(3), t)[None], H, W)[0]
    assert torch.equal(moved[3:], ident[3:])
    d = moved[3:].permute(1, 2, 0).numpy()  # [H, W, 3]
    np.testing.assert_allclose(moved[:3].permute(1, 2, 0).numpy(), np.cross(t, d), atol=1e-12)
    # One pixel fully by hand.
    d_hand = _hand_dir(1, 4, fx, fy, cx, cy)
    np.testing.assert_allclose(moved[:3, 1, 4].numpy(), np.cross(t, d_hand), atol=1e-12)


def test_yaw_90_degrees_turns_the_central_ray_to_plus_x():
    # Rotation about +Y by +90 deg: R = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]] with cos = 0, sin = 1,
    # so R @ (0, 0, 1) = (sin, 0, cos) = (1, 0, 0).
    rot = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    np.testing.assert_allclose(rot @ np.array([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0])
    H, W = 7, 11
    fx, fy, cx, cy = 9.0, 9.0, W / 2, H / 2
    o = np.array([-0.35, 0.05, 0.1])
    rays = plucker_rays(_K(fx, fy, cx, cy)[None], _c2w(rot, o)[None], H, W)[0]
    np.testing.assert_allclose(rays[3:, H // 2, W // 2].numpy(), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rays[:3, H // 2, W // 2].numpy(), np.cross(o, [1.0, 0.0, 0.0]), atol=1e-12)
    # Another pixel: camera-frame direction rotated by R, moment o x d.
    d = rot @ _hand_dir(0, W - 1, fx, fy, cx, cy)
    np.testing.assert_allclose(rays[3:, 0, W - 1].numpy(), d, atol=1e-12)
    np.testing.assert_allclose(rays[:3, 0, W - 1].numpy(), np.cross(o, d), atol=1e-12)


# --- relative cameras ----------------------------------------------------------------------------


def test_relative_to_first_is_invariant_to_a_global_rigid_transform():
    rng = np.random.default_rng(7)
    c2w = _random_c2w(rng, 5, dtype=torch.float32)
    G = _c2w(_random_rotation(rng), rng.normal(size=3), torch.float32)
    moved = G[None] @ c2w
    rel = relative_to_first(c2w)
    rel_moved = relative_to_first(moved)
    assert torch.equal(rel[0], torch.eye(4)) and torch.equal(rel_moved[0], torch.eye(4))
    _assert_close(rel_moved, rel, atol=1e-5)
    # Independent expectation with a general inverse in float64.
    c64 = c2w.double()
    expected = torch.linalg.inv(c64[0])[None] @ c64
    _assert_close(rel.double(), expected, atol=1e-6)

    K = _K(30.0, 32.0, 16.0, 12.0, torch.float32).expand(5, 3, 3)
    _assert_close(plucker_rays(K, rel_moved, 24, 32), plucker_rays(K, rel, 24, 32), atol=1e-5)


def test_viewmat_to_c2w_matches_general_inverse():
    rng = np.random.default_rng(3)
    viewmat = _random_c2w(rng, 4)
    c2w = viewmat_to_c2w(viewmat)
    _assert_close(c2w, torch.linalg.inv(viewmat), atol=1e-12)
    _assert_close(c2w @ viewmat, torch.eye(4, dtype=torch.float64).expand(4, 4, 4), atol=1e-12)


# --- Plücker properties --------------------------------------------------------------------------


def test_plucker_properties_and_ray_through_pixel():
    rng = np.random.default_rng(11)
    H, W = 8, 12
    c2w = _random_c2w(rng, 3)
    K = torch.stack([_K(10.0 + f, 11.0 + 2 * f, 5.5 + 0.3 * f, 4.2 - 0.1 * f) for f in range(3)])
    rays = plucker_rays(K, c2w, H, W)
    m, d = rays[:, :3], rays[:, 3:]
    _assert_close(d.norm(dim=1), torch.ones(3, H, W, dtype=torch.float64), atol=1e-12)
    assert (m * d).sum(dim=1).abs().max() < 1e-12
    o = c2w[:, :3, 3][:, :, None, None].expand_as(d)
    expected_m = np.cross(o.permute(0, 2, 3, 1).numpy(), d.permute(0, 2, 3, 1).numpy())  # [F, H, W, 3]
    np.testing.assert_allclose(m.permute(0, 2, 3, 1).numpy(), expected_m, rtol=0, atol=1e-12)
    # Any point p = o + s d of the ray has p x d = m, and it projects back onto the pixel's centre.
    viewmat = torch.linalg.inv(c2w)
    for f, i, j in [(0, 0, 0), (1, 3, 7), (2, H - 1, W - 1)]:
        p = c2w[f, :3, 3] + 2.5 * d[f, :, i, j]
        np.testing.assert_allclose(np.cross(p.numpy(), d[f, :, i, j].numpy()), m[f, :, i, j].numpy(), atol=1e-12)
        pc = viewmat[f, :3, :3] @ p + viewmat[f, :3, 3]
        u = K[f, 0, 0] * pc[0] / pc[2] + K[f, 0, 2]
        v = K[f, 1, 1] * pc[1] / pc[2] + K[f, 1, 2]
        assert pc[2] > 0
        assert abs(float(u) - (j + 0.5)) < 1e-9 and abs(float(v) - (i + 0.5)) < 1e-9


def test_dtype_follows_inputs():
    K = _K(10.0, 10.0, 4.0, 4.0, torch.float32)
    assert plucker_rays(K[None], torch.eye(4)[None], 8, 8).dtype == torch.float32
    assert plucker_rays(K[None].double(), torch.eye(4, dtype=torch.float64)[None], 8, 8).dtype == torch.float64


# --- latent packing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "latent"), [(13, 4), (25, 7), (49, 13), (81, 21), (1, 1)])
def test_latent_frame_count(frames, latent):
    assert latent_frame_count(frames) == latent


@pytest.mark.parametrize(("frames", "latent"), [(13, 4), (25, 7), (49, 13), (81, 21)])
def test_rays_to_latent_shapes(frames, latent):
    rays = torch.zeros(frames, 6, 32, 48)
    assert rays_to_latent(rays).shape == (latent, 1536, 4, 6)
    assert rays_to_latent(rays[None].expand(2, -1, -1, -1, -1)).shape == (2, latent, 1536, 4, 6)


def _encoded_rays(frames: int, H: int, W: int) -> torch.Tensor:
    """rays[f, c, y, x] = f * 1e6 + c * 1e4 + y * 100 + x, exact in float64."""
    f = torch.arange(frames, dtype=torch.float64)[:, None, None, None]
    c = torch.arange(6, dtype=torch.float64)[None, :, None, None]
    y = torch.arange(H, dtype=torch.float64)[None, None, :, None]
    x = torch.arange(W, dtype=torch.float64)[None, None, None, :]
    return f * 1e6 + c * 1e4 + y * 100 + x


def test_rays_to_latent_exact_placement():
    frames, H, W = 13, 32, 48
    out = rays_to_latent(_encoded_rays(frames, H, W)).numpy()  # [4, 1536, 4, 6]

    def val(f, c, y, x):
        return f * 1e6 + c * 1e4 + y * 100 + x

    # Spot checks, channel = k * 384 + c * 64 + dy * 8 + dx.
    for k in range(4):  # latent frame 0 is frame 0 four times
        assert out[0, k * 384 + 2 * 64 + 3 * 8 + 5, 1, 2] == val(0, 2, 8 + 3, 16 + 5)
    assert out[2, 0 * 384 + 4 * 64 + 0 * 8 + 7, 3, 5] == val(5, 4, 24, 47)  # frame 5: latent 2, position 0
    assert out[1, 3 * 384 + 0, 0, 0] == val(4, 0, 0, 0)  # frame 4: latent 1, position 3
    assert out[3, 3 * 384 + 5 * 64 + 7 * 8 + 7, 3, 5] == val(12, 5, 31, 47)  # last frame, last entry

    # Every entry: decode the value and compare with the index formula.
    lat, ch, by, bx = np.meshgrid(*(np.arange(n) for n in out.shape), indexing="ij")
    k, rem = np.divmod(ch, 384)
    c, rem = np.divmod(rem, 64)
    dy, dx = np.divmod(rem, 8)
    src = np.where(lat == 0, 0, 1 + 4 * (lat - 1) + k)
    np.testing.assert_array_equal(out, val(src, c, by * 8 + dy, bx * 8 + dx))


def test_rays_to_latent_batch_matches_per_sample():
    a, b = _encoded_rays(13, 16, 8), -_encoded_rays(13, 16, 8)
    out = rays_to_latent(torch.stack([a, b]))
    assert torch.equal(out[0], rays_to_latent(a)) and torch.equal(out[1], rays_to_latent(b))


# --- errors --------------------------------------------------------------------------------------


def test_wrong_frame_counts_raise():
    for bad in (12, 0, 14):
        with pytest.raises(ValueError, match=rf"1 \+ 4k frames \(e\.g\. 13, 25, 49, 81\); got {bad}"):
            latent_frame_count(bad)
    with pytest.raises(ValueError, match="1 \\+ 4k frames.*got 12"):
        rays_to_latent(torch.zeros(12, 6, 32, 48))


def test_size_not_divisible_by_8_raises():
    with pytest.raises(ValueError, match="divisible by 8.*H=30"):
        rays_to_latent(torch.zeros(13, 6, 30, 48))
    with pytest.raises(ValueError, match="divisible by 8.*W=44"):
        rays_to_latent(torch.zeros(13, 6, 32, 44))


def test_nan_camera_names_frame_and_input():
    K = _K(10.0, 10.0, 4.0, 4.0).expand(4, 3, 3).clone()
    c2w = torch.eye(4, dtype=torch.float64).expand(4, 4, 4).clone()
    bad_K = K.clone()
    bad_K[2, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="K of frame 2 is not finite"):
        plucker_rays(bad_K, c2w, 8, 8)
    bad_c2w = c2w.clone()
    bad_c2w[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="c2w of frame 1 is not finite"):
        plucker_rays(K, bad_c2w, 8, 8)
    with pytest.raises(ValueError, match="c2w of frame 1 is not finite"):
        relative_to_first(bad_c2w)


def test_other_invalid_cameras_raise():
    K = _K(10.0, 10.0, 4.0, 4.0)[None]
    eye = torch.eye(4, dtype=torch.float64)[None]
    with pytest.raises(ValueError, match="K of frame 0 needs positive focal lengths"):
        plucker_rays(_K(-10.0, 10.0, 4.0, 4.0)[None], eye, 8, 8)
    with pytest.raises(ValueError, match="height and width must be positive"):
        plucker_rays(K, eye, 0, 8)
    with pytest.raises(ValueError, match=r"c2w must be \[F, 4, 4\]"):
        plucker_rays(K, torch.eye(3, dtype=torch.float64)[None], 8, 8)
    with pytest.raises(ValueError, match="K must be"):
        plucker_rays(K.expand(2, 3, 3), eye, 8, 8)
    scaled = eye.clone()
    scaled[0, :3, :3] *= 2.0
    with pytest.raises(ValueError, match="c2w of frame 0 is not a rigid transform"):
        plucker_rays(K, scaled, 8, 8)


# --- reference-relative cameras (CONVENTIONS 6: c2w_i' = w2c_ref c2w_i) -------------------------------------


def _hand_plucker(K: np.ndarray, rot: np.ndarray, t: np.ndarray, H: int, W: int) -> np.ndarray:  # [6, H, W]
    """Plücker map [t x d, d] of one camera, pixel by pixel in numpy."""
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_c = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1)
    d = (d_c / np.linalg.norm(d_c, axis=-1, keepdims=True)) @ rot.T  # [H, W, 3]
    return np.concatenate([np.cross(t, d), d], -1).transpose(2, 0, 1)


def test_static_novel_view_rays_are_the_rotated_camera_relative_to_the_reference():
    from factorportrait.conditions import camera_features
    from factorportrait.inference.camera_paths import DEFAULT_DISTANCE, make_camera_path, reference_c2w

    H = W = 16
    K = np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
    c2w, _ = make_camera_path("static", 5, view_yaw_deg=35.0)
    features, reference_rays = camera_features(
        torch.from_numpy(K).expand(5, 3, 3),
        torch.from_numpy(c2w),
        H,
        W,
        reference_c2w=torch.from_numpy(reference_c2w()),
        reference_K=torch.from_numpy(K),
    )
    # By hand: the reference camera looks at the head centre from DEFAULT_DISTANCE, which sits at (0, 0, d) in its
    # OpenCV frame; the world yaw of +35 deg about +Y is, in that frame (y down, z forward), a rotation about the
    # camera's y axis by -35 deg around the head centre: R = Ry(-35), t = p - R p with p = (0, 0, d).
    a, d = math.radians(35.0), DEFAULT_DISTANCE
    rot = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    t = np.array([0, 0, d]) - rot @ np.array([0, 0, d])
    assert t[0] > 0  # moved toward +x (the subject's left is the camera's right for the frontal camera)
    hand = torch.from_numpy(np.repeat(_hand_plucker(K, rot, t, H, W)[None], 5, 0))  # [5, 6, H, W]
    expected = rays_to_latent(hand).permute(1, 0, 2, 3)
    _assert_close(features, expected, atol=1e-9)
    # The reference frame keeps the identity camera's rays: a static novel view differs from the frontal one.
    _assert_close(
        reference_rays,
        rays_to_latent(torch.from_numpy(_hand_plucker(K, np.eye(3), np.zeros(3), H, W))[None]).permute(1, 0, 2, 3),
        atol=1e-9,
    )
    assert (features[:, :1] - reference_rays).abs().max() > 0.1


def test_frontal_static_path_gives_identity_rays_and_maps_ignore_a_global_rigid_transform():
    from factorportrait.conditions import camera_features
    from factorportrait.inference.camera_paths import make_camera_path, reference_c2w

    H = W = 16
    K = torch.tensor([[18.0, 0, 8.0], [0, 19.0, 7.5], [0, 0, 1]], dtype=torch.float64)
    frontal, _ = make_camera_path("static", 5)
    ref = torch.from_numpy(reference_c2w())
    features, reference_rays = camera_features(K, torch.from_numpy(frontal), H, W, reference_c2w=ref, reference_K=K)
    identity = torch.from_numpy(_hand_plucker(K.numpy(), np.eye(3), np.zeros(3), H, W))
    _assert_close(features, rays_to_latent(identity[None].expand(5, -1, -1, -1)).permute(1, 0, 2, 3), atol=1e-12)
    _assert_close(reference_rays, rays_to_latent(identity[None]).permute(1, 0, 2, 3), atol=1e-12)

    # One rigid transform G on every camera, the reference included: nothing changes.
    rng = np.random.default_rng(5)
    spin, _ = make_camera_path("spin", 9, view_yaw_deg=-20.0)
    G = _c2w(_random_rotation(rng), rng.normal(size=3))
    before = camera_features(K, torch.from_numpy(spin), H, W, reference_c2w=ref, reference_K=K)
    after = camera_features(K, G[None] @ torch.from_numpy(spin), H, W, reference_c2w=G @ ref, reference_K=K)
    for x, y in zip(before, after, strict=True):
        _assert_close(y, x, atol=1e-9)
    # ... while moving only the reference does change them.
    moved = camera_features(K, torch.from_numpy(spin), H, W, reference_c2w=G @ ref, reference_K=K)
    assert (moved[0] - before[0]).abs().max() > 1e-2


def test_relative_to_reference_matches_a_general_inverse():
    from factorportrait.cameras import relative_to_reference

    rng = np.random.default_rng(2)
    c2w = _random_c2w(rng, 4)
    ref = _random_c2w(rng, 1)[0]
    _assert_close(relative_to_reference(c2w, ref), torch.linalg.inv(ref)[None] @ c2w, atol=1e-12)
    assert torch.equal(relative_to_reference(c2w, c2w[2])[2], torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="reference_c2w of frame 0 is not a rigid"):
        relative_to_reference(c2w, 2 * ref)
