"""One training step's maths: encode a batch, draw its noise, predict the velocity, the flow-matching loss.

Noise, timesteps and condition dropout are drawn per SAMPLE from a generator seeded by (seed, global sample index),
the index of the sample in the mixture sampler's global stream (`MixtureSampler`: rank r's j-th sample of a
micro-batch is global sample position + j * world_size + r). So every micro-batch and every rank draws its own
noise, the draw is a pure function of (seed, step, micro-step, rank) (resume reproduces it exactly), and a sample
gets the same noise whether 1 process draws it in a batch of 2 or 2 processes draw it in batches of 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .config import TrainConfig


def encode_batch(vae, batch: dict, device, dtype) -> dict:
    """VAE latents of the clip, its normal maps and its reference (or the cached ones), plus the "no surface"
    latents: of one black frame (the reference frame's normal slot) and of a black clip (dropped normals)."""
    from ..conditions import no_surface_latent

    if "latents" in batch:
        out = {k: batch[k].to(device, dtype) for k in ("latents", "normal_latents", "reference_latent")}
    else:
        with torch.no_grad():
            out = {
                "latents": vae.encode_video(batch["video"].to(device)).to(dtype),
                "normal_latents": vae.encode_video(batch["normals"].to(device)).to(dtype),
                "reference_latent": vae.encode_video(batch["reference"].to(device)).to(dtype),
            }
    b, _, _, h, w = out["latents"].shape
    frames = batch["expression"].shape[1]  # T of the clip
    size = dict(height=8 * h, width=8 * w, device=device, dtype=dtype)
    out["reference_normal_latent"] = no_surface_latent(vae, b, **size)
    out["no_surface_latents"] = no_surface_latent(vae, b, frames=frames, **size)
    return out


def condition_inputs(latents: dict, batch: dict, config: TrainConfig, device, dtype, drop: Tensor | None = None):
    """The model's condition keyword arguments for a batch; `drop` [B, 3] bool = (expression, reference, normals)
    dropped per sample (code dropout, see TrainConfig), None = keep every condition."""
    b = latents["latents"].shape[0]
    drop = torch.zeros(b, 3, dtype=torch.bool, device=device) if drop is None else drop.to(device)

    def where(mask: Tensor, dropped: Tensor, kept: Tensor) -> Tensor:
        return torch.where(mask.view(-1, *([1] * (kept.dim() - 1))), dropped, kept)

    reference = latents["reference_latent"]
    _, _, _, h, w = latents["latents"].shape
    rays, reference_rays = batch_rays(batch, 8 * h, 8 * w, device)
    inputs = dict(
        reference_latent=where(drop[:, 1], torch.zeros_like(reference), reference),
        ray_features=rays.to(dtype),
        reference_rays=reference_rays.to(dtype),
    )
    if config.use_normals:
        normals = latents["normal_latents"]
        inputs["normal_latents"] = where(drop[:, 2], latents["no_surface_latents"].to(normals), normals)
        inputs["reference_normal_latent"] = latents["reference_normal_latent"]
    if config.expression_mode == "codes":
        codes = batch["expression"].to(device, dtype)
        inputs["expression_codes"] = where(drop[:, 0], torch.zeros_like(codes), codes)  # the neutral code
    elif config.expression_mode == "landmarks":
        visible = batch["landmark_visible"].to(device)
        inputs["landmarks"] = batch["landmarks"].to(device, dtype)
        inputs["landmark_visible"] = where(drop[:, 0], torch.zeros_like(visible), visible)  # every point hidden
    return inputs


def batch_rays(batch: dict, height: int, width: int, device) -> tuple[Tensor, Tensor]:
    """Ray features [B, 1536, F, H/8, W/8] and reference rays [B, 1536, 1, H/8, W/8] of a batch: the loader's when it
    carries them, else built here on `device` from its cameras (K [B, T, 3, 3], c2w [B, T, 4, 4], reference_K,
    reference_c2w), in float32 like the loader would (they are cheap to compute, costly to ship)."""
    if "ray_features" in batch:
        return batch["ray_features"].to(device), batch["reference_rays"].to(device)
    from ..conditions import camera_features

    pairs = [
        camera_features(
            batch["K"][i].to(device, torch.float32),
            batch["c2w"][i].to(device, torch.float32),
            height,
            width,
            reference_c2w=batch["reference_c2w"][i].to(device, torch.float32),
            reference_K=batch["reference_K"][i].to(device, torch.float32),
        )
        for i in range(batch["K"].shape[0])
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def sample_generator(seed: int, index: int, device) -> torch.Generator:
    """The generator of global sample `index`: noise, timestep and dropout of that sample only."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + index) * 1_009 + 17) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


def sample_indices(position: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Global stream indices of this rank's micro-batch starting at sampler position `position` (MixtureSampler)."""
    return [position + j * world_size + rank for j in range(batch_size)]


def step_generator(config: TrainConfig, step: int, rank: int, device) -> torch.Generator:
    """One generator for a whole batch, a pure function of (seed, step, rank) (kept for callers outside the loop;
    the training loop draws per sample, `sample_generator`)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((config.seed * 1_000_003 + step) * 1_009 + rank) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


def draw_noise(
    config: TrainConfig, shape: Sequence[int], generators: torch.Generator | Sequence[torch.Generator], device
) -> tuple[Tensor, Tensor, Tensor]:
    """(noise [B, *shape[1:]] float32, sigmas [B], drop [B, 3] bool) from one generator for the batch or one per
    sample (then sample i's values depend on generators[i] only)."""
    from .flow_matching import sample_sigmas

    probabilities = torch.tensor([config.expression_dropout, config.reference_dropout, config.normal_dropout])

    def one(generator: torch.Generator, n: int) -> tuple[Tensor, Tensor, Tensor]:
        noise = torch.randn((n, *shape[1:]), generator=generator, device=generator.device, dtype=torch.float32)
        sigmas = sample_sigmas(n, generator, shift=config.sigma_shift, distribution=config.timestep_sampling)
        # Drawn after the noise and the timesteps, from the same generator.
        drop = torch.rand(n, 3, generator=generator, device=generator.device) < probabilities.to(generator.device)
        return noise.to(device), sigmas.to(device), drop.to(device)

    if isinstance(generators, torch.Generator):
        return one(generators, shape[0])
    if len(generators) != shape[0]:
        raise ValueError(f"draw_noise: {len(generators)} generators for a batch of {shape[0]}")
    parts = [one(g, 1) for g in generators]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


def flow_matching_step(model, latents: dict, batch: dict, config: TrainConfig, generator, device, dtype) -> Tensor:
    """The batch's flow-matching loss (a scalar); `generator`: one torch.Generator or one per sample."""
    from .flow_matching import flow_matching_loss, noisy_latents, timesteps_from_sigmas, velocity_target

    x0 = latents["latents"]
    noise, sigmas, drop = draw_noise(config, x0.shape, generator, device)
    noise = noise.to(dtype)
    pred = model(
        latents=noisy_latents(x0, noise, sigmas),
        timestep=timesteps_from_sigmas(sigmas),
        **condition_inputs(latents, batch, config, device, dtype, drop),
    ).sample
    # the reference frame is not part of `pred` (kept clean, left out of the loss)
    return flow_matching_loss(pred.float(), velocity_target(x0, noise).float())
