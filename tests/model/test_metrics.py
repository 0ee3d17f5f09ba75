"""Metrics (paper Sec. 5.1): closed forms, skimage agreement, local-weight loading and the model-eval CLI."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from factorportrait.metrics import (
    LPIPS,
    MetricSuite,
    feature_statistics,
    frechet_distance,
    load_feature_network,
    make_lpips_state_dict,
    psnr,
    ssim,
)

SMALL_WIDTHS = (4, 8, 8, 8, 8)  # a narrow vgg16-layout backbone keeps LPIPS tests fast


def smooth_video(t: int = 4, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, moving colour pattern: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.random(3) * 6.28
    frames = [
        np.stack([np.sin(6 * xx + 4 * yy + phase[c] + 0.3 * i) for c in range(3)], -1) * 0.4 + 0.5 for i in range(t)
    ]
    return (np.stack(frames) * 255).round().astype(np.uint8)


def add_noise(video: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(video.shape) * sigma * 255
    return np.clip(video + noise, 0, 255).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------------- pixel metrics
def test_psnr_closed_form():
    gt = torch.full((3, 3, 16, 16), 0.5, dtype=torch.float64)
    for d in (0.01, 0.1, 0.25):
        assert psnr(gt + d, gt) == pytest.approx(10 * math.log10(1 / d**2), abs=1e-6)
    assert psnr(gt, gt) == math.inf


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    video = smooth_video(t=3)
    noisy = add_noise(video, 0.05)
    ref = np.mean(
        [
            structural_similarity(
                noisy[i].astype(np.float64) / 255,
                video[i].astype(np.float64) / 255,
                channel_axis=-1,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for i in range(len(video))
        ]
    )
    assert ssim(noisy, video) == pytest.approx(ref, abs=1e-4)
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-12)
    # Float [T, 3, H, W] layout with another data range gives the same value.
    f = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2).double()  # noqa: E731
    assert ssim(f(noisy), f(video), data_range=255.0) == pytest.approx(ref, abs=1e-4)


def test_degradations_rank_in_order():
    video = smooth_video()
    light, heavy = add_noise(video, 0.02), add_noise(video, 0.15)
    assert psnr(video, video) == math.inf > psnr(light, video) > psnr(heavy, video)
    assert ssim(video, video) == pytest.approx(1.0) and 1.0 > ssim(light, video) > ssim(heavy, video)


# --------------------------------------------------------------------------------------------------------- Fréchet
def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.random(5) + 0.1, rng.random(5) + 0.1
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-6)
    mu, sigma = feature_statistics(rng.standard_normal((50, 5)))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------- LPIPS
def test_lpips_identity_positive_symmetric(tmp_path):
    path = tmp_path / "lpips.pth"
    torch.save(make_lpips_state_dict(SMALL_WIDTHS), path)
    model = LPIPS(path)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(model(x, x), torch.zeros(2))
    d = model(x, y)
    assert (d > 0).all() and torch.allclose(d, model(y, x))


def test_lpips_accepts_torchvision_vgg16_keys_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    sd = {f"backbone.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    sd.update({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))})
    model = LPIPS(sd)  # official lpips head names are accepted
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert model(x, x).item() == pytest.approx(0.0, abs=1e-6)
    small = tmp_path / "lpips.safetensors"
    save_file(make_lpips_state_dict(SMALL_WIDTHS), str(small))
    assert LPIPS(small)(x, -x).item() > 0


def test_lpips_missing_file_and_wrong_keys(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth.*backbone"):
        LPIPS(missing)
    sd = make_lpips_state_dict(SMALL_WIDTHS)
    del sd["lin3.weight"], sd["backbone.0.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"lin3\.weight") as info:
        LPIPS(bad)
    assert "backbone.0.bias" in str(info.value)


# ----------------------------------------------------------------------------------------- TorchScript networks
class TinyEmbedder(nn.Module):
    """A stand-in ArcFace / expression / Inception net: image [N, 3, H, W] -> [N, dim]."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.head = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class TinyVideoNet(nn.Module):
    """A stand-in I3D: video [N, 3, T, H, W] -> [N, dim]."""

    def __init__(self, dim: int = 400):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, (1, 3, 3), stride=(1, 8, 8))
        self.head = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3, 4)))


