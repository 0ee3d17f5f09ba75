"""datagen end to end at tiny sizes: both modes, determinism, resume after a crash, Ray workers, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from datagen.cli import main
from datagen.config import RenderConfig, load_config
from datagen.manifest import read_rows, validate_dataset
from datagen.plan import plan_sequence
from datagen.runner import run
from datagen.video import read_video

TINY = {"sequences": 2, "frames": 5, "resolution": 64, "workers": 0, "backend": "cpu"}


def _ids(tmp_path: Path, *ids: str) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("# demo avatars\n\n" + "\n".join(ids) + "  # trailing comment\n")
    return path


@pytest.fixture(scope="module")
def dynamic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn")
    summary = run(RenderConfig.for_mode("dynamicsweep", **TINY), ["demo-000"], out, progress=False)
    return out, summary


def test_dynamicsweep_end_to_end(dynamic_run):
    out, summary = dynamic_run
    assert (summary.done, summary.failed, summary.frames) == (2, 0, 10)
    report = validate_dataset(out)
    assert report.ok, report.format()
    rows = read_rows(out)
    assert [r.sequence_id for r in rows] == ["demo-000/dynamicsweep/0000", "demo-000/dynamicsweep/0001"]
    assert [r.trajectory for r in rows] == ["spin", "spiral"]
    rgb = read_video(out / rows[0].rgb_path)
    assert rgb.shape == (5, 64, 64, 3)
    assert rgb.std() > 10  # a head on a white background, not a blank frame
    # expression and pose follow a contiguous capture segment
    from avatar_render import load_avatar

    avatar = load_avatar("demo-000")
    codes = avatar.capture_codes.numpy()
    start = int(np.argmin(np.abs(codes - rows[0].expression[0]).sum(1)))
    np.testing.assert_allclose(rows[0].expression, codes[start : start + 5], atol=1e-6)


def test_rows_carry_world_frame_and_projected_landmarks(dynamic_run):
    from avatar_render import load_avatar

    out, _ = dynamic_run
    avatar = load_avatar("demo-000")
    for row in read_rows(out):
        assert row.world_frame == "demo-000"  # one canonical frame per avatar
        assert (row.num_landmarks, row.landmark_layout) == (68, "ibug68")
        assert row.landmarks.shape == (5, 136) and row.landmark_visible.shape == (5, 68)
        # by hand: the posed nose tip (point 30) through the row's own K and viewmat
        vertices = avatar.pose_mesh(row.expression, row.head_pose).double().numpy()
        tip = vertices[:, avatar.landmark_layout.vertex_ids[30]]  # [T, 3]
        cam = np.einsum("tij,tj->ti", row.viewmat[:, :3, :3].astype(np.float64), tip) + row.viewmat[:, :3, 3]
        u = row.K[:, 0, 0] * cam[:, 0] / cam[:, 2] + row.K[:, 0, 2]
        v = row.K[:, 1, 1] * cam[:, 1] / cam[:, 2] + row.K[:, 1, 2]
        np.testing.assert_allclose(row.landmarks[:, 60], u, atol=1e-3)
        np.testing.assert_allclose(row.landmarks[:, 61], v, atol=1e-3)
        # visible points land on the rendered head, not on the white background
        rgb = read_video(out / row.rgb_path).astype(np.int32)
        uv = row.landmarks.reshape(5, 68, 2)
        t, k = np.nonzero(row.landmark_visible)
        assert len(t) > 0
        pixels = rgb[t, uv[t, k, 1].astype(int), uv[t, k, 0].astype(int)]
        assert (pixels.min(-1) < 235).mean() > 0.9


def test_viewsweep_freezes_expression_and_pose(tmp_path):
    summary = run(
        RenderConfig.for_mode("viewsweep", **{**TINY, "sequences": 1}), ["demo-001"], tmp_path, progress=False
    )
    assert summary.done == 1
    (row,) = read_rows(tmp_path)
    assert (
        row.dataset == "ViewSweep"
        and np.ptp(row.expression, axis=0).max() == 0
        and np.ptp(row.head_pose, axis=0).max() == 0
    )
    assert np.ptp(row.viewmat, axis=0).max() > 0.01  # the camera moves
    assert validate_dataset(tmp_path).ok


@pytest.mark.parametrize("normal_mesh", ["neutral", "tracked"])
def test_neutral_normal_maps_show_pose_not_expression(tmp_path, normal_mesh):
    """A fixed camera and head pose with the jaw opening: the neutral template's normal maps stay the same frame,
    the tracked mesh's change around the mouth (the RGB changes either way)."""
    import dataclasses

    import torch

    from avatar_render import load_avatar
    from datagen.render_sequence import render_sequence

    config = RenderConfig.for_mode("phonecapture", **{**TINY, "frames": 4, "normal_mesh": normal_mesh})
    avatar = load_avatar("demo-002")
    plan = plan_sequence(config, avatar, 0)
    jaw = torch.zeros(1, len(avatar.expression_labels))
    jaw[0, avatar.expression_labels.index("jawOpen")] = 1.0
    opened = avatar.codes_from_rig_weights(jaw).numpy()
    codes = np.stack([np.zeros_like(opened[0]), opened[0], np.zeros_like(opened[0]), opened[0]]).astype(np.float32)
    plan = dataclasses.replace(plan, codes=codes, poses=np.repeat(plan.poses[:1], 4, 0))
    row, _ = render_sequence(plan, avatar, config, tmp_path)
    normals = read_video(tmp_path / row.normal_path).astype(np.int16)
    rgb = read_video(tmp_path / row.rgb_path).astype(np.int16)
    assert np.abs(rgb[1] - rgb[0]).max() > 40  # the mouth opens in the image
    change = np.abs(normals[1] - normals[0]).max()
    if normal_mesh == "neutral":
        assert change <= 4, change  # codec noise only (near-lossless normal CRF)
    else:
        assert change > 40, change
    assert json.loads(row.plan)["render"]["normal_mesh"] == normal_mesh


