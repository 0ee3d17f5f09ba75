"""Camera trajectories (datagen.trajectories): spin and spiral against geometric expectations, over many seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avatar_render.camera import Camera
from datagen.trajectories import (
    SpinConfig,
    SpiralConfig,
    Trajectory,
    intrinsics,
    plot_trajectories,
    spin_trajectory,
    spiral_trajectory,
)

NUM_SEQ, NUM_FRAMES = 50, 100
# every other sequence round an off-origin head, to check head_centre is honoured rather than assumed zero
CENTRES = [np.zeros(3), np.array([0.01, -0.03, 0.02])]


def _centre(seed: int) -> np.ndarray:
    return CENTRES[seed % 2]


@pytest.fixture(scope="module")
def spins() -> list[Trajectory]:
    return [spin_trajectory(np.random.default_rng(s), NUM_FRAMES, SpinConfig(), _centre(s)) for s in range(NUM_SEQ)]


@pytest.fixture(scope="module")
def spirals() -> list[Trajectory]:
    cfg = SpiralConfig()
    return [spiral_trajectory(np.random.default_rng(s), NUM_FRAMES, cfg, _centre(s)) for s in range(NUM_SEQ)]


def _angles(traj: Trajectory, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent of Trajectory.yaw_pitch_distance: yaw = atan2(x, z), pitch = asin(y / r), r, about `centre`."""
    rel = traj.eyes - centre
    r = np.sqrt((rel**2).sum(-1))
    return np.degrees(np.arctan2(rel[:, 0], rel[:, 2])), np.degrees(np.arcsin(rel[:, 1] / r)), r


