"""model-infer with a tiny random model: the paper's four control modes, windows, bad inputs."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from factorportrait.cli.infer import main
from factorportrait.inference.pipeline import window_starts


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from avatar_render import load_avatar
    from factorportrait.transformer import FactorPortraitTransformer

    root = tmp_path_factory.mktemp("infer")
    FactorPortraitTransformer.tiny(seed=0).save_pretrained(root / "model")
    avatar = load_avatar("demo-002")
    np.savez(
        root / "driving.npz", expression=avatar.capture_codes[:13].numpy(), head_pose=avatar.capture_poses[:13].numpy()
    )
    gradient = np.linspace(0, 255, 48 * 40 * 3).reshape(48, 40, 3).astype(np.uint8)
    Image.fromarray(gradient).save(root / "portrait.png")
    return root


def _run(assets, out, *extra):
    return main(
        [
            "--model",
            str(assets / "model"),
            "--image",
            str(assets / "portrait.png"),
            "--driving",
            str(assets / "driving.npz"),
            "--frames",
            "5",
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "2",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def _frames(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize(
    ("extra", "mode"),
    [
        ([], "static-frontal"),
        (["--view-yaw", "40"], "static-novel-view"),
        (["--camera", "spin", "--freeze-driving"], "moving-camera-static-face"),
        (["--camera", "spiral", "--scheduler", "euler"], "all-dynamic"),
    ],
)
def test_each_control_mode_gives_a_video_of_the_asked_size(assets, tmp_path, extra, mode):
    out = tmp_path / "out.mp4"
    assert _run(assets, out, *extra) == 0
    assert _frames(out).shape == (5, 32, 32, 3)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["control_mode"] == mode and len(sidecar["c2w"]) == 5 and len(sidecar["expression"]) == 5


def test_camera_path_file_and_long_clips_by_overlapping_windows(assets, tmp_path):
    c2w = np.repeat(np.eye(4)[None], 13, 0)
    c2w[:, 2, 3] = 0.3
    np.savez(tmp_path / "cams.npz", c2w=c2w)
    out = tmp_path / "long.mp4"
    assert (
        _run(assets, out, "--frames", "13", "--window", "9", "--overlap", "4", "--camera", str(tmp_path / "cams.npz"))
        == 0
    )
    assert _frames(out).shape == (13, 32, 32, 3)
    assert window_starts(13, 9, 4) == [0, 4] and window_starts(81, 81, 8) == [0]
    assert window_starts(30, 9, 2) == [0, 7, 14, 21]


def test_bad_inputs(assets, tmp_path, capsys):
    assert _run(assets, tmp_path / "x.mp4", "--frames", "6") == 2
    assert "1 + 4k frames" in capsys.readouterr().err
    assert _run(assets, tmp_path / "x.mp4", "--frames", "21") == 2
    assert "driving signal has 13" in capsys.readouterr().err
    assert (
        main(
            [
                "--model",
                str(tmp_path / "none"),
                "--image",
                str(assets / "portrait.png"),
                "--driving",
                str(assets / "driving.npz"),
                "--out",
                str(tmp_path / "x.mp4"),
            ]
        )
        == 2
    )
    assert "config.json" in capsys.readouterr().err


def test_driving_video_needs_and_uses_an_expression_encoder(assets, tmp_path, capsys):
    import torch

    from factorportrait.expression_encoder import ExpressionEncoder
    from factorportrait.video_io import write_mp4

    video = tmp_path / "driver.mp4"
    write_mp4(np.repeat(np.asarray(Image.open(assets / "portrait.png").resize((64, 64)))[None], 5, 0), video)
    args = [
        "--model",
        str(assets / "model"),
        "--image",
        str(assets / "portrait.png"),
        "--driving",
        str(video),
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "o.mp4"),
        "--quiet",
    ]
    assert main(args) == 2
    assert "--expression-encoder" in capsys.readouterr().err
    torch.manual_seed(0)
    torch.save(ExpressionEncoder().state_dict(), tmp_path / "encoder.pt")
    assert main([*args, "--expression-encoder", str(tmp_path / "encoder.pt")]) == 0
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["driving"]["kind"] == "video" and len(sidecar["expression"]) == 5
