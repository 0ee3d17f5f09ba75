"""Training utilities: flow matching (CONVENTIONS 7). (EMA, schedules and checkpoints are diffusers' / accelerate's;
the trainer's use of them is tested in test_training.py and test_distributed.py.)

Expectations are hand values, closed forms or behaviour (a resumed run matches an uninterrupted one), not
re-implementations of the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from factorportrait.training.flow_matching import (
    euler_sample,
    flow_matching_loss,
    noisy_latents,
    sample_sigmas,
    shift_sigma,
    sigma_schedule,
    timesteps_from_sigmas,
    velocity_target,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- flow matching
def test_shift_sigma_hand_values_endpoints_monotone() -> None:
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)  # 1.5 / 2
    assert shift_sigma(0.25, 5.0) == pytest.approx(0.625)  # 1.25 / 2
    assert shift_sigma(0.2, 1.0) == pytest.approx(0.2)  # k = 1 is the identity
    for k in (0.5, 1.0, 3.0, 5.0):
        assert shift_sigma(0.0, k) == 0.0
        assert shift_sigma(1.0, k) == pytest.approx(1.0)
        s = shift_sigma(torch.linspace(0, 1, 101, dtype=torch.float64), k)
        assert bool((s[1:] > s[:-1]).all())
    # k > 1 moves every interior sigma towards noise.
    s = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert bool((shift_sigma(s, 3.0) > s).all())
    with pytest.raises(ValueError):
        shift_sigma(0.5, 0.0)


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal"])
def test_sample_sigmas_range_determinism_median(distribution: str) -> None:
    s = sample_sigmas(8192, _gen(0), shift=3.0, distribution=distribution)
    assert s.shape == (8192,) and s.dtype == torch.float32
    assert bool(((s > 0) & (s < 1)).all())
    assert torch.equal(s, sample_sigmas(8192, _gen(0), shift=3.0, distribution=distribution))
    assert not torch.equal(s, sample_sigmas(8192, _gen(1), shift=3.0, distribution=distribution))
    # Both bases have median 0.5 (sigmoid(0) = 0.5); the shift is monotone, so the median maps to 0.75.
    assert float(s.median()) == pytest.approx(0.75, abs=0.02)


def test_sample_sigmas_distribution_shape() -> None:
    # Uniform base: P(s' <= shift(0.25)) = 0.25 for the shifted sample.
    s = sample_sigmas(8192, _gen(2), shift=5.0)
    assert float((s <= shift_sigma(0.25, 5.0)).float().mean()) == pytest.approx(0.25, abs=0.02)
    # Logit-normal with mean 1: median sigmoid(1) = 0.7311 before the shift; k = 1 leaves it alone.
    s = sample_sigmas(8192, _gen(3), shift=1.0, distribution="logit_normal", logit_mean=1.0)
    assert float(s.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.02)
    # Tails of a very wide logit-normal saturate sigmoid in float32; they are still kept inside (0, 1).
    s = sample_sigmas(4096, _gen(4), shift=3.0, distribution="logit_normal", logit_std=40.0)
    assert bool(((s > 0) & (s < 1)).all())
    with pytest.raises(ValueError):
        sample_sigmas(4, _gen(0), distribution="beta")


def test_interpolation_endpoints_and_target_is_derivative() -> None:
    g = _gen(5)
    x0 = torch.randn(3, 4, 2, 5, 6, generator=g, dtype=torch.float64)  # [B, C, F, h, w]
    e = torch.randn(3, 4, 2, 5, 6, generator=g, dtype=torch.float64)
    x = noisy_latents(x0, e, torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64))
    assert torch.equal(x[0], x0[0])  # s = 0: data
    assert torch.equal(x[1], e[1])  # s = 1: noise
    assert float((x[2] - (0.7 * x0[2] + 0.3 * e[2])).abs().max()) < 1e-12
    # d x_t / d s by central differences equals the target e - x0 (x_t is linear in s).
    s = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    h = 1e-4
    fd = (noisy_latents(x0, e, s + h) - noisy_latents(x0, e, s - h)) / (2 * h)
    assert float((fd - velocity_target(x0, e)).abs().max()) < 1e-8
    assert torch.equal(velocity_target(x0, e), e - x0)
    # Low-precision latents keep their dtype.
    xb = noisy_latents(x0.bfloat16(), e.bfloat16(), s.float())
    assert xb.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        noisy_latents(x0, e, s[:2])


def test_timesteps_and_loss() -> None:
    assert torch.equal(timesteps_from_sigmas(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([0.0, 250.0, 1000.0]))
    target = torch.randn(2, 3, 4, 2, 2, generator=_gen(6))
    assert float(flow_matching_loss(target.clone(), target)) == 0.0
    # Per-sample errors 1 and 4 (constant offsets 1 and 2): plain mean 2.5; weights (1, 3) -> (1 + 12) / 2.
    pred = target.clone()
    pred[0] += 1.0
    pred[1] += 2.0
    assert float(flow_matching_loss(pred, target)) == pytest.approx(2.5, rel=1e-5)
    assert float(flow_matching_loss(pred, target, torch.tensor([1.0, 3.0]))) == pytest.approx(6.5, rel=1e-5)
    assert flow_matching_loss(pred.bfloat16(), target.bfloat16()).dtype == torch.float32


def test_sigma_schedule_hand_values() -> None:
    s = sigma_schedule(2, 3.0, dtype=torch.float64)
    assert s.tolist() == pytest.approx([1.0, 0.75, 0.0])
    s = sigma_schedule(10, 5.0)
    assert s.shape == (11,) and float(s[0]) == 1.0 and float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())


def test_euler_lands_on_data_point_with_exact_velocity() -> None:
    x0 = torch.randn(2, 4, 3, 5, 5, generator=_gen(7), dtype=torch.float64)
    seen_t: list[float] = []

    def v_exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Conditional velocity of the single data point x0: along x_s = x0 + s (e - x0), v = (x_s - x0) / s.
        assert t.shape == (2,)
        seen_t.append(float(t[0]))
        s = (t / 1000.0).reshape(-1, 1, 1, 1, 1)
        return (x - x0) / s

    out = euler_sample(v_exact, x0.shape, sigma_schedule(7, 3.0, dtype=torch.float64), _gen(8), dtype=torch.float64)
    assert float((out - x0).abs().max()) < 1e-10
    assert seen_t[0] == 1000.0 and len(seen_t) == 7

    # Zero velocity returns the starting noise: the sampler starts from randn drawn with the generator.
    out = euler_sample(lambda x, t: torch.zeros_like(x), (2, 3), sigma_schedule(3, 3.0), _gen(9))
    assert torch.equal(out, torch.randn(2, 3, generator=_gen(9)))
    with pytest.raises(ValueError):
        euler_sample(v_exact, x0.shape, torch.tensor([1.0, 0.5]), _gen(0))  # does not end at 0