def script(module: nn.Module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the exchange format
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(make_lpips_state_dict(SMALL_WIDTHS), d / "lpips.pth")
    return {
        "lpips": str(d / "lpips.pth"),
        "arcface": str(script(TinyEmbedder(512), d / "arcface.pt")),
        "expression": str(script(TinyEmbedder(64), d / "expression.pt")),
        # Narrow stand-ins for Inception (2048) and I3D (400): sqrtm of a 2048x2048 covariance alone takes seconds.
        "inception": str(script(TinyEmbedder(16), d / "inception.pt")),
        "i3d": str(script(TinyVideoNet(16), d / "i3d.pt")),
    }


def test_suite_with_all_weights(weights):
    suite = MetricSuite(weights, fvd_clip_len=2)
    video = smooth_video(t=4)
    same = suite.evaluate_pair(video, video, group="a")
    assert same["csim"] == pytest.approx(1.0, abs=1e-5)
    assert same["aed"] == pytest.approx(0.0, abs=1e-6) and same["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    noisy = suite.evaluate_pair(add_noise(video, 0.1), video, group="b")
    assert noisy["lpips"] > 0 and noisy["aed"] > 0 and noisy["csim"] < 1
    res_a = suite.finish("a")
    assert res_a["fid"] == pytest.approx(0.0, abs=1e-3) and res_a["fvd"] == pytest.approx(0.0, abs=1e-3)
    assert res_a["iqa"] is None and res_a["n_pairs"] == 1
    res_all = suite.finish()
    assert res_all["n_pairs"] == 2 and res_all["fid"] > 0 and res_all["fvd"] is not None
    assert suite.groups == ["a", "b"]


def test_feature_network_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="arcface_r100.pt"):
        load_feature_network(tmp_path / "arcface_r100.pt", "csim")
    with pytest.raises(FileNotFoundError, match="i3d.pt"):
        MetricSuite({"i3d": str(tmp_path / "i3d.pt")})


def test_suite_without_weights_reports_none():
    suite = MetricSuite({})
    video = smooth_video(t=3)
    res = suite.evaluate_pair(video, add_noise(video, 0.05))
    assert res["lpips"] is None and res["csim"] is None and res["aed"] is None
    assert 20 < res["psnr"] < 40 and 0 < res["ssim"] < 1
    out = suite.finish()
    assert out["fid"] is None and out["fvd"] is None and out["iqa"] is None and out["psnr"] == res["psnr"]


# --------------------------------------------------------------------------------------------------- model-eval CLI
def write_videos(root, names_modes, video):
    from factorportrait.video_io import write_mp4

    for name, mode in names_modes:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(video, path, crf=0)  # crf 0: lossless x264, up to the yuv420p conversion
        if mode:
            path.with_suffix(".json").write_text(json.dumps({"control_mode": mode}))


def test_model_eval_end_to_end(tmp_path, weights, capsys):
    from factorportrait.cli.evaluate import main

    video = smooth_video(t=5, h=48, w=64)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write_videos(pred, [("a.mp4", "expression"), ("sub/b.mp4", "camera")], video)
    write_videos(gt, [("a.mp4", None), ("sub/b.mp4", None)], video)
    out = tmp_path / "results"
    rc = main(["--pred", str(pred), "--gt", str(gt), "--out", str(out), "--dataset", "Tiny", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Dataset | Control mode | PSNR | SSIM | LPIPS | CSIM | AED | IQA | FID | FVD |" in printed
    assert "| Tiny | expression |" in printed and "| Tiny | camera |" in printed and "| Tiny | all |" in printed
    assert "n/a" in printed
    results = json.loads((out / "results.json").read_text())
    for name in ("a.mp4", "sub/b.mp4"):
        p = results["pairs"][name]
        assert (p["psnr"] == "inf" or p["psnr"] >= 40) and p["ssim"] > 0.99 and p["lpips"] is None
    assert results["groups"]["all"]["n_pairs"] == 2 and results["groups"]["all"]["fid"] is None
    assert (out / "results.md").read_text().startswith("| Dataset |")

    # With weights: every metric but IQA is a number.
    rc = main(["--pred", str(pred), "--gt", str(gt), "--out", str(out), "--group-by", "none", "--device", "cpu",
               "--weights", ",".join(f"{k}={v}" for k, v in weights.items())])  # fmt: skip
    assert rc == 0
    row = json.loads((out / "results.json").read_text())["groups"]["all"]
    assert row["lpips"] < 1e-3 and row["csim"] > 0.999 and row["fid"] is not None and row["iqa"] is None


def test_model_eval_errors(tmp_path, capsys):
    from factorportrait.cli.evaluate import main

    video = smooth_video(t=4, h=32, w=32)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write_videos(pred, [("x.mp4", None), ("y.mp4", None)], video)
    write_videos(gt, [("x.mp4", None)], video)
    assert main(["--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "r")]) == 2
    assert "y.mp4" in capsys.readouterr().err

    write_videos(gt, [("y.mp4", None)], video[:3])  # one frame short
    assert main(["--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "y.mp4" in err and "frame counts" in err

    write_videos(gt, [("y.mp4", None)], smooth_video(t=4, h=32, w=48))
    assert main(["--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "r")]) == 2
    assert "frame sizes" in capsys.readouterr().err

    assert main(["--pred", str(pred), "--gt", str(gt), "--weights", f"lpips={tmp_path / 'gone.pth'}"]) == 2
    assert "gone.pth" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_model_eval_refuses_ground_truths_without_prediction_unless_allow_partial(tmp_path, capsys):
    from factorportrait.cli.evaluate import main

    video = smooth_video(t=4, h=32, w=32)
    pred, gt, out = tmp_path / "pred", tmp_path / "gt", tmp_path / "r"
    write_videos(pred, [("a.mp4", None)], video)
    write_videos(gt, [("a.mp4", None), ("b.mp4", None), ("sub/c.mp4", None)], video)
    args = ["--pred", str(pred), "--gt", str(gt), "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 of 3 ground-truth videos" in err and "b.mp4, sub/c.mp4" in err and "--allow-partial" in err
    assert not out.exists()
    assert main([*args, "--allow-partial"]) == 0
    assert "no prediction for b.mp4, sub/c.mp4" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["missing_predictions"] == ["b.mp4", "sub/c.mp4"] and list(results["pairs"]) == ["a.mp4"]
