"""The `avatar-render` CLI end to end (tiny sizes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from avatar_render import load_avatar, read_ply
from avatar_render.cli import main


def test_help_answers_fast_without_importing_torch():
    code = "import sys; from avatar_render.cli import _build_parser; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preview_writes_a_sheet_of_rgb_and_normals(tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["preview", "--avatar", "demo-001", "--out", str(out), "--views", "2", "--size", "40"]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (4 * 40, 2 * 40, 3)
    rgb, normals = sheet[:40], sheet[40:80]
    assert (rgb < 250).any(axis=-1).mean() > 0.1  # the head covers part of the white background
    covered = normals.any(axis=-1)
    assert 0.1 < covered.mean() < 0.9  # black = no surface
    # a frontal view: normals of the face point at the camera, i.e. n_z < 0 -> blue channel < 128
    assert np.median(normals[..., :40, 2][covered[:, :40]]) < 128


def test_export_ply_matches_the_posed_frame(tmp_path):
    out = tmp_path / "x.ply"
    assert main(["export-ply", "demo-002", "--frame", "17", "--out", str(out)]) == 0
    avatar = load_avatar("demo-002")
    codes, poses = avatar.capture_segment(17, 1)
    expected = avatar.pose(codes, poses).frame(0)
    loaded = read_ply(out)
    torch.testing.assert_close(loaded.means, expected.means)
    torch.testing.assert_close(loaded.sh, expected.sh)


def test_errors_are_clear(tmp_path, capsys):
    assert main(["info", "demo-777"]) == 2
    assert "available: demo-000" in capsys.readouterr().err
    assert main(["export-ply", "demo-000", "--frame", "100000", "--out", str(tmp_path / "x.ply")]) == 2
    assert "--frame 100000 is outside the capture track" in capsys.readouterr().err


def test_info_and_save(tmp_path, capsys):
    assert main(["info", "demo-000"]) == 0
    text = capsys.readouterr().out
    assert "5450 vertices" in text and "128-d" in text  # the kit head (4538) + teeth (198) + bust (714)
    out = tmp_path / "d.avatar.safetensors"
    assert main(["save", "demo-000", "--out", str(out)]) == 0
    assert main(["info", str(out)]) == 0
