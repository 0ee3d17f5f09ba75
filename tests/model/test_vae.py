"""Wan 2.1 VAE wrapper: shapes, normalisation, agreement with raw diffusers, causality, loading, input errors.

All on a tiny random AutoencoderKLWan (real 8x/4x compression, 16 channels) with small videos; no weights needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factorportrait.vae import WanVideoVAE, frames_to_tensor, latent_frames, tensor_to_frames, tiny_vae_config

# Non-trivial per-channel statistics so a wrong axis, sign or mean/std swap shows up.
MEAN = [(-1.0) ** c * 0.1 * (c + 1) for c in range(16)]
STD = [0.5 + 0.25 * c for c in range(16)]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded 2-core box OpenMP barriers made single
    encodes take seconds instead of milliseconds; restore the setting for the rest of the session."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def vae() -> WanVideoVAE:
    return WanVideoVAE.tiny(seed=0)


@pytest.fixture(scope="module")
def stats_vae() -> WanVideoVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return WanVideoVAE.from_config({**tiny_vae_config(), "latents_mean": MEAN, "latents_std": STD})


def _video(t: int, h: int = 32, w: int = 32, b: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth random video [B, 3, T, H, W] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, t, h // 4, w // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(t, h, w), mode="trilinear")


@pytest.mark.parametrize(("t", "f"), [(1, 1), (5, 2), (9, 3), (13, 4), (25, 7), (49, 13), (81, 21)])
def test_latent_frames(t: int, f: int) -> None:
    assert latent_frames(t) == f
    assert WanVideoVAE.latent_frames(t) == f


@torch.no_grad()
@pytest.mark.parametrize(("t", "f"), [(1, 1), (5, 2), (9, 3), (13, 4)])
def test_encode_shapes(vae: WanVideoVAE, t: int, f: int) -> None:
    z = vae.encode_video(_video(t, 16, 16))
    assert z.shape == (1, 16, f, 2, 2)
    assert z.shape == vae.latent_shape(t, 16, 16)


@torch.no_grad()
def test_encode_non_square_and_batch(vae: WanVideoVAE) -> None:
    z = vae.encode_video(_video(5, 32, 48, b=2))
    assert z.shape == (2, 16, 2, 4, 6)
    assert vae.encode_image(_video(1, 32, 48)[:, :, 0]).shape == (1, 16, 1, 4, 6)


def test_normalize_matches_hand_computation(stats_vae: WanVideoVAE) -> None:
    z = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    n = stats_vae.normalize(z)
    for c in range(16):
        torch.testing.assert_close(n[:, c], (z[:, c] - MEAN[c]) / STD[c], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats_vae.denormalize(n), z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats_vae.normalize(stats_vae.denormalize(z)), z, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_encode_equals_raw_diffusers_plus_normalisation(stats_vae: WanVideoVAE) -> None:
    x = _video(9, 32, 32, b=2, seed=3)
    # Independent path: the diffusers model directly, then the per-channel formula written out by hand.
    raw = stats_vae.model.encode(x).latent_dist.mean
    mean = torch.tensor(MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(STD).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(stats_vae.encode_video(x), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    # And decode = raw decode of the denormalised latents.
    z = stats_vae.encode_video(x)
    torch.testing.assert_close(stats_vae.decode(z), stats_vae.model.decode(z * std + mean).sample, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sampling_uses_generator(vae: WanVideoVAE) -> None:
    x = _video(5, 16, 16)
    a = vae.encode_video(x, sample=True, generator=torch.Generator().manual_seed(7))
    b = vae.encode_video(x, sample=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, vae.encode_video(x))  # the mode differs from a draw


@torch.no_grad()
@pytest.mark.parametrize("t", [1, 5, 9])
def test_decode_roundtrip_shape(vae: WanVideoVAE, t: int) -> None:
    x = _video(t, 32, 48)
    y = vae.decode(vae.encode_video(x))
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert y.min() >= -1.0 and y.max() <= 1.0


@torch.no_grad()
def test_causality_first_frame(vae: WanVideoVAE) -> None:
    x = _video(9, 32, 32, b=2, seed=5)
    video_latents = vae.encode_video(x)
    image_latents = vae.encode_image(x[:, :, 0])
    torch.testing.assert_close(image_latents, video_latents[:, :, :1], rtol=1e-5, atol=1e-5)
    # Changing later frames must not touch latent frame 0.
    x2 = x.clone()
    x2[:, :, 1:] = -x2[:, :, 1:]
    torch.testing.assert_close(vae.encode_video(x2)[:, :, :1], video_latents[:, :, :1], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_save_and_from_pretrained(tmp_path, stats_vae: WanVideoVAE) -> None:
    stats_vae.model.save_pretrained(tmp_path / "vae")
    loaded = WanVideoVAE.from_pretrained(tmp_path)
    assert list(loaded.config.latents_mean) == pytest.approx(MEAN)
    x = _video(5, 16, 16)
    torch.testing.assert_close(loaded.encode_video(x), stats_vae.encode_video(x), rtol=0, atol=0)
    # subfolder=None reads the folder itself.
    torch.testing.assert_close(
        WanVideoVAE.from_pretrained(tmp_path / "vae", subfolder=None).encode_video(x), loaded.encode_video(x)
    )


def test_from_pretrained_missing(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        WanVideoVAE.from_pretrained(missing)
    (tmp_path / "empty" / "vae").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"vae[/\\]config\.json"):
        WanVideoVAE.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "vae" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weights"):
        WanVideoVAE.from_pretrained(tmp_path / "empty")


def test_bad_inputs(vae: WanVideoVAE) -> None:
    with pytest.raises(ValueError, match=r"T=12.*13, 25, 49, 81"):
        vae.encode_video(torch.zeros(1, 3, 12, 32, 32))
    with pytest.raises(ValueError, match=r"multiples of 8.*H=30, W=32"):
        vae.encode_video(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match=r"3 \(RGB\) channels.*got 4"):
        vae.encode_video(torch.zeros(1, 4, 5, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        vae.encode_video(torch.zeros(3, 5, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vae.encode_image(torch.zeros(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 16, F, h, w\]"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(ValueError, match="T=12"):
        latent_frames(12)


def test_frames_tensor_roundtrip() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 16, 24, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (1, 3, 5, 16, 24) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x[0, :, 2, 3, 4].tolist() == pytest.approx((frames[2, 3, 4] / 127.5 - 1.0).tolist())
    np.testing.assert_array_equal(tensor_to_frames(x), frames)
    np.testing.assert_array_equal(tensor_to_frames(frames_to_tensor(torch.from_numpy(frames))[0]), frames)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(frames.astype(np.float32))


def test_to_and_passthroughs(vae: WanVideoVAE) -> None:
    assert vae.device.type == "cpu" and vae.dtype == torch.float32
    assert not any(p.requires_grad for p in vae.model.parameters())  # frozen
    small = WanVideoVAE.tiny(seed=0).to(dtype=torch.float64)
    assert small.dtype == torch.float64
    with torch.no_grad():
        assert small.encode_video(_video(1, 16, 16)).dtype == torch.float64  # inputs are cast to the VAE dtype
    small.enable_slicing().enable_tiling(tile_sample_min_height=64).disable_tiling().disable_slicing()
    assert not small.model.use_tiling and not small.model.use_slicing


def test_rejects_non_wan21_layout() -> None:
    with pytest.raises(ValueError, match="Wan 2.1 VAE layout"):
        WanVideoVAE.from_config({**tiny_vae_config(), "temperal_downsample": [False, False, True]})
