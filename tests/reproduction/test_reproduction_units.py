"""Pieces of the reproduction chain checked against independent expectations (no rendering, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from factorportrait.reproduction.config import ReproConfigError, load_repro_config, parse_override
from factorportrait.reproduction.finetune import stage_mixture
from factorportrait.reproduction.instruments import (
    pose_targets,
    rotation_error_deg,
    six_d_to_matrix,
    translation_error_mm,
)
from factorportrait.reproduction.steps import StepRunner


def test_presets_load_and_overrides_apply():
    for name in ("micro", "cpu", "gpu"):
        cfg = load_repro_config(name)
        assert cfg.preset == name
        assert not set(cfg.train_ids) & set(cfg.heldout_ids)
    cfg = load_repro_config("micro", ["vae_steps=7", 'variants=["full", "c2"]', "device=cpu"])
    assert (cfg.vae_steps, cfg.variants, cfg.device) == (7, ["full", "c2"], "cpu")
    assert parse_override("spin_sweep_deg=45.5") == ("spin_sweep_deg", 45.5)


def test_bad_settings_name_the_field():
    with pytest.raises(ReproConfigError, match="heldout_ids"):
        load_repro_config("micro", ['heldout_ids=["demo-000"]'])  # overlaps the train identities
    with pytest.raises(ReproConfigError, match="unknown field"):
        load_repro_config("micro", ["no_such_field=1"])
    with pytest.raises(ReproConfigError, match="eval_frames"):
        load_repro_config("micro", ["eval_frames=6"])


def test_c1_mixture_is_tab1_without_dynamicsweep_renormalised():
    everything = {"PhoneCapture", "StudioCapture", "ViewSweep", "DynamicSweep"}
    full = stage_mixture(3, "full", everything)
    assert full == pytest.approx({"PhoneCapture": 0.2, "StudioCapture": 0.2, "ViewSweep": 0.3, "DynamicSweep": 0.3})
    c1 = stage_mixture(3, "c1", everything)
    # 0.2 / 0.7 and 0.3 / 0.7: the remaining Tab. 1 ratios, rescaled to sum to one
    assert c1 == pytest.approx({"PhoneCapture": 2 / 7, "StudioCapture": 2 / 7, "ViewSweep": 3 / 7})
    assert stage_mixture(1, "full", {"ViewSweep", "DynamicSweep"}) == {"ViewSweep": 1.0}  # no PhoneCapture rendered


def test_pose_targets_match_a_hand_built_camera_frame_pose():
    # head turned 90 deg about +y and moved 1 cm along +x; camera 0.3 m in front, looking back at the origin
    head = np.array([[0.0, math.pi / 2, 0.0, 0.01, 0.0, 0.0]])
    viewmat = np.eye(4)[None].copy()
    viewmat[0, :3, :3] = np.diag([-1.0, 1.0, -1.0])  # rotation by 180 deg about y
    viewmat[0, 2, 3] = 0.3
    target = pose_targets(head, viewmat)[0]
    r_head = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # Ry(90)
    r_cam = np.diag([-1.0, 1.0, -1.0]) @ r_head
    np.testing.assert_allclose(target[:3], r_cam[:, 0], atol=1e-6)
    np.testing.assert_allclose(target[3:6], r_cam[:, 1], atol=1e-6)
    np.testing.assert_allclose(target[6:], [-0.01, 0.0, 0.3], atol=1e-6)


def test_rotation_and_translation_errors():
    a = torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, 0, 0.3]])
    angle = math.radians(30)
    # rotated by 30 deg about z: first two columns of Rz(30); 5 mm further away
    b = torch.tensor([[math.cos(angle), math.sin(angle), 0, -math.sin(angle), math.cos(angle), 0, 0, 0, 0.305]])
    assert rotation_error_deg(a, b).item() == pytest.approx(30.0, abs=1e-3)
    assert translation_error_mm(a, b).item() == pytest.approx(5.0, abs=1e-4)
    r = six_d_to_matrix(torch.tensor([[2.0, 0, 0, 1, 3, 0]]))  # not orthonormal in: orthonormal out
    torch.testing.assert_close(r[0] @ r[0].T, torch.eye(3), atol=1e-6, rtol=0)


def test_step_runner_skips_finished_steps_and_redoes_missing_outputs(tmp_path):
    calls = []

    def step():
        calls.append(1)
        (tmp_path / "out.txt").write_text("x")
        return {"value": len(calls)}

    runner = StepRunner(tmp_path)
    assert runner.run("a", step, ["out.txt"])["summary"] == {"value": 1}
    assert StepRunner(tmp_path).run("a", step, ["out.txt"])["summary"] == {"value": 1}  # resumed: not rerun
    assert len(calls) == 1
    marker = json.loads((tmp_path / "steps" / "a.done.json").read_text())
    assert marker["outputs"] == ["out.txt"] and marker["wall_s"] >= 0
    (tmp_path / "out.txt").unlink()  # an output vanished: the step is not done any more
    assert StepRunner(tmp_path).run("a", step, ["out.txt"])["summary"] == {"value": 2}
    with pytest.raises(RuntimeError, match="did not write"):
        StepRunner(tmp_path).run("b", lambda: {}, ["missing.txt"])


def test_elapsed_span_counts_overlapping_steps_once():
    from factorportrait.reproduction.report import elapsed_span

    # steps a [0, 100] and b [40, 160] ran side by side, c [160, 200] after them: 200 s elapsed, 300 s summed
    summaries = {
        "a": {"wall_s": 100.0, "finished_utc": "2026-01-01T00:01:40+00:00"},
        "b": {"wall_s": 120.0, "finished_utc": "2026-01-01T00:02:40+00:00"},
        "c": {"wall_s": 40.0, "finished_utc": "2026-01-01T00:03:20+00:00"},
        "plan": {"wall_s": 0.0},  # no finish time: not counted
    }
    assert elapsed_span(summaries) == pytest.approx(200.0)
    assert elapsed_span({"plan": {"wall_s": 0.0}}) is None


def test_vae_windows_crop_on_the_8_px_grid():
    from factorportrait.reproduction.vae_train import _windows

    # a video whose pixel (t, y, x) holds t, y, x: a crop must be a contiguous block at a multiple of 8
    t, y, x = np.meshgrid(np.arange(24), np.arange(64), np.arange(64), indexing="ij")
    video = np.stack([t, y, x], axis=-1).astype(np.uint8)
    batch = _windows([video], frames=17, count=6, rng=np.random.default_rng(0), crop=32)
    assert batch.shape == (6, 3, 17, 32, 32)
    values = ((batch + 1) * 127.5).round().long()
    for w in values:
        t0, y0, x0 = (int(w[c, 0, 0, 0]) for c in range(3))
        assert y0 % 8 == 0 and x0 % 8 == 0 and t0 + 17 <= 24
        assert torch.equal(w[0, :, 0, 0], torch.arange(t0, t0 + 17))
        assert torch.equal(w[1, 0, :, 0], torch.arange(y0, y0 + 32))
        assert torch.equal(w[2, 0, 0, :], torch.arange(x0, x0 + 32))
    whole = _windows([video], frames=5, count=1, rng=np.random.default_rng(0), crop=0)
    assert whole.shape == (1, 3, 5, 64, 64)


def test_instrument_identities_never_carry_a_heldout_face_shape():
    """The generated identities for the instruments: new ids (4 digits), distinct, none of them sharing a face
    shape with a held-out kit identity (the kit's meshes demo-012 ... demo-015 have weight 0 in their mix)."""
    from avatar_render.demo import demo_index, demo_shape_weights
    from factorportrait.reproduction.data import instrument_identities, render_jobs

    cfg = load_repro_config("cpu", ["instrument_ids=30"])
    ids = instrument_identities(cfg)
    assert len(ids) == len(set(ids)) == 30
    heldout = [demo_index(h) for h in cfg.heldout_ids]
    for name in ids:
        index = demo_index(name)
        assert index >= 16 and name not in cfg.train_ids + cfg.heldout_ids
        weights = demo_shape_weights(index)
        assert weights[heldout].sum() == 0 and abs(weights.sum() - 1) < 1e-9
    jobs = [j for j in render_jobs(cfg, {"PhoneCapture", "DynamicSweep"}) if j.split == "instruments"]
    assert {j.dataset for j in jobs} == set(cfg.instrument_sequences) and all(j.ids == ids for j in jobs)
    assert instrument_identities(load_repro_config("cpu", ["instrument_ids=0"])) == []


def test_aed_counts_only_frames_whose_ground_truth_shows_a_face():
    """AED = mean L1 of the codes over the face frames only (hand-computed), NaN for a clip without any."""
    from factorportrait.reproduction.evaluate import clip_metrics

    frames = np.zeros((3, 16, 16, 3), np.uint8)
    gt = {
        "expression": torch.zeros(3, 2),
        "pose": torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, 0, 0]]).repeat(3, 1),
        "identity": torch.tensor([[1.0, 0.0]]).repeat(3, 1),
        "face": torch.tensor([True, False, True]),
    }
    pred = dict(gt, expression=torch.tensor([[0.2, 0.4], [9.0, 9.0], [0.0, 0.2]]))
    assert math.isclose(clip_metrics(frames, frames, pred, gt)["aed"], (0.3 + 0.1) / 2, rel_tol=1e-6)
    no_face = dict(gt, face=torch.zeros(3, dtype=torch.bool))
    assert math.isnan(clip_metrics(frames, frames, pred, no_face)["aed"])


