"""Flow-matching training of FactorPortrait in progressive stages (paper Sec. 4.3, 5.1; CONVENTIONS 7, 8).

`train(config)` reads top to bottom: check and build everything (nothing is written before every argument,
data and init check has passed), then for each optimiser step: fetch, forward, backward, step, log,
checkpoint, validate; then export `final/`. Distribution and mixed precision come from accelerate
(`accelerate launch --config_file configs/accelerate/{ddp,fsdp,cpu_ddp,cpu_fsdp}.yaml ...`, see
`training.distributed`); the numbers do not depend on the process count (`training.step`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig, TrainConfigError
from .step import encode_batch, flow_matching_step, sample_generator, sample_indices

log = logging.getLogger("factorportrait.train")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    final_model: Path
    losses: list[float] = field(default_factory=list)  # per optimiser step, this run only (mean over micro/ranks)
    skipped_samples: int = 0
    steps: int = 0
    lrs: list[float] = field(default_factory=list)  # the learning rate each optimiser step used
    global_batch: int = 0


def check_resume(config: TrainConfig, resume: bool, force: bool) -> Path | None:
    """The checkpoint to resume from (None: start at step 0). Reads only. A resumed run's settings must match
    the run's config.json (TrainConfigError listing the differing fields; `force` resumes anyway)."""
    from .checkpoints import latest_checkpoint

    if not resume:
        return None
    saved_file = config.output_dir / CONFIG_FILE
    if saved_file.exists():
        differences = config.differences(json.loads(saved_file.read_text()))
        if differences and not force:
            listed = "; ".join(f"{k}: {a!r} (saved) -> {b!r} (now)" for k, (a, b) in sorted(differences.items()))
            raise TrainConfigError(
                f"{saved_file}: --resume with settings that differ from the run's: {listed}. Use the run's "
                "settings, or pass --force to resume with the new ones"
            )
        if differences:
            log.warning("--force: resuming with changed settings %s", sorted(differences))
    checkpoint = latest_checkpoint(config.output_dir / "checkpoints")
    if checkpoint is None:
        log.warning("--resume: no checkpoint under %s, starting at step 0", config.output_dir / "checkpoints")
    return checkpoint


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def train(config: TrainConfig, resume: bool = False, progress: bool = True, force: bool = False) -> TrainResult:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from .build import build_data, build_model, build_vae, make_loader, resolve_init, vae_source
    from .checkpoints import cleanup_partial, load_checkpoint, save_checkpoint
    from .distributed import compute_dtype, export_final, make_accelerator, match_dtypes, rank0_loads_weights
    from .validation import validate

    # 1. check and build: a failed start leaves an earlier run's files untouched
    out = config.output_dir
    accelerator = make_accelerator(config)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    torch.manual_seed(config.seed)
    checkpoint = check_resume(config, resume, force)
    resolve_init(config)  # a missing starting point or VAE is reported before the data is read
    vae_from = vae_source(config)
    dataset, sampler, collate = build_data(config, rank, world)
    # Under FSDP's cpu-RAM-efficient loading only rank 0 reads weights; `prepare` broadcasts them to the others.
    rank0_only = rank0_loads_weights(accelerator)
    weights = accelerator.is_main_process or not rank0_only
    model = build_model(config, getattr(dataset, "landmark_layout", None), dataset, weights=weights)
    if rank0_only:
        match_dtypes(accelerator, model)
        if not weights:
            print(f"rank {rank}: read no weights (FSDP cpu-RAM-efficient loading: rank 0's are broadcast)", flush=True)
    vae = build_vae(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # Stepped once per optimiser step by this loop (never prepared): a function of optimiser steps only.
    scheduler = get_scheduler(
        "cosine" if config.lr_schedule == "cosine" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.iterations,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMAModel(model.parameters(), decay=config.ema_decay) if config.ema_decay > 0 else None
    accelerator.register_for_checkpointing(scheduler, sampler)
    dtype = compute_dtype(accelerator)
    start_step = int(load_checkpoint(accelerator, checkpoint, ema)["step"]) if checkpoint else 0

    # 2. from here on the run writes: its config once (next to its checkpoints), logs, checkpoints
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume or force or not (out / CONFIG_FILE).exists():
            _write_json(out / CONFIG_FILE, config.to_dict())
        cleanup_partial(out / "checkpoints")
        if not resume:
            (out / METRICS_FILE).unlink(missing_ok=True)
        accelerator.init_trackers("factorportrait", config={k: str(v) for k, v in config.to_dict().items()})
    accelerator.wait_for_everyone()
    global_batch = config.batch_size * world * config.grad_accum
    accelerator.print(
        f"stage {config.stage}: global batch {global_batch} = {config.batch_size} per device x {world} processes "
        f"x {config.grad_accum} accumulation; steps {start_step} -> {config.iterations}"
    )

    result = TrainResult(final_model=out / "final", global_batch=global_batch)
    batches = iter(make_loader(dataset, sampler, collate, config))
    bar = tqdm(
        range(start_step, config.iterations),
        initial=start_step,
        total=config.iterations,
        desc=f"stage {config.stage}",
        disable=not (progress and accelerator.is_main_process),
    )
    tick, seen = time.perf_counter(), 0
    for step in bar:
        # fetch, forward, backward (per micro-batch), then one optimiser step
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        micro_losses = []
        for _ in range(config.grad_accum):
            batch, indices = _fetch(batches, sampler, config, rank, world, result)
            with accelerator.accumulate(model):  # gradients synchronised on the last micro-batch only
                latents = encode_batch(vae, batch, device, dtype)
                generators = [sample_generator(config.seed, i, device) for i in indices]
                with accelerator.autocast():
                    loss = flow_matching_step(model, latents, batch, config, generators, device, dtype)
                accelerator.backward(loss)
            micro_losses.append(loss.detach())
            seen += len(indices)
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(model.parameters())

        # log: the mean loss over micro-batches and ranks
        loss_value = accelerator.gather(torch.stack(micro_losses).mean()[None]).mean().item()
        result.losses.append(loss_value)
        result.lrs.append(lr)
        result.steps = step + 1
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}")
        if accelerator.is_main_process:
            with open(out / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": loss_value, "lr": lr}) + "\n")
        if (step + 1) % config.log_every == 0 or step + 1 == config.iterations:
            rate = seen * world / max(time.perf_counter() - tick, 1e-9)
            accelerator.log(
                {"loss": loss_value, "lr": lr, "samples_per_s": rate, "skipped_samples": result.skipped_samples},
                step=step + 1,
            )
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.2f}")
            tick, seen = time.perf_counter(), 0

        # checkpoint and validate (collectives: every rank takes part)
        if (step + 1) % config.save_every == 0 or step + 1 == config.iterations:
            save_checkpoint(accelerator, out / "checkpoints", step + 1, ema, keep_last=config.keep_last)
        if config.validate_every and (step + 1) % config.validate_every == 0:
            validate(model, vae, dataset, config, step + 1, ema, device, dtype, write=accelerator.is_main_process)
            accelerator.wait_for_everyone()

    # 3. export the stage's model in diffusers format (EMA weights when kept)
    training = {
        "stage": config.stage,
        "steps": result.steps,
        "skipped_samples": result.skipped_samples,
        "last_loss": result.losses[-1] if result.losses else None,
        "global_batch": global_batch,
        "processes": world,
        "vae": vae_from,  # where the next stage finds its VAE without --wan
    }
    export_final(accelerator, model, ema, result.final_model, training)
    accelerator.end_training()
    return result


def _fetch(batches, sampler, config: TrainConfig, rank: int, world: int, result: TrainResult):
    """The next micro-batch and the global stream indices of its samples (broken samples skipped and counted)."""
    while True:
        position = sampler.position
        batch = next(batches)
        sampler.advance(config.batch_size)
        if batch is None:  # every sample of the batch was broken: already counted and logged
            result.skipped_samples += config.batch_size
            continue
        result.skipped_samples += int(batch.get("skipped", 0))
        # With broken samples dropped, the first len(batch) indices: still a pure function of the position.
        return batch, sample_indices(position, config.batch_size, rank, world)[: len(batch["sequence_id"])]
