"""Flow-matching training of FactorPortrait in progressive stages (paper Sec. 4.3, 5.1; CONVENTIONS 7, 8).

`train(config)` reads top to bottom: build (model, VAE, data, optimiser), then for each step fetch a batch,
encode it, add noise, predict the velocity, step, log, checkpoint, validate. Distribution and mixed
precision come from accelerate (`accelerate launch --config_file configs/accelerate/{ddp,fsdp}.yaml ...`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .train_config import TrainConfig

log = logging.getLogger("factorportrait.train")


@dataclass
class TrainResult:
    final_model: Path
    losses: list[float] = field(default_factory=list)  # per optimiser step, this run only
    skipped_samples: int = 0
    steps: int = 0


# ---------------------------------------------------------------------------------------------- building
def resolve_init(config: TrainConfig) -> str | None:
    """What the stage starts from: a FactorPortrait folder, a Wan folder (stage 1), or None (tiny random)."""
    if config.init not in (None, "auto"):
        return config.init
    if config.stage == 1:
        if config.model_size == "tiny":
            return None
        if config.wan is None:
            raise FileNotFoundError(
                "stage 1 starts from Wan 2.1 T2V weights: pass --wan PATH (a local diffusers "
                "folder such as Wan2.1-T2V-1.3B-Diffusers) or --preset tiny"
            )
        return config.wan
    previous = Path(config.output) / f"stage{config.stage - 1}" / "final"
    if not (previous / "config.json").exists():
        raise FileNotFoundError(
            f"stage {config.stage} starts from stage {config.stage - 1}'s final model, but "
            f"'{previous}' has none: run `model-train --stage {config.stage - 1}` first or "
            "pass --init PATH"
        )
    return str(previous)


def build_model(config: TrainConfig, landmark_layout: tuple[str, int] | None = None):
    """The stage's transformer; `landmark_layout` = (name, K) of the training data's landmarks (C3 only).

    The saved config records the condition dropout of this stage and, for C3, the landmark layout; a model
    trained on another layout is refused (ValueError naming both).
    """
    from .transformer import WAN_CONFIGS, FactorPortraitTransformer

    init = resolve_init(config)
    options = dict(expression_mode=config.expression_mode, use_normals=config.use_normals)
    if config.expression_mode == "landmarks":
        if landmark_layout is None:
            raise ValueError("expression_mode = 'landmarks' needs the training data's landmark layout")
        options.update(landmark_layout=landmark_layout[0], num_landmarks=landmark_layout[1])
    if init is None:
        model = FactorPortraitTransformer.tiny(seed=config.seed, **options)
    elif (Path(init) / "config.json").exists() and "wan_config" in json.loads((Path(init) / "config.json").read_text()):
        model = FactorPortraitTransformer.from_pretrained(init)
        if landmark_layout is not None and model.landmark_encoder is not None:
            model.check_landmark_layout(*landmark_layout, where=f"training data of stage {config.stage}")
            model.register_to_config(landmark_layout=landmark_layout[0])
    else:
        model = FactorPortraitTransformer.from_wan(init, **options)
        if WAN_CONFIGS.get(config.model_size, {}).get("num_layers") not in (None, model.wan.config.num_layers):
            log.warning(
                "model_size=%s but the Wan folder holds %d layers", config.model_size, model.wan.config.num_layers
            )
    model.register_to_config(
        expression_dropout=config.expression_dropout,
        reference_dropout=config.reference_dropout,
        normal_dropout=config.normal_dropout,
    )
    if config.prompt_embeds:
        model.set_prompt_embedding(config.prompt_embeds)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def build_vae(config: TrainConfig):
    from .vae import WanVideoVAE

    if config.model_size == "tiny":
        return WanVideoVAE.tiny(seed=config.seed)
    root = config.wan or resolve_init(config)
    return WanVideoVAE.from_pretrained(root)


def build_dataset(config: TrainConfig):
    """The stage's clips over every dataset root, broken sources removed (latent cache applied if configured)."""
    from .data.clips import ClipDataset, ClipDatasetConfig
    from .data.manifest import read_manifest_rows

    if not config.data:
        raise FileNotFoundError(
            "no training data: pass --data ROOT (a dataset folder with manifest/) or set `data` in the stage config"
        )
    sources = [source for root in config.data for source in read_manifest_rows(root)]
    dataset = ClipDataset(
        sources,
        ClipDatasetConfig(
            frames=config.frames,
            stride=config.clip_stride,
            height=config.height,
            width=config.width,
            reference=config.reference,
            seed=config.seed,
            landmarks=config.expression_mode == "landmarks",
        ),
    )
    broken = dataset.check_sources()
    if broken:
        log.warning("skipped %d broken sequences (see above)", broken)
    if config.latent_cache:
        from .data.latent_cache import CachedClipDataset, LatentCache

        dataset = CachedClipDataset(dataset, LatentCache(config.latent_cache))
    return dataset


