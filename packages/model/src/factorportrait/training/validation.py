"""Validation videos during training: one fixed clip sampled with the Euler sampler, generated | ground truth."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .step import condition_inputs, encode_batch


@torch.no_grad()
def validate(model, vae, dataset, config: TrainConfig, step: int, ema, device, dtype, write: bool = True) -> Path:
    """Sample the first loadable clip and (if `write`) save generated | ground truth as an mp4.

    Every rank calls it with the same clip (an FSDP model's forward is collective); only the caller with
    `write` (the main process) writes. Its conditions are the training item's: rays relative to the clip's
    reference frame, landmarks for C3. With the latent cache the ground truth is the VAE decode of the cached
    latents (cached items carry no video).
    """
    from ..vae import tensor_to_frames
    from ..video_io import write_mp4
    from .flow_matching import euler_sample, sigma_schedule

    params = list(model.parameters())
    model.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        sample = next(dataset[i] for i in range(len(dataset)) if dataset[i] is not None)
        batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in sample.items()}
        latents = encode_batch(vae, batch, device, dtype)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        conditions = condition_inputs(latents, batch, config, device, dtype)  # every condition kept

        def velocity(x, t):
            return model(latents=x, timestep=t.reshape(1).to(device), **conditions).sample

        x0 = euler_sample(
            velocity, latents["latents"].shape, sigma_schedule(config.validation_steps, config.sigma_shift), generator
        )
        path = config.output_dir / "validation" / f"step-{step:08d}.mp4"
        if not write:
            return path
        video = vae.decode(x0.to(dtype))
        truth = batch["video"] if "video" in batch else vae.decode(latents["latents"])
        frames = torch.cat(
            [torch.from_numpy(tensor_to_frames(video)), torch.from_numpy(tensor_to_frames(truth))], dim=2
        ).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_mp4(frames, path)
    finally:
        if ema is not None:
            ema.restore(params)
        model.train()
