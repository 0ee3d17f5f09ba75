"""The PhoneCapture / StudioCapture stand-ins: fixed cameras, a dynamic face from the capture track."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from datagen.cli import CONFIG_DIR, _build_parser, _load_render_config
from datagen.config import ConfigError, RenderConfig, apply_overrides, load_config
from datagen.manifest import read_rows, validate_dataset
from datagen.plan import plan_sequence
from datagen.runner import run

TINY = {"sequences": 1, "frames": 3, "resolution": 32, "workers": 0, "backend": "cpu"}


def _camera_centres(viewmats: np.ndarray) -> np.ndarray:  # [T, 4, 4] -> [T, 3]
    R, t = viewmats[:, :3, :3].astype(np.float64), viewmats[:, :3, 3].astype(np.float64)
    return -np.einsum("tji,tj->ti", R, t)  # -R^T t


def test_phone_plan_is_one_fixed_frontal_camera(demo_avatar):
    config = RenderConfig.for_mode("phonecapture", frames=20)
    plans = [plan_sequence(config, demo_avatar, i) for i in range(3)]
    centre = np.array(config.head_centre_m)
    for plan in plans:
        vm = plan.viewmats()
        assert np.abs(vm - vm[0]).max() == 0  # fixed over time
        eye = _camera_centres(vm)[0] - centre
        assert abs(np.linalg.norm(eye) - 0.32) <= 0.02 + 0.01 * math.sqrt(3) + 1e-9
        assert eye[2] > 0.28 and abs(eye[0]) <= 0.01 + 1e-9  # in front of the face, on its axis
        forward = vm[0, 2, :3]  # camera +z in world coordinates
        assert forward[2] < -0.99  # looks at the face (down -Z)
        assert (plan.dataset, plan.manifest_mode, plan.trajectory.kind) == ("PhoneCapture", "capture", "static")
        assert plan.camera_id == "phone-standin"
        # expression and pose: a contiguous segment of the capture track
        start = int(plan.capture_frames[0])
        np.testing.assert_array_equal(plan.capture_frames, np.arange(start, start + 20))
        np.testing.assert_array_equal(plan.codes, demo_avatar.capture_codes[start : start + 20].numpy())
        assert np.ptp(plan.poses, axis=0).max() > 0  # the head moves
    # sequences differ in jitter and segment; a plan is a pure function of its key
    assert len({float(p.viewmats()[0, 2, 3]) for p in plans}) == 3
    again = plan_sequence(config, demo_avatar, 1)
    np.testing.assert_array_equal(again.viewmats(), plans[1].viewmats())
    np.testing.assert_array_equal(again.codes, plans[1].codes)


def test_studio_plans_share_the_take_and_differ_in_camera(demo_avatar):
    config = RenderConfig.for_mode("studiocapture", frames=16)
    assert config.num_cameras == 4
    take = [plan_sequence(config, demo_avatar, 2, camera=c) for c in range(4)]
    centre = np.array(config.head_centre_m)
    yaws, pitches = [], []
    for plan in take:
        vm = plan.viewmats()
        assert np.abs(vm - vm[0]).max() == 0
        rel = _camera_centres(vm)[0] - centre
        yaws.append(math.degrees(math.atan2(rel[0], rel[2])))
        pitches.append(math.degrees(math.asin(rel[1] / np.linalg.norm(rel))))
        np.testing.assert_array_equal(plan.codes, take[0].codes)  # every camera sees the same instants
        np.testing.assert_array_equal(plan.poses, take[0].poses)
    np.testing.assert_allclose(yaws, [-45, -15, 15, 45], atol=1e-6)
    np.testing.assert_allclose(pitches, [5, -5, -5, 5], atol=1e-6)
    assert [p.sequence_id for p in take] == [f"{demo_avatar.name}/studiocapture/0002/cam{c:02d}" for c in range(4)]
    assert [p.camera_id for p in take] == ["cam00", "cam01", "cam02", "cam03"]
    # the rig is fixed across takes; the segment is not
    other = plan_sequence(config, demo_avatar, 3, camera=1)
    np.testing.assert_array_equal(other.viewmats(), take[1].viewmats())
    assert other.capture_frames[0] != take[1].capture_frames[0]
    with pytest.raises(ValueError, match="camera"):
        plan_sequence(config, demo_avatar, 0)


def test_capture_configs_load_and_flags_override(tmp_path):
    phone = load_config(CONFIG_DIR / "phonecapture.toml")
    studio = load_config(CONFIG_DIR / "studiocapture.toml")
    assert (phone.mode, phone.sequences, phone.frames, phone.resolution) == ("phonecapture", 32, 128, 1024)
    assert (studio.mode, studio.num_cameras, studio.capture.studio_distance_m) == ("studiocapture", 4, 0.36)
    args = _build_parser().parse_args(
        [
            "render",
            "--avatars",
            "x",
            "--out",
            "y",
            "--mode",
            "studiocapture",
            "--studio-yaws=-30,0,30",
            "--frames",
            "9",
            "--camera-distance",
            "0.3",
        ]
    )
    config = _load_render_config(args)
    assert config.capture.studio_yaw_deg == (-30.0, 0.0, 30.0) and config.capture.studio_pitch_deg == (0, 0, 0)
    assert (config.frames, config.sequences, config.capture.distance_m) == (9, 8, 0.3)
    with pytest.raises(ConfigError, match="studio_yaw_deg"):
        apply_overrides(studio, {"capture.studio_yaw_deg": (10.0,)})  # one yaw, four pitches
    # the existing modes keep their defaults
    assert (RenderConfig.for_mode("dynamicsweep").sequences, RenderConfig.for_mode("viewsweep").frames) == (32, 100)
    assert load_config(CONFIG_DIR / "dynamicsweep.toml").trajectory_kind(1) == "spiral"


def test_capture_stand_ins_render_end_to_end(tmp_path: Path):
    phone = RenderConfig.for_mode("phonecapture", **TINY)
    studio = apply_overrides(
        RenderConfig.for_mode("studiocapture", **TINY),
        {"capture.studio_yaw_deg": (-45.0, 45.0), "capture.studio_pitch_deg": (0.0, 5.0)},
    )
    assert run(phone, ["demo-002"], tmp_path, progress=False).done == 1
    summary = run(studio, ["demo-002"], tmp_path, progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    report = validate_dataset(tmp_path)
    assert report.ok, report.format()
    rows = {r.sequence_id: r for r in read_rows(tmp_path)}
    assert sorted(rows) == [
        "demo-002/phonecapture/0000",
        "demo-002/studiocapture/0000/cam00",
        "demo-002/studiocapture/0000/cam01",
    ]
    p, s0, s1 = rows.values()
    assert (p.dataset, p.mode, p.trajectory, p.source, p.camera_id) == (
        "PhoneCapture",
        "capture",
        "static",
        "synthetic",
        "phone-standin",
    )
    assert (s0.dataset, s0.mode, s0.trajectory, s0.camera_id, s1.camera_id) == (
        "StudioCapture",
        "capture",
        "static",
        "cam00",
        "cam01",
    )
    assert s0.rgb_path == "videos/demo-002/studiocapture/0000/cam00_rgb.mp4"
    assert s0.sequence_index == s1.sequence_index == 0
    np.testing.assert_array_equal(s0.expression, s1.expression)
    assert np.abs(s0.viewmat[0] - s1.viewmat[0]).max() > 0.1
    for row in (p, s0, s1):
        assert row.world_frame == "demo-002" and row.num_landmarks == 68
        assert np.abs(row.viewmat - row.viewmat[0]).max() == 0
    # a rerun of the studio job skips both cameras
    assert run(studio, ["demo-002"], tmp_path, progress=False).skipped == 2