def test_eye_mouth_region_psnr_counts_only_the_landmark_boxes():
    """Landmarks of the eyes and mouth all at (8, 8) px: a box of +-2 px holds the 4 x 4 pixels whose centres
    (i + 0.5) fall in [6, 10]; an error of 10 levels there gives 10 log10(255^2 / 100) dB, errors elsewhere none."""
    from factorportrait.reproduction.evaluate import expression_region, region_psnr

    marks = np.zeros((2, 68, 2), np.float32)
    marks[:, 36:68] = 8.0
    region = expression_region(marks, np.array([True, False]), 16, 16)
    assert region[0].sum() == 16 and region[0, 6:10, 6:10].all() and not region[1].any()
    gt = np.full((2, 16, 16, 3), 100, np.uint8)
    pred = gt.copy()
    pred[0, 6:10, 6:10] += 10
    pred[:, :4] = 0  # outside the region: ignored
    assert abs(region_psnr(pred, gt, region) - 10 * np.log10(255.0**2 / 100)) < 1e-9
    assert np.isnan(region_psnr(pred, gt, np.zeros_like(region))) and np.isnan(region_psnr(pred, gt, None))


def _orbit_viewmat(yaw_deg: float, distance: float = 0.35) -> np.ndarray:
    """World-to-camera matrix of a camera at `yaw_deg` on a horizontal circle, looking at the origin."""
    yaw = math.radians(yaw_deg)
    centre = distance * np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    forward = -centre / np.linalg.norm(centre)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rot = np.stack([right, -up, forward])  # OpenCV camera axes (x right, y down, z forward) as rows
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, -rot @ centre
    return out