def _steps(eyes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacements [T-1, 3] and their lengths [T-1]."""
    d = np.diff(eyes, axis=0)
    return d, np.linalg.norm(d, axis=-1)


def _turn_deg(eyes: np.ndarray) -> np.ndarray:  # [T-2] angle between successive displacements
    d, n = _steps(eyes)
    cos = (d[1:] * d[:-1]).sum(-1) / (n[1:] * n[:-1])
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# ------------------------------------------------------------------------------------------------ spin
def test_spin_distance_and_elevation(spins):
    for s, traj in enumerate(spins):
        assert traj.eyes.shape == traj.targets.shape == (NUM_FRAMES, 3)
        _, pitch, r = _angles(traj, _centre(s))
        assert r.min() >= 0.25 - 1e-12 and r.max() <= 0.40 + 1e-12, (s, r.min(), r.max())
        assert np.abs(pitch).max() <= 5.0 + 1e-9, s
        a, b = traj.params["oval_semi_axes_m"]  # the oval: distances span its two semi-axes
        assert min(a, b) - 1e-9 <= r.min() and r.max() <= max(a, b) + 1e-9


def test_spin_lookat_jitter_bounded(spins):
    for s, traj in enumerate(spins):
        off = traj.targets - _centre(s)
        assert np.abs(off).max() <= 0.02 + 1e-12, s


def test_spin_head_centre_projects_near_image_centre(spins):
    width = height = 256
    fov = 53.1
    # the look-at point lies within sqrt(3) j of the head centre, the camera >= d_min from it: seen from the
    # camera, the head centre is at most asin(sqrt(3) j / d_min) off the optical axis
    max_angle = math.asin(math.sqrt(3.0) * 0.02 / 0.25)
    fx = 0.5 * width / math.tan(math.radians(fov) / 2.0)
    bound = fx * math.tan(max_angle) + 0.05  # px; + float32 rounding in Camera
    assert bound < 0.15 * width  # i.e. the head stays close to the middle of the frame
    for s, traj in enumerate(spins):
        cam = Camera.look_at(torch.from_numpy(traj.eyes), torch.from_numpy(traj.targets), width, height, fov)
        uv, z = cam.project(torch.tensor(_centre(s), dtype=torch.float32)[None])
        assert bool((z > 0).all())
        offset = (uv[:, 0] - torch.tensor([width / 2.0, height / 2.0])).norm(dim=-1)
        assert float(offset.max()) < bound, (s, float(offset.max()), bound)


@pytest.mark.parametrize("sweep", [360.0, 180.0, 90.0])
def test_spin_sweep_and_steady_pace(sweep):
    cfg = SpinConfig(sweep_deg=sweep)
    for seed in range(NUM_SEQ):
        traj = spin_trajectory(np.random.default_rng(seed), NUM_FRAMES, cfg)
        yaw = np.degrees(np.unwrap(np.radians(_angles(traj, np.zeros(3))[0])))
        direction = traj.params["direction"]
        assert direction in (1, -1)
        assert abs((yaw[-1] - yaw[0]) * direction - sweep) < 2.0, (seed, yaw[-1] - yaw[0])
        assert np.all(np.diff(yaw) * direction > 0), seed  # always going the same way round
        _, n = _steps(traj.eyes)
        assert n.max() / np.median(n) < 1.5, seed
        assert n.max() / n.min() < 1.05, seed  # arc-length pacing: stricter than the contract above


def test_spin_start_angles_and_directions_vary(spins):
    starts = [t.params["start_yaw_deg"] for t in spins]
    assert np.ptp(starts) > 180.0
    assert {t.params["direction"] for t in spins} == {1, -1}


# ------------------------------------------------------------------------------------------------ spiral
def test_spiral_within_ranges(spirals):
    for s, traj in enumerate(spirals):
        yaw, pitch, r = _angles(traj, _centre(s))
        assert yaw.min() >= -60.0 - 1e-9 and yaw.max() <= 60.0 + 1e-9, s
        assert pitch.min() >= -20.0 - 1e-9 and pitch.max() <= 20.0 + 1e-9, s
        assert r.min() >= 0.25 - 1e-12 and r.max() <= 0.40 + 1e-12, s
        assert np.abs(traj.targets - _centre(s)).max() <= 0.02 + 1e-12, s


def test_spiral_seeds(spirals):
    for s, traj in enumerate(spirals):
        seeds = np.array(traj.params["seeds_yaw_pitch_distance"])  # [4, 3]
        points = np.array(traj.params["seed_points_m"])  # [4, 3]
        assert seeds.shape == (4, 3)
        y, p, d = np.radians(seeds[:, 0]), np.radians(seeds[:, 1]), seeds[:, 2]
        expected = _centre(s) + np.stack([d * np.cos(p) * np.sin(y), d * np.sin(p), d * np.cos(p) * np.cos(y)], -1)
        np.testing.assert_allclose(points, expected, atol=1e-12)
        gaps = np.diff(seeds[:, 0])
        assert np.all(gaps > 0) or np.all(gaps < 0), s  # visited in yaw order
        assert np.abs(gaps).min() >= 10.0 - 1e-9, s  # SpiralConfig.min_yaw_separation_deg
        _, n = _steps(traj.eyes)
        for point in points:  # the path passes through every seed
            assert np.linalg.norm(traj.eyes - point, axis=-1).min() < n.min(), s
        np.testing.assert_allclose(traj.eyes[0], points[0], atol=1e-12)
        np.testing.assert_allclose(traj.eyes[-1], points[-1], atol=1e-12)


def test_spiral_smooth_and_evenly_paced(spirals):
    for s, traj in enumerate(spirals):
        _, n = _steps(traj.eyes)
        assert n.max() / n.min() < 1.2, s
        assert _turn_deg(traj.eyes).max() < 30.0, s  # no cusps, no sharp corners
        yaw = _angles(traj, _centre(s))[0]
        assert np.all(np.diff(yaw) * traj.params["direction"] > 0), s  # never stops or turns back


def test_spiral_directions_vary(spirals):
    assert {t.params["direction"] for t in spirals} == {1, -1}


def test_spiral_other_config():
    cfg = SpiralConfig(yaw_range_deg=(-90.0, 30.0), pitch_range_deg=(0.0, 10.0), distance_m=(0.3, 0.3), num_seeds=6)
    for seed in range(10):
        traj = spiral_trajectory(np.random.default_rng(seed), 64, cfg)
        yaw, pitch, r = _angles(traj, np.zeros(3))
        assert yaw.min() >= -90 - 1e-9 and yaw.max() <= 30 + 1e-9
        assert pitch.min() >= -1e-9 and pitch.max() <= 10 + 1e-9
        np.testing.assert_allclose(r, 0.3, atol=1e-12)
        assert len(traj.params["seeds_yaw_pitch_distance"]) == 6


# ------------------------------------------------------------------------------------------------ shared
@pytest.mark.parametrize("make", [spin_trajectory, spiral_trajectory])
def test_deterministic(make):
    a = make(np.random.default_rng(0), NUM_FRAMES)
    b = make(np.random.default_rng(0), NUM_FRAMES)
    c = make(np.random.default_rng(1), NUM_FRAMES)
    np.testing.assert_array_equal(a.eyes, b.eyes)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert a.params == b.params
    assert not np.allclose(a.eyes, c.eyes)
    assert not np.allclose(a.targets, c.targets)
    json.dumps(a.params)  # plain JSON


@pytest.mark.parametrize("make", [spin_trajectory, spiral_trajectory])
@pytest.mark.parametrize("frames", [1, 2, 13])
def test_short_sequences(make, frames):
    traj = make(np.random.default_rng(3), frames)
    assert traj.eyes.shape == (frames, 3) and len(traj) == frames
    assert np.isfinite(traj.viewmats()).all()


@pytest.mark.parametrize("make", [spin_trajectory, spiral_trajectory])
def test_viewmats_rigid_and_look_at(make):
    for seed in range(10):
        traj = make(np.random.default_rng(seed), 40)
        vm = traj.viewmats()
        assert vm.shape == (40, 4, 4) and vm.dtype == np.float64
        rot = vm[:, :3, :3]
        np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
        np.testing.assert_allclose(vm[:, 3], np.broadcast_to([0, 0, 0, 1.0], (40, 4)), atol=0)
        forward = traj.targets - traj.eyes
        forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
        np.testing.assert_allclose(rot[:, 2], forward, atol=1e-12)  # camera +z looks at the target
        # the eye maps to the camera origin, the target onto the +z axis
        np.testing.assert_allclose(np.einsum("tij,tj->ti", rot, traj.eyes) + vm[:, :3, 3], 0.0, atol=1e-12)
        tgt_cam = np.einsum("tij,tj->ti", rot, traj.targets) + vm[:, :3, 3]
        np.testing.assert_allclose(tgt_cam[:, :2], 0.0, atol=1e-12)
        assert (rot[:, 1, 1] < 0).all()  # camera y (down) points down the world: images are upright
        np.testing.assert_allclose(traj.c2w() @ vm, np.broadcast_to(np.eye(4), vm.shape), atol=1e-12)


def test_yaw_pitch_distance():
    yaw, pitch, dist = np.radians([30.0, -120.0]), np.radians([10.0, -4.0]), np.array([0.3, 0.35])
    centre = np.array([0.1, 0.2, -0.1])
    eyes = centre + np.stack(
        [dist * np.cos(pitch) * np.sin(yaw), dist * np.sin(pitch), dist * np.cos(pitch) * np.cos(yaw)], -1
    )
    traj = Trajectory(kind="spin", eyes=eyes, targets=np.broadcast_to(centre, (2, 3)), head_centre=centre)
    np.testing.assert_allclose(traj.yaw_pitch_distance(), [[30.0, 10.0, 0.3], [-120.0, -4.0, 0.35]], atol=1e-12)
    # yaw +90: the camera is on the subject's left (+X)
    side = Trajectory(kind="spin", eyes=[[0.3, 0.0, 0.0]], targets=[[0.0, 0.0, 0.0]])
    np.testing.assert_allclose(side.yaw_pitch_distance(), [[90.0, 0.0, 0.3]], atol=1e-12)


def test_intrinsics():
    k = intrinsics(1024, 768, 53.1)
    fx = 512.0 / math.tan(math.radians(53.1) / 2.0)
    np.testing.assert_allclose(k, [[fx, 0, 512.0], [0, fx, 384.0], [0, 0, 1]], rtol=1e-12)
    assert abs(k[0, 0] - 1027) < 5  # CONVENTIONS 1: fx ~ 1027 px at 1024 px and 53.1 deg


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (SpinConfig, {"distance_m": (0.4, 0.25)}, "distance_m"),
        (SpinConfig, {"distance_m": (0.0, 0.3)}, "distance_m"),
        (SpinConfig, {"distance_m": (0.3,)}, "distance_m"),
        (SpinConfig, {"elevation_jitter_deg": -1.0}, "elevation_jitter_deg"),
        (SpinConfig, {"elevation_jitter_deg": 90.0}, "elevation_jitter_deg"),
        (SpinConfig, {"lookat_jitter_m": -0.01}, "lookat_jitter_m"),
        (SpinConfig, {"lookat_jitter_m": 0.2}, "lookat_jitter_m"),
        (SpinConfig, {"sweep_deg": 0.0}, "sweep_deg"),
        (SpinConfig, {"sweep_deg": float("nan")}, "sweep_deg"),
        (SpiralConfig, {"yaw_range_deg": (60.0, -60.0)}, "yaw_range_deg"),
        (SpiralConfig, {"yaw_range_deg": (10.0, 10.0)}, "yaw_range_deg"),
        (SpiralConfig, {"yaw_range_deg": (-200.0, 0.0)}, "yaw_range_deg"),
        (SpiralConfig, {"pitch_range_deg": (20.0, -20.0)}, "pitch_range_deg"),
        (SpiralConfig, {"pitch_range_deg": (-90.0, 0.0)}, "pitch_range_deg"),
        (SpiralConfig, {"distance_m": (-0.1, 0.3)}, "distance_m"),
        (SpiralConfig, {"num_seeds": 1}, "num_seeds"),
        (SpiralConfig, {"num_seeds": 2.5}, "num_seeds"),
        (SpiralConfig, {"lookat_jitter_m": -1.0}, "lookat_jitter_m"),
        (SpiralConfig, {"min_yaw_separation_deg": 0.0}, "min_yaw_separation_deg"),
        (SpiralConfig, {"min_yaw_separation_deg": 50.0}, "min_yaw_separation_deg"),
        (SpiralConfig, {"max_steepness": 0.0}, "max_steepness"),
    ],
)
def test_bad_configs(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_configs_accept_lists():
    # TOML gives lists; the configs keep tuples
    assert SpiralConfig(yaw_range_deg=[-30, 30]).yaw_range_deg == (-30.0, 30.0)
    assert SpinConfig(distance_m=[0.3, 0.35]).distance_m == (0.3, 0.35)


@pytest.mark.parametrize("frames", [0, -3])
def test_bad_frame_count(frames):
    with pytest.raises(ValueError, match="num_frames"):
        spin_trajectory(np.random.default_rng(0), frames)


def test_plot_trajectories(tmp_path, spins, spirals):
    path = tmp_path / "sub" / "paths.png"
    plot_trajectories([spins[0], spirals[0], spirals[1]], path, title="test", figsize=(4.0, 2.0), dpi=50)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["paths.png"]  # no temp file left behind
