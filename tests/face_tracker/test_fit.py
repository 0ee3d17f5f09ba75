"""Rigid + blendshape fit of the face tracker on a demo avatar with known truth (no landmarker: the landmarks are
the avatar's own corresponding guide-mesh vertices, posed by `Avatar.pose_mesh` and projected, plus noise).

Set-up: demo-003, 48 frames of its capture track (frames 0-47: blinks, jaw, brows and lips all move), head yaw
+-25 deg, pitch +-15 deg, roll +-5 deg and translations of +-4 mm per axis, the tracking camera (256 px, 53.1 deg,
32 cm), Gaussian pixel noise sigma 0.5 px on every landmark.

Thresholds and why they mean something (measured: rotation max 1.75 deg / mean 0.56 deg, translation max 3.0 mm /
mean 1.2 mm, Pearson r 0.93-0.99 on the dominant blendshapes):
- head rotation: max error < 3 deg and mean < 1 deg, where predicting the neutral pose errs by 20 deg on average;
- translation: max < 5 mm and mean < 2 mm; the true offsets are a few mm, but the fit starts from the camera alone
  (32 cm away), so depth comes from the face's image size: 1 mm is 0.3% of the distance;
- rig weights: Pearson r over frames > 0.85 for jawOpen, eyeBlinkLeft/Right, browInnerUp, mouthFunnel and
  mouthPucker (predicting zero or the mean gives no correlation at all), and the mean absolute error of these
  weights is under half that of predicting each weight's mean over the clip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar_render import load_avatar
from avatar_render.geometry import axis_angle_to_rotmat
from face_tracker.correspondence import correspondence
from face_tracker.fit import TrackResult, fit_landmarks, tracking_camera
from face_tracker.landmarker import NUM_MP_POINTS

torch.set_num_threads(1)

T = 48
SIZE = 256
NOISE_PX = 0.5
DOMINANT = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp", "mouthFunnel", "mouthPucker")


def _truth_poses(frames: int) -> torch.Tensor:
    s = torch.linspace(0, 1, frames)
    rot = torch.deg2rad(
        torch.stack(
            [15 * torch.sin(4 * math.pi * s + 1), 25 * torch.sin(2 * math.pi * s), 5 * torch.sin(2 * math.pi * s + 2)],
            -1,
        )
    )
    trans = 0.004 * torch.stack([torch.sin(3 * s), torch.cos(5 * s), torch.sin(7 * s)], -1)
    return torch.cat([rot, trans], -1)


def _landmarks(avatar, codes: torch.Tensor, poses: torch.Tensor, K: torch.Tensor, V: torch.Tensor, seed: int = 0):
    """MediaPipe-layout landmarks [T, 478, 2] (NaN off the correspondence) of the posed avatar, with noise."""
    mp, vid = correspondence(avatar.neutral_vertices.shape[0])
    verts = avatar.pose_mesh(codes, poses)[:, vid]
    cam = verts @ V[:3, :3].T + V[:3, 3]
    uv = cam[..., :2] / cam[..., 2:] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    uv = uv + NOISE_PX * torch.randn(uv.shape, generator=torch.Generator().manual_seed(seed))
    out = torch.full((codes.shape[0], NUM_MP_POINTS, 2), torch.nan)
    out[:, mp] = uv
    return out


def _rotation_error_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rel = axis_angle_to_rotmat(a[:, :3]).transpose(1, 2) @ axis_angle_to_rotmat(b[:, :3])
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


@pytest.fixture(scope="module")
def scene():
    avatar = load_avatar("demo-003")
    codes, _ = avatar.capture_segment(0, T)
    poses = _truth_poses(T)
    K, V = tracking_camera(SIZE, SIZE)
    lms = _landmarks(avatar, codes, poses, K, V)
    result = fit_landmarks(avatar, lms, K, V)
    return avatar, codes, poses, K, V, lms, result


def test_head_pose_recovered(scene) -> None:
    _, _, poses, _, _, _, res = scene
    assert res.found.all()
    rot_err = _rotation_error_deg(poses, res.head_pose)
    trans_err_mm = 1000 * (res.head_pose[:, 3:] - poses[:, 3:]).norm(dim=-1)
    neutral_err = _rotation_error_deg(poses, torch.zeros_like(poses))
    print(
        f"rotation error max {rot_err.max():.2f} mean {rot_err.mean():.2f} deg (neutral pose: mean "
        f"{neutral_err.mean():.1f}); translation error max {trans_err_mm.max():.2f} mean {trans_err_mm.mean():.2f} mm"
    )
    assert neutral_err.mean() > 10  # the clip really turns the head
    assert rot_err.max() < 3.0 and rot_err.mean() < 1.0
    assert trans_err_mm.max() < 5.0 and trans_err_mm.mean() < 2.0


def test_rig_weights_correlate(scene) -> None:
    avatar, codes, _, _, _, _, res = scene
    truth = avatar.rig_weights(codes)
    ids = [avatar.expression_labels.index(name) for name in DOMINANT]
    for name, e in zip(DOMINANT, ids, strict=True):
        r = float(np.corrcoef(truth[:, e].numpy(), res.rig_weights[:, e].numpy())[0, 1])
        print(f"{name}: r = {r:.3f}")
        assert r > 0.85, name
    fit_mae = (res.rig_weights[:, ids] - truth[:, ids]).abs().mean()
    mean_mae = (truth[:, ids] - truth[:, ids].mean(0)).abs().mean()
    print(f"dominant-weight MAE {fit_mae:.4f} vs clip-mean predictor {mean_mae:.4f}")
    assert fit_mae < 0.5 * mean_mae
    assert res.rig_weights.min() >= 0.0 and res.rig_weights.max() <= 1.0  # the rig's range


def test_outputs_in_code_space(scene) -> None:
    avatar, _, _, K, V, lms, res = scene
    assert isinstance(res, TrackResult)
    assert res.codes.shape == (T, avatar.expression_dim) and res.head_pose.shape == (T, 6)
    # codes map back to the fitted weights through the avatar's own rig (the orthonormal expression_map)
    torch.testing.assert_close(avatar.rig_weights(res.codes), res.rig_weights, atol=1e-5, rtol=0)
    # the fitted landmarks are the projections of the avatar posed with the fitted codes and pose
    mp, vid = correspondence(avatar.neutral_vertices.shape[0])
    verts = avatar.pose_mesh(res.codes, res.head_pose)[:, vid]
    cam = verts @ V[:3, :3].T + V[:3, 3]
    uv = cam[..., :2] / cam[..., 2:] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    torch.testing.assert_close(res.landmarks, uv, atol=1e-2, rtol=0)
    assert res.mp_indices.tolist() == mp
    # noise of 0.5 px per axis: the fit cannot be (much) closer than that, nor should it be far from it
    assert 0.4 < float(res.rms_px.mean()) < 1.0
    assert ((res.confidence > 0.5) & (res.confidence <= 1.0)).all()


def test_frames_without_face_are_marked(scene) -> None:
    avatar, codes, poses, K, V, lms, _ = scene
    lms = lms[:16].clone()
    lms[5] = torch.nan  # the landmarker found nothing
    found = torch.ones(16, dtype=torch.bool)
    found[9:11] = False  # the caller marks frames as not found
    res = fit_landmarks(avatar, lms, K, V, found=found)
    missing = torch.tensor([5, 9, 10])
    assert res.found.tolist() == [t not in missing.tolist() for t in range(16)]
    for value in (res.codes, res.rig_weights, res.head_pose, res.landmarks, res.rms_px):
        assert torch.isnan(value[missing]).all() and torch.isfinite(value[res.found]).all()
    assert (res.confidence[missing] == 0).all()
    assert _rotation_error_deg(poses[:16][res.found], res.head_pose[res.found]).max() < 3.0


def test_tracking_camera() -> None:
    K, V = tracking_camera(640, 480)
    assert K[0, 0] == pytest.approx(0.5 * 640 / math.tan(math.radians(53.1 / 2)), rel=1e-5)
    assert K[0, 2] == 320 and K[1, 2] == 240
    # the head centre sits on the optical axis, 32 cm ahead
    centre = V[:3, :3] @ torch.tensor([0.0, -0.03, 0.0]) + V[:3, 3]
    torch.testing.assert_close(centre, torch.tensor([0.0, 0.0, 0.32]), atol=1e-6, rtol=0)
    given = torch.tensor([[500.0, 0, 300], [0, 510.0, 250], [0, 0, 1]])
    assert torch.equal(tracking_camera(640, 480, K=given)[0], given)


def test_rigid_start_over_a_wide_range() -> None:
    """The linear start (weak perspective + POSIT) lands near the truth even for 45 deg yaw with 30 deg pitch
    (neutral face, 0.5 px noise; measured 1.6 deg, and 21 deg without the POSIT iterations), and
    Levenberg-Marquardt from it converges to the noise floor (measured 0.5 deg, 1.2 mm): start < 5 deg,
    fit < 1 deg and < 3 mm for translations of ~1 cm."""
    from face_tracker.rig import LandmarkRig
    from face_tracker.rigid import fit_rigid, initial_pose

    avatar = load_avatar("demo-003")
    frames = 24
    s = torch.linspace(0, 1, frames)
    poses = torch.zeros(frames, 6)
    poses[:, 1] = torch.deg2rad(45 * torch.sin(2 * math.pi * s))
    poses[:, 0] = torch.deg2rad(30 * torch.cos(2 * math.pi * s))
    poses[:, 3:] = 0.01 * torch.randn(frames, 3, generator=torch.Generator().manual_seed(1))
    K, V = tracking_camera(SIZE, SIZE)
    lms = _landmarks(avatar, torch.zeros(frames, avatar.expression_dim), poses, K, V, seed=2)
    rig = LandmarkRig(avatar)
    uv = lms[:, rig.mp_indices].double()
    mask = torch.ones(uv.shape[:2], dtype=torch.bool)
    scale = torch.full((frames,), 40.0, dtype=torch.float64)
    Kd, Vd = K.double(), V.double()
    start = initial_pose(rig, uv, mask, Kd, Vd)
    fitted = fit_rigid(rig, uv, mask, scale, Kd, Vd)
    start_err, fit_err = _rotation_error_deg(poses, start.float()), _rotation_error_deg(poses, fitted.float())
    trans_err_mm = 1000 * (fitted[:, 3:].float() - poses[:, 3:]).norm(dim=-1)
    print(f"start {start_err.max():.2f} deg, fitted {fit_err.max():.2f} deg, {trans_err_mm.max():.2f} mm")
    assert start_err.max() < 5.0
    assert fit_err.max() < 1.0 and trans_err_mm.max() < 3.0


def test_other_camera_and_bad_input(scene) -> None:
    """A camera off the face's axis (30 deg to the side, 36 cm, a given K): poses stay in the avatar's world frame."""
    from avatar_render import look_at_viewmat

    avatar, codes, poses, _, _, _, _ = scene
    K = torch.tensor([[300.0, 0.0, 130.0], [0.0, 300.0, 120.0], [0.0, 0.0, 1.0]])
    eye = torch.tensor([0.36 * math.sin(math.radians(30)), 0.0, 0.36 * math.cos(math.radians(30))])
    K, V = tracking_camera(SIZE, SIZE, K=K)[0], look_at_viewmat(eye, torch.tensor([0.0, -0.03, 0.0]))
    lms = _landmarks(avatar, codes[:12], poses[:12] * 0.5, K, V, seed=3)
    res = fit_landmarks(avatar, lms, K, V)
    assert _rotation_error_deg(poses[:12] * 0.5, res.head_pose).max() < 3.0
    assert (1000 * (res.head_pose[:, 3:] - 0.5 * poses[:12, 3:]).norm(dim=-1)).max() < 5.0
    with pytest.raises(ValueError, match="found"):
        fit_landmarks(avatar, lms, K, V, found=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="landmarks"):
        fit_landmarks(avatar, lms[:, :100], K, V)
