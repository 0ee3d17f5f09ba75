"""Step 3a: a small Wan 2.1-architecture DiT trained as a plain video prior (stands in for pretrained Wan T2V).

`WanTransformer3DModel` (diffusers) with Wan 2.1 T2V's layout at a small width, trained with the same rectified-flow
objective as FactorPortrait (training.flow_matching) on VAE latents of every training render, with the fixed empty
prompt (zeros; FactorPortrait's cross-attention sees the same zeros). Saved as RUN/wan/transformer next to
RUN/wan/vae, so `model-train --wan RUN/wan` and `FactorPortraitTransformer.from_wan(RUN/wan)` load it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .config import ReproConfig
from .steps import warmup_cosine
from .vae_train import load_videos


def dit_config(config: ReproConfig) -> dict:
    from ..transformer import WAN_CONFIGS

    return {
        **{k: WAN_CONFIGS["tiny"][k] for k in ("in_channels", "out_channels", "patch_size", "cross_attn_norm")},
        "qk_norm": WAN_CONFIGS["tiny"]["qk_norm"],
        "eps": WAN_CONFIGS["tiny"]["eps"],
        "num_attention_heads": config.dit_heads,
        "attention_head_dim": config.dit_head_dim,
        "ffn_dim": config.dit_ffn_dim,
        "num_layers": config.dit_layers,
        "text_dim": config.dit_text_dim,
        "freq_dim": 64,
        "rope_max_seq_len": 256,
    }


@torch.no_grad()
def encode_windows(vae, videos: list[np.ndarray], frames: int, stride: int = 4) -> torch.Tensor:
    """Normalised latents [N, 16, F, h, w] of every `frames`-window (start every `stride`) of the videos."""
    out = []
    for video in videos:
        starts = range(0, video.shape[0] - frames + 1, stride)
        clips = torch.stack([torch.from_numpy(video[s : s + frames]) for s in starts])
        x = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        for i in range(0, len(x), 8):
            out.append(vae.encode_video(x[i : i + 8].to(vae.device)).float().cpu())
    return torch.cat(out)


def train_prior(config: ReproConfig, run_dir: Path, log=print) -> dict:
    from diffusers import WanTransformer3DModel

    from ..training.flow_matching import (
        flow_matching_loss,
        noisy_latents,
        sample_sigmas,
        timesteps_from_sigmas,
        velocity_target,
    )
    from ..vae import WanVideoVAE
    from .steps import replace_dir

    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    vae = WanVideoVAE.from_pretrained(Path(run_dir) / "wan").to(device)
    tick = time.perf_counter()
    train = encode_windows(vae, [v for _, v in load_videos(run_dir, "train", False)], config.prior_frames)
    held = encode_windows(vae, [v for _, v in load_videos(run_dir, "heldout_ids", False)], config.prior_frames)
    encode_s = time.perf_counter() - tick
    model = WanTransformer3DModel(**dit_config(config)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.prior_lr, weight_decay=0.01)
    sched = warmup_cosine(opt, config.prior_steps, 0.05)
    context = torch.zeros(1, 512, config.dit_text_dim, device=device)  # the fixed empty prompt
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    tick = time.perf_counter()
    model.train()
    autocast = torch.autocast(
        "cuda", torch.bfloat16, enabled=config.mixed_precision == "bf16" and device.type == "cuda"
    )
    for step in range(config.prior_steps):
        idx = torch.randint(len(train), (config.prior_batch,), generator=generator)
        x0 = train[idx].to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigmas = sample_sigmas(len(idx), generator, shift=3.0, device=device)
        with autocast:
            pred = model(
                noisy_latents(x0, noise, sigmas),
                timestep=timesteps_from_sigmas(sigmas),
                encoder_hidden_states=context.expand(len(idx), -1, -1),
            ).sample
        loss = flow_matching_loss(pred.float(), velocity_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, config.prior_steps // 10) == 0:
            log(f"prior step {step + 1}/{config.prior_steps} loss {np.mean(losses[-20:]):.4f}")
    train_s = time.perf_counter() - tick
    held_loss = _fixed_loss(model, held, context, device) if len(held) else None
    train_loss = _fixed_loss(model, train[: max(len(held), 8)], context, device)

    out = Path(run_dir) / "wan" / "transformer"
    tmp = out.with_name(".transformer.tmp")
    model.cpu().save_pretrained(str(tmp))
    replace_dir(tmp, out)
    return {
        "config": dit_config(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_windows": len(train),
        "steps": config.prior_steps,
        "encode_s": encode_s,
        "train_s": train_s,
        "final_loss": float(np.mean(losses[-20:])),
        "fixed_sigma_loss_train": train_loss,
        "fixed_sigma_loss_heldout_ids": held_loss,
    }


@torch.no_grad()
def _fixed_loss(model, latents: torch.Tensor, context: torch.Tensor, device) -> float:
    """Flow-matching loss at 5 fixed noise levels with fixed noise: comparable between train and held-out."""
    from ..training.flow_matching import flow_matching_loss, noisy_latents, velocity_target

    model.eval()
    generator = torch.Generator().manual_seed(1234)
    total = []
    for s in (0.1, 0.3, 0.5, 0.7, 0.9):
        for i in range(0, len(latents), 8):
            x0 = latents[i : i + 8].to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            sig = torch.full((len(x0),), s, device=device)
            pred = model(
                noisy_latents(x0, noise, sig),
                timestep=1000 * sig,
                encoder_hidden_states=context.expand(len(x0), -1, -1),
            ).sample
            total.append(float(flow_matching_loss(pred.float(), velocity_target(x0, noise))))
    model.train()
    return float(np.mean(total))