def test_same_seed_same_data(dynamic_run, tmp_path):
    out, _ = dynamic_run
    run(RenderConfig.for_mode("dynamicsweep", **TINY), ["demo-000"], tmp_path, progress=False)
    a = pq.read_table(out / "manifest" / "manifest.parquet")
    b = pq.read_table(tmp_path / "manifest" / "manifest.parquet")
    assert a.equals(b)
    for row in read_rows(out):
        assert np.array_equal(read_video(out / row.rgb_path), read_video(tmp_path / row.rgb_path))
        assert np.array_equal(read_video(out / row.normal_path), read_video(tmp_path / row.normal_path))


def test_plans_are_pure_functions_of_their_key():
    from avatar_render import load_avatar

    avatar = load_avatar("demo-002")
    config = RenderConfig.for_mode("dynamicsweep", seed=0)
    a, b = plan_sequence(config, avatar, 5), plan_sequence(config, avatar, 5)
    assert a.seed == b.seed and np.array_equal(a.viewmats(), b.viewmats()) and np.array_equal(a.codes, b.codes)
    other = plan_sequence(RenderConfig.for_mode("dynamicsweep", seed=1), avatar, 5)
    assert other.seed != a.seed
    kinds = [config.trajectory_kind(i) for i in range(config.sequences)]
    assert kinds.count("spin") == 16 and kinds.count("spiral") == 16  # paper: 16 spin + 16 spiral


def test_rerun_does_no_work(dynamic_run):
    out, _ = dynamic_run
    summary = run(RenderConfig.for_mode("dynamicsweep", **TINY), ["demo-000"], out, progress=False)
    assert (summary.done, summary.skipped) == (0, 2)