def test_camera_swap_diagnostic_measures_the_donor_gap_per_clip(monkeypatch):
    from types import SimpleNamespace

    from factorportrait.reproduction import swap_diagnostics as diag

    # id a spins 0 -> 30 deg, id b 90 -> 120 deg, id c -120 -> -90 deg: donors are the next clip of another id
    paths = {"a/0": (0.0, 30.0), "b/0": (90.0, 120.0), "c/0": (-120.0, -90.0)}
    sources = [
        SimpleNamespace(sequence_id=sid, num_frames=4, viewmat=[_orbit_viewmat(y) for y in np.linspace(lo, hi, 4)])
        for sid, (lo, hi) in paths.items()
    ]
    monkeypatch.setattr(diag, "split_roots", lambda run_dir, split: {})
    monkeypatch.setattr(diag, "load_sources", lambda roots: sources)
    seeds = {"true": {"a/0": 20.0, "b/0": 18.0, "c/0": 16.0}, "camera": {"a/0": 15.0, "b/0": 17.0, "c/0": 16.5}}
    mode = {
        key: {str(s): {"clips": {sid: {"psnr": v + 0.1 * s} for sid, v in vals.items()}} for s in range(3)}
        for key, vals in seeds.items()
    }
    rows = diag.camera_swap_rows(
        Path("no-run"), {"full": {"splits": {"heldout_ids": {"moving-camera-static-face": mode}}}}, 4
    )
    by_clip = {r["clip"]: r for r in rows}
    assert [by_clip[s]["donor"] for s in paths] == ["b/0", "c/0", "a/0"]
    assert by_clip["a/0"]["yaw"] == pytest.approx((0.0, 30.0))
    assert by_clip["a/0"]["gap_deg"] == pytest.approx(90.0)  # a vs b: 90 deg apart at every frame
    assert by_clip["b/0"]["gap_deg"] == pytest.approx(150.0)  # b vs c: 210 deg the long way = 150
    assert by_clip["c/0"]["gap_deg"] == pytest.approx(120.0)
    assert by_clip["a/0"]["true"][0] == pytest.approx(20.1) and by_clip["a/0"]["true"][1] == pytest.approx(0.1)
    drops = {s: by_clip[s]["true"][0] - by_clip[s]["swapped"][0] for s in paths}
    assert drops == pytest.approx({"a/0": 5.0, "b/0": 1.0, "c/0": -0.5})
    # gaps 90 / 150 / 120 against drops 5 / 1 / -0.5: an analytic Pearson r
    gap, drop = np.array([90.0, 150.0, 120.0]), np.array([5.0, 1.0, -0.5])
    expected = ((gap - gap.mean()) * (drop - drop.mean())).sum() / (
        np.sqrt(((gap - gap.mean()) ** 2).sum() * ((drop - drop.mean()) ** 2).sum())
    )
    assert diag.gap_correlation(rows) == pytest.approx(expected)
