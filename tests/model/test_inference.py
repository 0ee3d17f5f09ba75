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
    return main(_args(assets, out, *extra))


def _args(assets, out, *extra):
    return [
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


def test_driving_video_is_tracked_or_read_by_an_expression_encoder(assets, tmp_path, capsys):
    """Without --expression-encoder the video is tracked (a faceless one is a clear error naming it); with one,
    its codes come from the encoder."""
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
    err = capsys.readouterr().err
    assert str(video) in err and "no face found" in err
    torch.manual_seed(0)
    torch.save(ExpressionEncoder().state_dict(), tmp_path / "encoder.pt")
    assert main([*args, "--expression-encoder", str(tmp_path / "encoder.pt")]) == 0
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["driving"]["kind"] == "video" and len(sidecar["expression"]) == 5


# ---------------------------------------------------------------------------------------------- conditions (issue 9)
def _camera_from_rays(rays: np.ndarray, K: np.ndarray) -> np.ndarray:  # [6, H, W] -> relative c2w [4, 4]
    """Invert a Plücker map: R by Procrustes on the pixel directions, the centre o by least squares on m = o x d."""
    _, H, W = rays.shape
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_c = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1).reshape(-1, 3)
    d_c /= np.linalg.norm(d_c, axis=-1, keepdims=True)
    m, d = rays[:3].reshape(3, -1).T, rays[3:].reshape(3, -1).T
    u, _, vt = np.linalg.svd(d.T @ d_c)
    rot = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
    A = np.stack([np.cross(np.eye(3)[k], d) for k in range(3)], -1)  # [N, 3, 3]: o x d = A o, column k = e_k x d
    o = np.linalg.lstsq(A.reshape(-1, 3), m.reshape(-1), rcond=None)[0]
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, o
    return out


@pytest.mark.parametrize("camera", ["static-35", "file-with-reference"])
def test_normal_maps_are_rendered_from_the_cameras_the_rays_describe(assets, tmp_path, camera):
    import torch

    from factorportrait.inference.camera_paths import load_camera_file, make_camera_path, reference_c2w
    from factorportrait.inference.driving import DrivingSignal, load_driving
    from factorportrait.inference.pipeline import FactorPortraitPipeline

    size = 32
    if camera == "static-35":
        c2w, _ = make_camera_path("static", 5, view_yaw_deg=35.0)
        ref = reference_c2w()
    else:  # absolute cameras in the avatar frame, with a reference camera that is not the default one
        path_c2w, _ = make_camera_path("spin", 5, view_yaw_deg=-30.0, sweep_deg=40.0, distance_m=0.4)
        ref_c2w, _ = make_camera_path("static", 1, view_yaw_deg=20.0, view_pitch_deg=10.0)
        np.savez(tmp_path / "cams.npz", c2w=path_c2w, reference_c2w=ref_c2w[0])
        loaded = load_camera_file(tmp_path / "cams.npz", 5)
        c2w, ref = loaded.c2w, loaded.reference_c2w
        np.testing.assert_allclose(c2w, path_c2w)  # absolute: used as given
    pipeline = FactorPortraitPipeline.from_pretrained(str(assets / "model"), device="cpu")
    seen = {}
    forward = pipeline.transformer.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return forward(*args, **kwargs)

    pipeline.transformer.forward = spy
    driving = load_driving(str(assets / "driving.npz"))
    image = np.full((size, size, 3), 128, np.uint8)
    out = pipeline(image, driving, c2w, height=size, width=size, num_frames=5, num_inference_steps=1,
                   reference_c2w=ref, progress=False)  # fmt: skip
    K = out.K[0]
    features = seen["ray_features"][0].float()  # [1536, 2, 4, 4]
    for frame, (latent, k) in ((0, (0, 0)), (3, (1, 2))):
        rays = torch.nn.functional.pixel_shuffle(features[384 * k : 384 * (k + 1), latent][None], 8)[0].numpy()
        relative = _camera_from_rays(rays, K)
        np.testing.assert_allclose(ref @ relative, c2w[frame], atol=2e-4)  # the rays describe this camera ...
        # ... and the normal maps were rendered from it: re-render from the camera recovered from the rays.
        one = DrivingSignal(driving.codes[frame : frame + 1], driving.head_poses[frame : frame + 1])
        again = pipeline.render_normals(one, out.K[:1], (ref @ relative)[None], size, size)[0]
        covered = (out.normal_frames[frame] > 0).any(-1)
        assert covered.mean() > 0.05  # the head is in view
        assert np.mean(again != out.normal_frames[frame]) < 0.01
    if camera == "static-35":  # the novel view is 35 deg of yaw away from the photo's, in the rays themselves
        rel = np.linalg.inv(ref) @ c2w[0]
        assert np.degrees(np.arccos((np.trace(rel[:3, :3]) - 1) / 2)) == pytest.approx(35.0, abs=1e-3)


def test_c3_model_infers_with_landmarks_and_refuses_another_layout(assets, tmp_path, capsys):
    from factorportrait.transformer import FactorPortraitTransformer

    FactorPortraitTransformer.tiny(seed=0, expression_mode="landmarks", num_landmarks=68,
                                   landmark_layout="ibug68").save_pretrained(tmp_path / "c3")  # fmt: skip
    rng = np.random.default_rng(0)
    marks = dict(landmarks=rng.uniform(10, 50, (13, 68, 2)), landmark_visible=rng.random((13, 68)) > 0.2)
    np.savez(tmp_path / "marks.npz", **marks, landmark_layout="ibug68", width=64, height=64)
    base = ["--model", str(tmp_path / "c3"), "--image", str(assets / "portrait.png"), "--driving",
            str(assets / "driving.npz"), "--frames", "5", "--height", "32", "--width", "32", "--steps", "1",
            "--quiet"]  # fmt: skip
    out = tmp_path / "c3.mp4"
    assert main([*base, "--landmarks", str(tmp_path / "marks.npz"), "--out", str(out)]) == 0
    assert _frames(out).shape == (5, 32, 32, 3)
    assert main([*base, "--out", str(out)]) == 2  # no landmarks anywhere
    assert "--landmarks" in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", landmarks=rng.uniform(10, 50, (13, 5, 2)), landmark_layout="five")
    assert main([*base, "--landmarks", str(tmp_path / "other.npz"), "--out", str(out)]) == 2
    assert "trained on landmark layout 'ibug68' with 68 points" in capsys.readouterr().err


def test_frames_below_one_bad_images_and_guidance_without_dropout(assets, tmp_path, capsys, caplog):
    for frames in ("0", "-3"):
        assert _run(assets, tmp_path / "x.mp4", "--frames", frames) == 2
        assert f"--frames {frames}: must be at least 1" in capsys.readouterr().err
    (tmp_path / "not_an_image.png").write_text("hello")
    bad = ["--image", str(tmp_path / "not_an_image.png")]
    assert main([*_args(assets, tmp_path / "x.mp4"), *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not_an_image.png" in err and "Traceback" not in err
    # The tiny model's config records no dropout: guidance still runs but says why it is likely useless.
    with caplog.at_level("WARNING"):
        assert _run(assets, tmp_path / "g.mp4", "--guidance-scale", "2") == 0
    assert any("records no expression dropout" in r.getMessage() for r in caplog.records)