def _crash_run(out: Path, ids: Path, workers: int, crash: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATAGEN_INJECT_CRASH": crash}
    cmd = [
        sys.executable,
        "-m",
        "datagen.cli",
        "render",
        "--avatars",
        str(ids),
        "--out",
        str(out),
        "--mode",
        "dynamicsweep",
        "--sequences",
        "2",
        "--frames",
        "5",
        "--resolution",
        "64",
        "--workers",
        str(workers),
        "--backend",
        "cpu",
        "--quiet",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_resume_after_a_crash_mid_sequence(tmp_path):
    ids = _ids(tmp_path, "demo-000")
    out = tmp_path / "data"
    crashed = _crash_run(out, ids, workers=0, crash="demo-000/dynamicsweep/0001@2")
    assert crashed.returncode == 17, crashed.stderr  # the process died mid-sequence
    parts = sorted(p.name for p in (out / "manifest" / "parts").glob("*.parquet"))
    assert parts == ["demo-000__dynamicsweep__0000.parquet"]  # the half-rendered sequence has no row
    assert not (out / "videos/demo-000/dynamicsweep/0001_rgb.mp4").exists()
    summary = run(RenderConfig.for_mode("dynamicsweep", **TINY), ["demo-000"], out, progress=False)
    assert (summary.done, summary.skipped) == (1, 1)
    assert validate_dataset(out).ok
    leftovers = [p.name for p in (out / "videos").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_two_ray_workers_retry_a_killed_worker(tmp_path):
    ids = _ids(tmp_path, "demo-000", "demo-001")
    out = tmp_path / "data"
    result = _crash_run(out, ids, workers=2, crash="demo-001/dynamicsweep/0000@1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 done, 0 skipped" in result.stdout and "0 failed" in result.stdout
    assert (out / ".fault-injected" / "demo-001__dynamicsweep__0000").exists()  # the crash did happen
    assert validate_dataset(out).ok
    assert [p.name for p in (out / "videos").rglob("*") if ".tmp" in p.name] == []


def test_bad_inputs_get_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["render", "--avatars", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "lists no avatars" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("demo-000\ndemo 001\n")
    assert main(["render", "--avatars", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.txt:2" in capsys.readouterr().err
    unknown = _ids(tmp_path, "demo-000", "nobody")
    assert main(["render", "--avatars", str(unknown), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown avatar id 'nobody'" in err and "demo-015" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["render", "--avatars", str(_ids(tmp_path, "demo-000")), "--out", str(blocker / "sub")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_validate_reports_a_missing_video(dynamic_run, tmp_path, capsys):
    import shutil

    out, _ = dynamic_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    table = pq.read_table(copy / "manifest" / "manifest.parquet")
    paths = table.column("rgb_path").to_pylist()
    paths[1] = "videos/missing.mp4"
    table = table.set_column(table.schema.get_field_index("rgb_path"), "rgb_path", [paths])
    pq.write_table(table, copy / "manifest" / "manifest.parquet")
    assert main(["validate", str(copy)]) == 1
    out_text = capsys.readouterr().out
    assert "demo-000/dynamicsweep/0001" in out_text and "missing.mp4" in out_text


def test_config_files_and_overrides(tmp_path):
    root = Path(__file__).resolve().parents[2] / "packages" / "datagen" / "configs"
    view = load_config(root / "viewsweep.toml")
    assert (view.sequences, view.frames, view.resolution) == (128, 100, 1024)
    dyn = load_config(root / "dynamicsweep.toml")
    assert (dyn.sequences, dyn.frames) == (32, 128) and dyn.spiral.yaw_range_deg == (-60.0, 60.0)
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "viewsweep"\nframez = 3\n')
    with pytest.raises(ValueError, match="bad.toml: unknown field 'framez'"):
        load_config(bad)
    bad.write_text('mode = "viewsweep"\nresolution = 33\n')
    with pytest.raises(ValueError, match="field 'resolution' = 33"):
        load_config(bad)
