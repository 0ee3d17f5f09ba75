"""The expression encoder: architecture, weight loading, roll normalisation of face crops, video encoding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from factorportrait.expression_encoder import (
    ExpressionEncoder,
    centre_crop_face,
    crop_faces,
    encode_video,
    roll_normalise,
)


@pytest.fixture(scope="module")
def encoder() -> ExpressionEncoder:
    """A randomly initialised encoder with random BatchNorm statistics (so a weight round trip must carry them)."""
    torch.manual_seed(0)
    model = ExpressionEncoder()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


def _images(n: int, size: int = 224, seed: int = 1) -> torch.Tensor:  # [n, 3, size, size] in [-1, 1]
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_output_shape_and_determinism(encoder):
    images = _images(2)
    with torch.no_grad():
        first, second = encoder(images), encoder(images)
    assert first.shape == (2, 128)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    # The ImageNet statistics are constants, not checkpoint content.
    assert {"mean", "std"}.isdisjoint(encoder.state_dict())


def test_from_file_round_trip(encoder, tmp_path: Path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(tmp_path / "enc.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "enc.pt")

    images = _images(1, seed=2)
    with torch.no_grad():
        reference = encoder(images)
        for name in ("enc.safetensors", "enc.pt"):
            loaded = ExpressionEncoder.from_file(tmp_path / name)
            assert not loaded.training
            assert torch.equal(loaded(images), reference), name


def test_from_file_missing_file(tmp_path: Path):
    path = tmp_path / "nowhere" / "encoder.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        ExpressionEncoder.from_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "--expression-encoder" in message
    assert "Synthetic datasets (datagen) carry their codes" in message


def test_from_file_wrong_keys(encoder, tmp_path: Path):
    state = dict(encoder.state_dict())
    del state["backbone.fc.weight"]
    state["head.extra"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"backbone\.fc\.weight") as info:
        ExpressionEncoder.from_file(tmp_path / "bad.pth")
    assert "head.extra" in str(info.value)

    # Right keys, wrong shapes (a 64-d head loaded as 128-d): also a ValueError, not a bare RuntimeError.
    state = dict(encoder.state_dict())
    state["backbone.fc.weight"] = torch.zeros(64, 512)
    state["backbone.fc.bias"] = torch.zeros(64)
    torch.save(state, tmp_path / "dim.pt")
    with pytest.raises(ValueError, match="size mismatch"):
        ExpressionEncoder.from_file(tmp_path / "dim.pt")


# --- roll normalisation ---------------------------------------------------------------------------------------------


def _rotate(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:  # [..., 2] -> [..., 2]
    c, s = math.cos(angle), math.sin(angle)
    return (points - centre) @ np.array([[c, s], [-s, c]]) + centre  # row vectors: p' = R p with R = [[c,-s],[s,c]]


def _render(height: int, width: int, blobs: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Analytic scene: background -1 plus Gaussian blobs (x, y, sigma, amplitude) -> float [3, H, W]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.full((height, width), -1.0)
    for x, y, sigma, amplitude in blobs:
        image += amplitude * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat(image[None], 3, axis=0)


def _blob_centroid(channel: torch.Tensor, threshold: float = 0.0) -> tuple[float, float]:  # -> (x, y)
    weights = (channel - threshold).clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(channel.shape[0]), torch.arange(channel.shape[1]), indexing="ij")
    total = weights.sum()
    assert total > 0, "no blob found"
    return float((weights * xs).sum() / total), float((weights * ys).sum() / total)


def test_roll_normalise_levels_tilted_eyes():
    size, scale = 224, 2.2
    centre = np.array([150.0, 120.0])
    angle = math.radians(25.0)
    eyes = _rotate(np.array([[centre[0] - 40, centre[1]], [centre[0] + 40, centre[1]]]), angle, centre)  # d = 80
    scene = _render(240, 320, [(x, y, 2.5, 2.0) for x, y in eyes])  # two bright dots on a line tilted by 25 deg
    image = np.clip((scene.transpose(1, 2, 0) + 1) * 127.5, 0, 255).round().astype(np.uint8)  # uint8 [H, W, 3]

    crop = roll_normalise(image, tuple(eyes[0]), tuple(eyes[1]), size=size, scale=scale)
    assert crop.shape == (3, size, size)
    assert crop.min() >= -1 and crop.max() <= 1
    # Brightest blobs: one in each half of the crop.
    gray = crop.mean(0)
    left_x, left_y = _blob_centroid(gray[:, : size // 2])
    right_x, right_y = _blob_centroid(gray[:, size // 2 :])
    right_x += size // 2
    assert abs(left_y - right_y) < 1.5  # eye line horizontal: roll removed
    assert abs((left_x + right_x) / 2 - (size - 1) / 2) < 1.5  # symmetric about the vertical centre line
    assert abs((right_x - left_x) - size / scale) < 2.0  # inter-ocular distance scaled to size / scale
    assert left_y < size / 2  # the crop centre sits below the eyes


def test_roll_normalise_is_roll_invariant():
    """Rendering the same scene rotated by `a` (analytically: no resampling on the input side) gives the same crop."""
    height = width = 320
    centre = np.array([160.0, 160.0])
    # A smooth, asymmetric "face" in upright coordinates: eyes, nose, mouth corner, a broad cheek.
    eyes = np.array([[120.0, 140.0], [200.0, 140.0]])
    features = np.array([[160.0, 175.0], [140.0, 200.0], [185.0, 205.0], [215.0, 185.0]])
    sigmas = [4.0, 4.0, 6.0, 5.0, 4.5, 10.0]
    amplitudes = [1.5, 1.5, 0.8, 1.0, 0.6, 0.5]

    def crop_at(angle: float) -> torch.Tensor:
        points = _rotate(np.concatenate([eyes, features]), angle, centre)
        blobs = [(x, y, s, a) for (x, y), s, a in zip(points, sigmas, amplitudes, strict=True)]
        scene = torch.from_numpy(_render(height, width, blobs)).float()
        return roll_normalise(scene, tuple(points[0]), tuple(points[1]), size=128)

    upright = crop_at(0.0)
    for degrees in (17.0, -33.0, 90.0):
        rotated = crop_at(math.radians(degrees))
        difference = (rotated - upright).abs()
        assert difference.max() < 0.03, degrees  # bilinear interpolation error only
        assert difference.mean() < 0.003, degrees
    assert upright.std() > 0.1  # the comparison is not between two blank crops


def test_centre_crop_face_shape_and_range():
    frame = np.zeros((96, 160, 3), dtype=np.uint8)
    frame[:, 32:128] = 255  # the central square (width 96 = height) is white, the sides black
    crop = centre_crop_face(frame, size=64)
    assert crop.shape == (3, 64, 64)
    assert torch.allclose(crop, torch.ones_like(crop), atol=1e-5)


def test_encode_video_shapes(encoder):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 96, 128, 3), dtype=np.uint8)
    eyes = np.tile(np.array([[[50.0, 40.0], [78.0, 42.0]]]), (5, 1, 1))  # [5, 2, 2]

    encoder.train()  # encode_video must switch to eval (BatchNorm running stats) and restore the mode
    try:
        codes = encode_video(encoder, frames, eyes, batch_size=2)
        assert encoder.training
    finally:
        encoder.eval()
    assert codes.shape == (5, 128)
    # Batching-invariant (checked on smaller crops: the encoder pools adaptively, and the test stays fast).
    small = [encode_video(encoder, frames, eyes, batch_size=b, size=112) for b in (2, 5)]
    assert torch.allclose(small[0], small[1], atol=1e-4)
    assert encode_video(encoder, frames, None, batch_size=4).shape == (5, 128)


def test_crop_faces_undoes_roll_and_frames_the_landmark_box():
    """A coordinate-coded image (each pixel holds its upright face-frame coordinates) and landmarks on a circle of
    radius 12 px rotated by 30 deg: the crop must hold the upright coordinates of a `margin` x 24 px square around
    the circle's centre, row and column aligned (bilinear sampling of a linear field is exact)."""
    height = width = 64
    centre, radius, angle, margin, size = np.array([30.0, 34.0]), 12.0, math.radians(30.0), 1.3, 16
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    # canonical points: a dense circle for the box, eyes 36-41 / 42-47 on the horizontal axis (left / right)
    k = np.arange(68)
    canon = radius * np.stack([np.cos(2 * np.pi * k / 68), np.sin(2 * np.pi * k / 68)], axis=1)
    canon[36:42], canon[42:48] = [-5.0, 0.0], [5.0, 0.0]
    points = canon @ rotation.T + centre  # continuous pixel coordinates (pixel i spans [i, i + 1))
    v, u = np.mgrid[0:height, 0:width] + 0.5  # pixel centres, continuous coordinates
    upright = (np.stack([u - centre[0], v - centre[1]], axis=-1)) @ rotation  # R^T (p - c), [H, W, 2]
    image = torch.zeros(1, 3, height, width)
    image[0, 0], image[0, 1] = torch.from_numpy(upright[..., 0] / 32), torch.from_numpy(upright[..., 1] / 32)

    crop = crop_faces(image, torch.from_numpy(points)[None].float(), size, margin)[0]
    side = margin * 2 * radius  # the box of a circle is its diameter whatever the rotation
    steps = (np.arange(size) + 0.5) / size - 0.5
    expected_a = np.broadcast_to(side * steps[None, :], (size, size)) / 32  # varies along columns only
    expected_b = np.broadcast_to(side * steps[:, None], (size, size)) / 32  # along rows only
    assert np.abs(crop[0].numpy() - expected_a).max() < 0.01  # 0.01 = 0.3 px of the 24 px box
    assert np.abs(crop[1].numpy() - expected_b).max() < 0.01
