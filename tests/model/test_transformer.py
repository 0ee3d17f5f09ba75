"""FactorPortraitTransformer on tiny random Wan configs (CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanTransformer3DModel

from factorportrait.transformer import RAY_CHANNELS, WAN_CONFIGS, FactorPortraitTransformer

H, W = 4, 4  # latent size: 32 x 32 pixels
SMALL = dict(controller_hidden_dim=64, controller_heads=4, text_len=8)


def _inputs(frames: int, batch: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    f = 1 + (frames - 1) // 4

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    return dict(
        latents=rnd(batch, 16, f, H, W),
        timestep=torch.full((batch,), 700.0),
        reference_latent=rnd(batch, 16, 1, H, W),
        normal_latents=rnd(batch, 16, f, H, W),
        ray_features=rnd(batch, RAY_CHANNELS, f, H, W),
        reference_rays=rnd(batch, RAY_CHANNELS, 1, H, W),
        expression_codes=rnd(batch, frames, 128),
    )


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(**WAN_CONFIGS["tiny"]).eval()


def test_fresh_model_equals_the_wrapped_wan(wan):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL).eval()
    x = _inputs(13, batch=2)
    x["timestep"] = torch.tensor([999.0, 3.0])
    with torch.no_grad():
        ours = model(**x, return_reference_frame=True).sample
        sequence = torch.cat([x["reference_latent"], x["latents"]], dim=2)
        theirs = wan(
            hidden_states=sequence, timestep=x["timestep"], encoder_hidden_states=model.prompt_embeds.expand(2, -1, -1)
        ).sample
    assert ours.shape == theirs.shape == (2, 16, 5, H, W)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("frames", "latent_frames"), [(13, 4), (25, 7), (49, 13), (81, 21)])
def test_output_shapes_for_the_paper_stages(wan, frames, latent_frames):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL).eval()
    with torch.no_grad():
        out = model(**_inputs(frames)).sample
    assert out.shape == (1, 16, latent_frames, H, W)


def _new_parameters(model: FactorPortraitTransformer) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters FactorPortrait adds to Wan (the frozen prompt embedding is not one)."""
    return {
        n: p
        for n, p in model.named_parameters()
        if p.requires_grad and (not n.startswith("wan.") or "patch_embedding" in n)
    }


def _train_a_little(model, steps=4, frames=5):
    """A few AdamW steps on new parameters only, toward a random target."""
    params = list(_new_parameters(model).values())
    opt = torch.optim.AdamW(params, lr=1e-2)
    x = _inputs(frames, seed=1)
    target = torch.randn_like(x["latents"])
    grads_seen = {n: False for n in _new_parameters(model)}
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(**x).sample - target).pow(2).mean()
        loss.backward()
        for n, p in _new_parameters(model).items():
            grads_seen[n] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
    return grads_seen


def test_every_condition_matters_once_trained_and_gradients_reach_every_new_module(wan):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL)
    grads_seen = _train_a_little(model)
    assert all(grads_seen.values()), [n for n, ok in grads_seen.items() if not ok]
    model.eval()
    x = _inputs(5, seed=2)
    with torch.no_grad():
        base = model(**x).sample
        for key in ("reference_latent", "normal_latents", "ray_features", "expression_codes"):
            changed = dict(x)
            changed[key] = torch.randn_like(x[key])
            delta = (model(**changed).sample - base).abs().max()
            assert delta > 1e-4, key


def test_expression_modulation_is_per_latent_frame(wan):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL)
    _train_a_little(model)
    model.eval()
    x = _inputs(9, seed=3)
    with torch.no_grad():
        offsets = model.controller(x["expression_codes"])
    assert offsets.shape == (1, 1 + 3, model.inner_dim)
    assert torch.count_nonzero(offsets[:, 0]) == 0  # the reference frame gets no expression offset
    assert (offsets[:, 1] - offsets[:, 2]).abs().max() > 0  # frames differ


