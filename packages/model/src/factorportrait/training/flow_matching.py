"""Wan 2.1 rectified-flow objective (CONVENTIONS 7) and a tiny reference Euler sampler.

* Interpolation: x_t = (1 - s) x_0 + s e, with s in [0, 1] (s = 0 data, s = 1 pure noise).
* Target velocity: v = dx_t/ds = e - x_0; the model sees the timestep 1000 s.
* Resolution shift: s' = k s / (1 + (k - 1) s) (k ~ 3 at 480p, 5 at 720p) moves mass towards high noise.
* The prepended reference frame stays clean and is left out of the loss: callers slice it off
  before calling `flow_matching_loss` (this module never sees it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Model timestep scale: timestep = NUM_TRAIN_TIMESTEPS * sigma (Wan / diffusers flow-match convention).
NUM_TRAIN_TIMESTEPS = 1000

# Sampled sigmas are kept this far inside (0, 1): s = 0 gives a zero-information sample and s = 1 puts the
# logit-normal tails (sigmoid of a large normal rounds to 1.0 in float32) outside the open interval.
_SIGMA_EPS = 1e-5


def shift_sigma(s: Tensor | float, shift: float) -> Tensor | float:
    """Resolution shift s' = k s / (1 + (k - 1) s); maps [0, 1] onto itself monotonically (k > 0)."""
    if shift <= 0:
        raise ValueError(f"shift_sigma: shift must be > 0, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def sample_sigmas(
    batch: int,
    generator: torch.Generator | None,
    shift: float = 3.0,
    distribution: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training noise levels [B] (float32) in (0, 1): a uniform or logit-normal base, then shifted.

    Drawn on the generator's device (so one generator gives the same numbers wherever the result goes),
    then moved to `device`.
    """
    if batch < 0:
        raise ValueError(f"sample_sigmas: batch must be >= 0, got {batch}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if distribution == "uniform":
        u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float32)
    elif distribution == "logit_normal":
        if logit_std <= 0:
            raise ValueError(f"sample_sigmas: logit_std must be > 0, got {logit_std}")
        z = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float32)
        u = torch.sigmoid(logit_mean + logit_std * z)
    else:
        raise ValueError(f"sample_sigmas: distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
    s = shift_sigma(u, shift).clamp(_SIGMA_EPS, 1.0 - _SIGMA_EPS)  # [B]
    return s.to(device) if device is not None else s


def _expand_sigmas(sigmas: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] with like.ndim dims, so it broadcasts over [B, C, F, h, w]."""
    if sigmas.ndim != 1 or sigmas.shape[0] != like.shape[0]:
        raise ValueError(f"sigmas must have shape [B] = [{like.shape[0]}], got {tuple(sigmas.shape)}")
    return sigmas.reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latents(x0: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x_t = (1 - s) x0 + s e; x0, noise [B, C, F, h, w], sigmas [B]; returns x0's dtype.

    Computed in at least float32: bf16 latents would otherwise round (1 - s) and s to 8 bits of mantissa.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"noisy_latents: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    dtype = torch.promote_types(x0.dtype, torch.float32)
    s = _expand_sigmas(sigmas, x0).to(device=x0.device, dtype=dtype)  # [B, 1, 1, 1, 1]
    x_t = (1 - s) * x0.to(dtype) + s * noise.to(dtype)
    return x_t.to(x0.dtype)


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Flow-matching target v = dx_t/ds = e - x0 (same shape as x0)."""
    return noise - x0


def timesteps_from_sigmas(sigmas: Tensor) -> Tensor:
    """Model timestep input: 1000 s ([B], float)."""
    return NUM_TRAIN_TIMESTEPS * sigmas


def flow_matching_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error (float32 scalar) over all elements of the GENERATED frames.

    pred, target: [B, C, F_gen, h, w] with the clean reference frame already removed by the caller.
    weights: optional per-sample [B]; the result is mean_b(w_b * mse_b) (the SD3 / diffusers convention),
    so weights of 1 give the plain mean.
    """
    if pred.shape != target.shape:
        raise ValueError(f"flow_matching_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    # float32 accumulation: a bf16 mean over ~10^6 elements loses most of its precision.
    per_sample = (pred.float() - target.float()).square().reshape(pred.shape[0], -1).mean(dim=1)  # [B]
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"flow_matching_loss: weights must have shape [{pred.shape[0]}], got {tuple(weights.shape)}")
    return (weights.to(per_sample) * per_sample).mean()


def sigma_schedule(num_steps: int, shift: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sampling sigmas [S + 1]: uniform from 1 down to 0, shifted; starts at 1 and ends at exactly 0."""
    if num_steps < 1:
        raise ValueError(f"sigma_schedule: num_steps must be >= 1, got {num_steps}")
    s = shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)  # [S + 1]
    s[0], s[-1] = 1.0, 0.0  # exact endpoints regardless of round-off in the shift
    return s.to(dtype)


@torch.no_grad()
def euler_sample(
    velocity_fn: Callable[[Tensor, Tensor], Tensor],
    latents_shape: tuple[int, ...] | torch.Size,
    sigmas_schedule: Tensor,
    generator: torch.Generator | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Reference Euler sampler from pure noise (s = 1) to data (s = 0); for validation videos only.

    velocity_fn(x [B, ...], timesteps [B] = 1000 s) -> v [B, ...]; step x <- x + (s_next - s) v.
    sigmas_schedule: [S + 1], strictly decreasing from 1 to 0 (e.g. `sigma_schedule`).
    Noise is drawn on the generator's device and then moved to `device`.
    """
    sig = sigmas_schedule.detach().to(torch.float64).cpu()
    if sig.ndim != 1 or sig.numel() < 2:
        raise ValueError(f"euler_sample: sigmas_schedule must be 1-D with >= 2 entries, got {tuple(sig.shape)}")
    if not bool((sig[1:] < sig[:-1]).all()):
        raise ValueError(f"euler_sample: sigmas_schedule must be strictly decreasing, got {sig.tolist()}")
    # Starting anywhere but s = 1 from pure noise, or stopping before s = 0, would not be a sample of the model.
    if abs(float(sig[0]) - 1.0) > 1e-6 or float(sig[-1]) != 0.0:
        raise ValueError(f"euler_sample: sigmas_schedule must go from 1 to 0, got {sig[0]:.6g} .. {sig[-1]:.6g}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(tuple(latents_shape), generator=generator, device=gen_device, dtype=dtype)
    if device is not None:
        x = x.to(device)
    batch = x.shape[0]
    # bf16 would quantise 1000 s to steps of up to 4: timesteps stay in at least float32.
    t_dtype = torch.promote_types(dtype, torch.float32)
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist(), strict=True):
        t = torch.full((batch,), NUM_TRAIN_TIMESTEPS * s, device=x.device, dtype=t_dtype)  # [B]
        v = velocity_fn(x, t)
        x = x + (s_next - s) * v.to(dtype)
    return x
