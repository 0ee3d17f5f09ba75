"""Step 2: a small `AutoencoderKLWan` trained on the training renders (RGB and normal-map videos).

The random tiny VAE cannot reconstruct, so its latents would be noise to the DiT. This one keeps Wan 2.1's
layout (16 latent channels, 8x spatial, 4x causal temporal compression: `WanVideoVAE` checks it) with fewer
channels. After training, per-channel latent statistics are written into the config (latents_mean/std) so that
`WanVideoVAE` hands the DiT unit-variance latents, as Wan's own statistics do. Saved in diffusers format under
RUN/wan/vae (`WanVideoVAE.from_pretrained(RUN/wan)`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .config import ReproConfig
from .data import decode_all, load_sources, split_roots
from .steps import warmup_cosine


def vae_config(config: ReproConfig) -> dict:
    return {
        "base_dim": config.vae_base_dim,
        "z_dim": 16,
        "dim_mult": list(config.vae_dim_mult),
        "num_res_blocks": config.vae_num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    }


def load_videos(run_dir: Path, split: str, normals: bool) -> list[tuple[str, np.ndarray]]:
    """[(dataset, uint8 [T, H, W, 3])] of a split's RGB (or normal-map) videos."""
    out = []
    for source in load_sources(split_roots(run_dir, split)):
        path = source.normal_path if normals else source.rgb_path
        if path is not None:
            out.append((source.dataset, decode_all(path)))
    return out


def _windows(
    videos: list[np.ndarray], frames: int, count: int, rng: np.random.Generator, crop: int = 0
) -> torch.Tensor:
    """[count, 3, frames, S, S] in [-1, 1]: random windows of random videos, optionally random crops of side
    `crop` at multiples of 8 (the VAE's grid), so long windows cost what short whole-frame ones do."""
    batch = []
    for _ in range(count):
        video = videos[int(rng.integers(len(videos)))]
        start = int(rng.integers(video.shape[0] - frames + 1))
        window = video[start : start + frames]
        if crop and crop < min(window.shape[1:3]):
            y = 8 * int(rng.integers((window.shape[1] - crop) // 8 + 1))
            x = 8 * int(rng.integers((window.shape[2] - crop) // 8 + 1))
            window = np.ascontiguousarray(window[:, y : y + crop, x : x + crop])
        batch.append(torch.from_numpy(window))
    x = torch.stack(batch).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two videos in [-1, 1] after 8-bit quantisation, as the frames would be stored."""
    qa = ((a.clamp(-1, 1) + 1) * 127.5).round()
    qb = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = float((qa - qb).square().mean())
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def train_vae(config: ReproConfig, run_dir: Path, log=print) -> dict:
    from diffusers import AutoencoderKLWan

    from ..vae import WanVideoVAE

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    rgb = [v for _, v in load_videos(run_dir, "train", normals=False)]
    nrm = [v for _, v in load_videos(run_dir, "train", normals=True)]
    if not rgb:
        raise FileNotFoundError(f"no training videos under {run_dir / 'data' / 'train'}")
    model = AutoencoderKLWan(**vae_config(config)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.vae_lr, weight_decay=0.0)
    sched = warmup_cosine(opt, config.vae_steps, 0.05)
    n_normals = round(config.vae_batch * config.vae_normals_fraction) if nrm else 0
    losses, tick = [], time.perf_counter()
    model.train()
    for step in range(config.vae_steps):
        x = _windows(rgb, config.vae_frames, config.vae_batch - n_normals, rng, config.vae_crop)
        if n_normals:
            x = torch.cat([x, _windows(nrm, config.vae_frames, n_normals, rng, config.vae_crop)])
        x = x.to(device)
        posterior = model.encode(x).latent_dist
        z = posterior.sample()
        recon = model.decode(z).sample
        # L1 keeps edges sharp; the tiny KL only keeps the posterior well-behaved (the DiT sees its mean).
        kl = posterior.kl().mean() / x[0].numel()
        loss = (recon - x).abs().mean() + 0.5 * (recon - x).square().mean() + config.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, config.vae_steps // 10) == 0:
            log(f"vae step {step + 1}/{config.vae_steps} loss {np.mean(losses[-20:]):.4f}")
    train_s = time.perf_counter() - tick

    # latent statistics of the training videos -> config (what WanVideoVAE normalises with)
    model.eval()
    with torch.no_grad():
        sample = torch.cat([_windows(rgb, config.vae_frames, 8, rng), _windows(nrm or rgb, config.vae_frames, 8, rng)])
        z = torch.cat([model.encode(sample[i : i + 4].to(device)).latent_dist.mode() for i in range(0, 16, 4)])
        mean = z.mean(dim=(0, 2, 3, 4)).cpu()
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).cpu()
    model.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())

    out = Path(run_dir) / "wan" / "vae"
    tmp = out.with_name(".vae.tmp")
    model.cpu().save_pretrained(str(tmp))
    from .steps import replace_dir

    replace_dir(tmp, out)

    vae = WanVideoVAE.from_pretrained(Path(run_dir) / "wan").to(device)
    limit = config.vae_eval_videos or None
    held = evaluate_vae(vae, run_dir, "heldout_ids", config, limit=limit)
    seen = evaluate_vae(vae, run_dir, "train", config, limit=limit or 8)
    return {
        "config": vae_config(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": config.vae_steps,
        "train_s": train_s,
        "final_loss": float(np.mean(losses[-20:])),
        "heldout_ids": held,
        "train": seen,
    }


@torch.no_grad()
def evaluate_vae(vae, run_dir: Path, split: str, config: ReproConfig, limit: int | None = None) -> dict:
    """Reconstruction PSNR (dB) of whole 1 + 4k-frame prefixes of a split's videos, per dataset, RGB and normals."""
    result: dict[str, dict[str, float]] = {}
    for normals in (False, True):
        per: dict[str, list[float]] = {}
        videos = load_videos(run_dir, split, normals)[:limit]
        for dataset, video in videos:
            t = 1 + 4 * ((video.shape[0] - 1) // 4)
            x = torch.from_numpy(video[:t]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            recon = vae.decode(vae.encode_video(x.to(vae.device))).cpu()
            per.setdefault(dataset, []).append(psnr_uint8(recon, x))
        kind = "normals" if normals else "rgb"
        result[kind] = {d: float(np.mean(v)) for d, v in per.items()}
        if per:
            result[kind]["all"] = float(np.mean([x for v in per.values() for x in v]))
    return result
