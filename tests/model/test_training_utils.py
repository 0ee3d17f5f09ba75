"""Training utilities: flow matching (CONVENTIONS 7), EMA, atomic checkpoints, learning-rate schedules.

Expectations are hand values, closed forms or behaviour (a resumed run matches an uninterrupted one), not
re-implementations of the code under test.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from factorportrait.training.checkpoints import (
    capture_rng_state,
    checkpoint_step,
    cleanup_partial,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from factorportrait.training.ema import EMA
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
from factorportrait.training.schedule import warmup_constant, warmup_cosine


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


# ------------------------------------------------------------------------------------------------------ EMA
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model under `.module`, names prefixed "module."."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.module = m


def test_ema_hand_average_over_three_updates() -> None:
    net = _Net()
    ema = EMA(net, decay=0.5, warmup=False)
    assert set(ema.shadow) == {"w"}  # frozen parameters are not averaged
    for value in (2.0, 4.0, 8.0):
        net.w.data.fill_(value)
        ema.update(_Wrapper(net))  # wrapped like DDP: must unwrap
    # s = 0 -> 0.5*0 + 0.5*2 = 1 -> 0.5*1 + 0.5*4 = 2.5 -> 0.5*2.5 + 0.5*8 = 5.25
    assert ema.shadow["w"].tolist() == [5.25, 5.25, 5.25]
    assert ema.num_updates == 3

    # Warmup: decays min(0.999, (1+t)/(10+t)) = 0.1, 2/11, 0.25 for t = 0, 1, 2.
    net = _Net()
    ema = EMA(net, decay=0.999)
    expected = 0.0
    for value, d in zip((1.0, 3.0, -2.0), (0.1, 2 / 11, 0.25), strict=True):
        assert ema.current_decay() == pytest.approx(d)
        net.w.data.fill_(value)
        ema.update(net)
        expected = d * expected + (1 - d) * value
    assert float(ema.shadow["w"][0]) == pytest.approx(expected, rel=1e-6)
    assert EMA(net, decay=0.9).current_decay() == pytest.approx(0.1)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_store_restore_swap_and_state_round_trip() -> None:
    net = _Net()
    ema = EMA(net, decay=0.5, warmup=False)
    net.w.data.fill_(4.0)
    ema.update(net)  # shadow 2
    ema.store(net)
    ema.copy_to(net)
    assert net.w.tolist() == [2.0, 2.0, 2.0]
    ema.restore(net)
    assert net.w.tolist() == [4.0, 4.0, 4.0]
    with ema.swapped(_Wrapper(net)):
        assert net.w.tolist() == [2.0, 2.0, 2.0]
    assert net.w.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(RuntimeError):
        ema.restore(net)

    other = EMA(_Net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.shadow["w"].tolist() == [2.0, 2.0, 2.0]
    assert (other.decay, other.warmup, other.num_updates) == (0.5, False, 1)
    net.w.data.fill_(6.0)
    ema.update(net)
    other.update(net)
    assert torch.equal(ema.shadow["w"], other.shadow["w"])  # 0.5*2 + 0.5*6 = 4 in both

    bf16 = _Net().to(torch.bfloat16)
    assert EMA(bf16).shadow["w"].dtype == torch.float32


# ----------------------------------------------------------------------------------------------- checkpoints
def _make_run(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, EMA]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    return model, opt, warmup_cosine(opt, 2, 10), EMA(model, decay=0.9)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, sched, ema: EMA) -> None:
    # Data from all three global RNGs, so the resumed run only matches if every RNG state was restored.
    x = torch.randn(3, 4) + float(np.random.rand()) + random.random()
    loss = (model(x) - 1.0).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    ema.update(model)


def test_checkpoint_resume_matches_uninterrupted_training(tmp_path: Path) -> None:
    random.seed(0)
    np.random.seed(0)
    model, opt, sched, ema = _make_run(0)
    for _ in range(2):
        _train_step(model, opt, sched, ema)
    sampler = {"epoch": 0, "index": 6, "order": [3, 1, 2]}
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_checkpoint(
        tmp_path / "checkpoints",
        2,
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "ema": ema.state_dict(),
        },
        {"sampler": sampler, "rng": capture_rng_state(), "config": {"out": tmp_path, "lr": 1e-2}},
        keep_last=3,
    )
    assert path.name == "checkpoint-00000002"
    assert {p.name for p in path.iterdir()} == {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "ema.pt",
        "state.json",
    }
    for _ in range(2):
        _train_step(model, opt, sched, ema)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    # A fresh run with other weights and other RNG states, resumed from the checkpoint.
    random.seed(99)
    np.random.seed(99)
    model2, opt2, sched2, ema2 = _make_run(123)
    found = latest_checkpoint(tmp_path / "checkpoints")
    assert found == path and checkpoint_step(found) == 2
    tensors, extra = load_checkpoint(found)
    assert all(torch.equal(tensors["model"][k], v) for k, v in saved_model.items())
    assert extra["sampler"] == sampler and extra["config"] == {"out": str(tmp_path), "lr": 1e-2}
    model2.load_state_dict(tensors["model"])
    opt2.load_state_dict(tensors["optimizer"])
    sched2.load_state_dict(tensors["scheduler"])
    ema2.load_state_dict(tensors["ema"])
    restore_rng_state(extra["rng"])
    for _ in range(2):
        _train_step(model2, opt2, sched2, ema2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k
    for k, v in ema2.shadow.items():
        assert torch.equal(v, ema.shadow[k]), k
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_checkpoint_none_part_tied_weights_and_replace(tmp_path: Path) -> None:
    shared = torch.arange(6.0).reshape(2, 3)
    sd = {"a.weight": shared, "b.weight": shared, "c": shared.t()}  # tied and non-contiguous
    save_checkpoint(tmp_path, 5, {"model": sd, "ema": None}, {"note": "first"})
    tensors, extra = load_checkpoint(tmp_path / "checkpoint-00000005")
    assert tensors["ema"] is None and extra == {"note": "first"}
    assert torch.equal(tensors["model"]["b.weight"], shared) and torch.equal(tensors["model"]["c"], shared.t())
    # Saving the same step again replaces it.
    save_checkpoint(tmp_path, 5, {"model": {"x": torch.ones(1)}}, {"note": "second"})
    tensors, extra = load_checkpoint(latest_checkpoint(tmp_path))
    assert extra == {"note": "second"} and list(tensors["model"]) == ["x"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000005"]
    # Non-JSON metadata fails before anything is written.
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 6, {}, {"bad": torch.zeros(1)})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000005"]


def test_keep_last_pruning(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, {}, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"checkpoint-{s:08d}" for s in (3, 4, 5)]
    # A run restarted from an earlier step: the checkpoint just written is never pruned.
    save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(2)}}, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000002", "checkpoint-00000005"]


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, 10, {"model": {"w": torch.ones(3)}}, {"step": 10})

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 20, {"model": {"w": torch.zeros(3)}}, {"step": 20})
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint-00000020").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00000010"
    tensors, extra = load_checkpoint(tmp_path / "checkpoint-00000010")
    assert tensors["model"]["w"].tolist() == [1.0, 1.0, 1.0] and extra == {"step": 10}

    # A hard kill would leave the whole temporary folder (state.json included): still invisible.
    partial = tmp_path / ".tmp-checkpoint-30-deadbeef"
    partial.mkdir()
    (partial / "state.json").write_text("{}")
    (partial / "model.safetensors").write_bytes(b"trunc")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00000010"
    assert cleanup_partial(tmp_path) == [partial]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000010"]


def test_load_names_what_is_missing(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint-00000001"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) is None  # no state.json: not a complete checkpoint
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_checkpoint(bad)
    good = save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(1)}, "optimizer": {"state": {}}}, {})
    (good / "optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer"):
        load_checkpoint(good)


def test_rng_capture_restore_reproduces_next_numbers() -> None:
    state = capture_rng_state()
    state = json.loads(json.dumps(state))  # it must survive state.json
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist())
    restore_rng_state(state)
    second = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist())
    assert first == second


# ------------------------------------------------------------------------------------------------- schedules
def _lrs(sched, opt, n: int) -> list[float]:
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        opt.step()  # no gradients: a no-op that keeps LambdaLR from warning about the call order
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def test_schedules_hand_values_and_state_dict() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    assert _lrs(warmup_constant(opt, 4), opt, 6) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1])

    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, 2, 6, min_ratio=0.1)
    # after warmup: 0.1 + 0.45 (1 + cos(pi * k / 4)), k = 0..4, then held at 0.1
    expected = [0.0, 0.5, 1.0, 0.8681980515, 0.55, 0.2318019485, 0.1, 0.1, 0.1]
    assert _lrs(sched, opt, 8) == pytest.approx(expected)

    opt2 = torch.optim.SGD([p], lr=1.0)
    sched2 = warmup_cosine(opt2, 2, 6, min_ratio=0.1)
    state = sched.state_dict()
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 8 and sched2.get_last_lr() == pytest.approx([0.1])
    assert all(not callable(v) for v in state.values())
    with pytest.raises(ValueError):
        warmup_cosine(opt, 5, 3)