def test_code_scale_multiplies_the_codes_before_the_controller():
    from factorportrait.expression import ExpressionController, code_scale_of

    codes = torch.zeros(6, 3)
    codes[:, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # std 1 (population), other columns 0
    assert code_scale_of(codes) == pytest.approx(math.sqrt(3.0))  # 1 / sqrt((1 + 0 + 0) / 3)
    assert code_scale_of(torch.ones(4, 3)) == 1.0  # codes that never vary: no scaling
    torch.manual_seed(0)
    plain = ExpressionController(code_dim=8, out_dim=16, hidden_dim=16, heads=2)
    scaled = ExpressionController(code_dim=8, out_dim=16, hidden_dim=16, heads=2, code_scale=20.0)
    scaled.load_state_dict(plain.state_dict())
    for module in (plain, scaled):
        torch.nn.init.normal_(module.group_proj.weight)  # a trained controller (fresh ones output zeros)
    scaled.group_proj.load_state_dict(plain.group_proj.state_dict())
    small = 0.05 * torch.randn(1, 9, 8)
    torch.testing.assert_close(scaled(small), plain(20.0 * small))
    with pytest.raises(ValueError, match="code_scale"):
        ExpressionController(code_scale=0.0)


def test_ablation_without_normals(wan):
    model = FactorPortraitTransformer.from_wan(wan, use_normals=False, **SMALL).eval()
    assert model.wan.patch_embedding.in_channels == 16 + RAY_CHANNELS
    x = _inputs(5)
    x.pop("normal_latents")
    with torch.no_grad():
        out = model(**x).sample
    assert out.shape == (1, 16, 2, H, W)


def test_save_and_load_round_trip(wan, tmp_path):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL)
    _train_a_little(model, steps=2)
    model.eval()
    model.save_pretrained(tmp_path / "fp")
    loaded = FactorPortraitTransformer.from_pretrained(tmp_path / "fp").eval()
    x = _inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).sample, model(**x).sample)


def test_from_wan_reads_a_local_diffusers_folder(wan, tmp_path):
    wan.save_pretrained(tmp_path / "Wan2.1-T2V-tiny" / "transformer")
    from_root = FactorPortraitTransformer.from_wan(tmp_path / "Wan2.1-T2V-tiny", **SMALL).eval()
    from_folder = FactorPortraitTransformer.from_wan(tmp_path / "Wan2.1-T2V-tiny" / "transformer", **SMALL).eval()
    reference = FactorPortraitTransformer.from_wan(wan, **SMALL).eval()
    x = _inputs(5)
    with torch.no_grad():
        expected = reference(**x).sample
        torch.testing.assert_close(from_root(**x).sample, expected)
        torch.testing.assert_close(from_folder(**x).sample, expected)
    with pytest.raises(FileNotFoundError, match="config.json"):
        FactorPortraitTransformer.from_wan(tmp_path / "missing")


def test_bad_inputs_get_clear_errors(wan):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL).eval()
    x = _inputs(5)
    with pytest.raises(ValueError, match="latents must have 16 channels"):
        model(**{**x, "latents": torch.randn(1, 8, 2, H, W)})
    with pytest.raises(ValueError, match="expression codes cover 9 frames"):
        model(**{**x, "expression_codes": torch.randn(1, 9, 128)})
    with pytest.raises(ValueError, match="ray_features must be"):
        model(**{**x, "ray_features": torch.randn(1, 100, 2, H, W)})
    with pytest.raises(ValueError, match="normal_latents must be"):
        model(**{**x, "normal_latents": torch.randn(1, 16, 3, H, W)})


def test_gradient_checkpointing_gives_the_same_gradients(wan):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL)
    _train_a_little(model, steps=1)
    x = _inputs(5, seed=4)

    def grads():
        model.zero_grad()
        model(**x).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_runs_and_stays_close(wan):
    model = FactorPortraitTransformer.from_wan(wan, **SMALL)
    _train_a_little(model, steps=2)
    model.eval()
    x = _inputs(5)
    with torch.no_grad():
        full = model(**x).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(**x).sample
    assert half.dtype in (torch.bfloat16, torch.float32)
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max() + 0.05


def test_camera_features_feed_the_model_and_reject_nan_cameras(wan):
    from factorportrait.conditions import camera_features

    frames, size = 5, 8 * H
    K = torch.tensor([[40.0, 0, size / 2], [0, 40.0, size / 2], [0, 0, 1]]).expand(frames, 3, 3)
    c2w = torch.eye(4).repeat(frames, 1, 1)
    c2w[:, 0, 3] = torch.linspace(0, 0.1, frames)
    ref = dict(reference_c2w=c2w[0], reference_K=K[0])
    rays, reference = camera_features(K, c2w, size, size, **ref)
    assert rays.shape == (RAY_CHANNELS, 2, H, W) and reference.shape == (RAY_CHANNELS, 1, H, W)
    # frame 0 taken from the reference camera: its rays equal the identity camera's, i.e. the reference's
    torch.testing.assert_close(rays[:, 0], reference[:, 0])
    # a reference 5 cm to the side: frame 0 is not the identity any more (moment = t x d, t = (-0.05, 0, 0))
    side = c2w[0].clone()
    side[0, 3] = 0.05
    shifted, _ = camera_features(K, c2w, size, size, reference_c2w=side, reference_K=K[0])
    assert (shifted[:, 0] - reference[:, 0]).abs().max() > 1e-3
    model = FactorPortraitTransformer.from_wan(wan, **SMALL).eval()
    x = _inputs(frames)
    x.update(ray_features=rays[None], reference_rays=reference[None])
    with torch.no_grad():
        assert model(**x).sample.shape == (1, 16, 2, H, W)
    bad = c2w.clone()
    bad[3, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="frame 3"):
        camera_features(K, bad, size, size, **ref)