def build_data(config: TrainConfig, rank: int, world_size: int):
    """Dataset, mixture sampler (the stage's ratios; this rank's share) and collate function."""
    from .data.clips import collate_clips, group_by_dataset
    from .data.mixture import MixtureSampler

    dataset = build_dataset(config)
    sampler = MixtureSampler(
        group_by_dataset(dataset.clips), config.mixture, seed=config.seed, rank=rank, world_size=world_size
    )
    return dataset, sampler, collate_clips


def make_loader(dataset, sampler, collate, config: TrainConfig):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        persistent_workers=config.num_workers > 0,
        timeout=600 if config.num_workers else 0,
    )


# ---------------------------------------------------------------------------------------------- one step
def encode_batch(vae, batch: dict, device, dtype) -> dict:
    """VAE latents of the clip, its normal maps and its reference (or the cached ones), plus the "no surface"
    latents: of one black frame (the reference frame's normal slot) and of a black clip (dropped normals)."""
    from .conditions import no_surface_latent

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


def condition_inputs(latents: dict, batch: dict, config: TrainConfig, device, dtype, drop: torch.Tensor | None = None):
    """The model's condition keyword arguments for a batch; `drop` [B, 3] bool = (expression, reference, normals)
    dropped per sample (code dropout, see TrainConfig), None = keep every condition."""
    b = latents["latents"].shape[0]
    drop = torch.zeros(b, 3, dtype=torch.bool, device=device) if drop is None else drop.to(device)

    def where(mask: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, *([1] * (kept.dim() - 1))), dropped, kept)

    reference = latents["reference_latent"]
    inputs = dict(
        reference_latent=where(drop[:, 1], torch.zeros_like(reference), reference),
        ray_features=batch["ray_features"].to(device, dtype),
        reference_rays=batch["reference_rays"].to(device, dtype),
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


def step_generator(config: TrainConfig, step: int, rank: int, device) -> torch.Generator:
    """Noise and timesteps are a pure function of (seed, step, rank): resuming reproduces them exactly."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((config.seed * 1_000_003 + step) * 1_009 + rank) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


def flow_matching_step(
    model, latents: dict, batch: dict, config: TrainConfig, generator, device, dtype
) -> torch.Tensor:
    from .training.flow_matching import (
        flow_matching_loss,
        noisy_latents,
        sample_sigmas,
        timesteps_from_sigmas,
        velocity_target,
    )

    x0 = latents["latents"]
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
    sigmas = sample_sigmas(
        x0.shape[0], generator, shift=config.sigma_shift, distribution=config.timestep_sampling, device=device
    )
    noisy = noisy_latents(x0, noise, sigmas)
    # Drawn after the noise and the timesteps, from the same generator: a pure function of (seed, step, rank).
    probabilities = torch.tensor(
        [config.expression_dropout, config.reference_dropout, config.normal_dropout], device=device
    )
    drop = torch.rand(x0.shape[0], 3, generator=generator, device=device) < probabilities
    pred = model(
        latents=noisy,
        timestep=timesteps_from_sigmas(sigmas),
        **condition_inputs(latents, batch, config, device, dtype, drop),
    ).sample
    # the reference frame is not part of `pred` (kept clean, left out of the loss)
    return flow_matching_loss(pred.float(), velocity_target(x0, noise).float())


# ---------------------------------------------------------------------------------------------- the loop
def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm import tqdm

    from .training.checkpoints import (
        capture_rng_state,
        cleanup_partial,
        latest_checkpoint,
        load_checkpoint,
        restore_rng_state,
        save_checkpoint,
    )
    from .training.ema import EMA
    from .training.schedule import warmup_constant, warmup_cosine

    out = config.output_dir
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    torch.manual_seed(config.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        cleanup_partial(out / "checkpoints")

    # 1. build (the data before the model: a C3 model takes its landmark layout from it; but a missing
    # starting point is the first thing to report)
    resolve_init(config)
    dataset, sampler, collate = build_data(config, rank, world)
    model = build_model(config, getattr(dataset, "landmark_layout", None))
    vae = build_vae(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.lr_schedule == "cosine":
        scheduler = warmup_cosine(optimizer, config.warmup_steps, config.iterations)
    else:
        scheduler = warmup_constant(optimizer, config.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema = EMA(accelerator.unwrap_model(model), decay=config.ema_decay) if config.ema_decay > 0 else None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32

    start_step = 0
    if resume:
        checkpoint = latest_checkpoint(out / "checkpoints")
        if checkpoint is None:
            log.warning("--resume: no checkpoint under %s, starting at step 0", out / "checkpoints")
        else:
            tensors, extra = load_checkpoint(checkpoint)
            accelerator.unwrap_model(model).load_state_dict(tensors["model"])
            optimizer.load_state_dict(tensors["optimizer"])
            scheduler.load_state_dict(tensors["scheduler"])
            if ema is not None and tensors.get("ema") is not None:
                ema.load_state_dict(tensors["ema"])
            sampler.load_state_dict(extra["sampler"])
            restore_rng_state(extra["rng"])
            start_step = int(extra["step"])
            log.info("resumed from %s at step %d", checkpoint, start_step)
    if accelerator.is_main_process:
        accelerator.init_trackers("factorportrait", config={k: str(v) for k, v in config.to_dict().items()})

    # 2. loop
    result = TrainResult(final_model=out / "final")
    loader = make_loader(dataset, sampler, collate, config)
    batches = iter(loader)
    bar = tqdm(
        range(start_step, config.iterations),
        initial=start_step,
        total=config.iterations,
        desc=f"stage {config.stage}",
        disable=not (progress and accelerator.is_main_process),
    )
    tick, seen = time.perf_counter(), 0
    for step in bar:
        model.train()
        for _ in range(config.grad_accum):
            batch = next(batches)
            while batch is None:  # every sample of the batch was broken: already counted and logged
                result.skipped_samples += config.batch_size
                sampler.advance(config.batch_size)
                batch = next(batches)
            sampler.advance(config.batch_size)
            result.skipped_samples += int(batch.get("skipped", 0))
            with accelerator.accumulate(model):
                latents = encode_batch(vae, batch, device, dtype)
                with accelerator.autocast():
                    loss = flow_matching_step(
                        model, latents, batch, config, step_generator(config, step, rank, device), device, dtype
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += len(batch["sequence_id"])
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        loss_value = accelerator.gather(loss.detach()[None]).mean().item()
        result.losses.append(loss_value)
        result.steps = step + 1
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}")

        if (step + 1) % config.log_every == 0 or step + 1 == config.iterations:
            rate = seen * world / max(time.perf_counter() - tick, 1e-9)
            lr = scheduler.get_last_lr()[0]
            accelerator.log(
                {"loss": loss_value, "lr": lr, "samples_per_s": rate, "skipped_samples": result.skipped_samples},
                step=step + 1,
            )
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.2f}")
            tick, seen = time.perf_counter(), 0
        if accelerator.is_main_process and ((step + 1) % config.save_every == 0 or step + 1 == config.iterations):
            save_checkpoint(
                out / "checkpoints",
                step + 1,
                {
                    "model": accelerator.unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                },
                {
                    "step": step + 1,
                    "sampler": sampler.state_dict(),
                    "rng": capture_rng_state(),
                    "config": config.to_dict(),
                },
                keep_last=config.keep_last,
            )
        if config.validate_every and (step + 1) % config.validate_every == 0 and accelerator.is_main_process:
            validate(accelerator.unwrap_model(model), vae, dataset, config, step + 1, ema, device, dtype)
    accelerator.wait_for_everyone()

    # 3. export the stage's model in diffusers format (EMA weights when kept)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final)
        final.save_pretrained(result.final_model)
        (result.final_model / "training.json").write_text(
            json.dumps(
                {
                    "stage": config.stage,
                    "steps": result.steps,
                    "skipped_samples": result.skipped_samples,
                    "last_loss": result.losses[-1] if result.losses else None,
                },
                indent=2,
            )
        )
    accelerator.end_training()
    return result


@torch.no_grad()
def validate(model, vae, dataset, config: TrainConfig, step: int, ema, device, dtype) -> Path:
    """Sample a fixed clip (the first one) with the Euler sampler and write generated | ground truth as mp4.

    Its conditions are the training item's: rays relative to the clip's reference frame, landmarks for C3.
    """
    from .training.flow_matching import euler_sample, sigma_schedule
    from .vae import tensor_to_frames
    from .video_io import write_mp4

    model.eval()
    if ema is not None:
        ema.store(model)
        ema.copy_to(model)
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
        video = vae.decode(x0.to(dtype))
        frames = torch.cat(
            [torch.from_numpy(tensor_to_frames(video)), torch.from_numpy(tensor_to_frames(batch["video"]))], dim=2
        ).numpy()
        path = config.output_dir / "validation" / f"step-{step:08d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_mp4(frames, path)
    finally:
        if ema is not None:
            ema.restore(model)
        model.train()
