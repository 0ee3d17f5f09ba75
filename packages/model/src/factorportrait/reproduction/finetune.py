"""Step 3b: `model-train` stages 1-4 (paper Tab. 1 mixtures, frames and iterations scaled) for Full, C1, C2, C3.

Every variant starts from the same prior (RUN/wan) with the same budget and seed:
  * full: Tab. 1 mixtures;  c2: use_normals = false;  c3: expression_mode = "landmarks";
  * c1: Tab. 1 without DynamicSweep (renormalised). Stages 1-2 hold no DynamicSweep, so C1's stages 1-2 are
    Full's by construction (same prior, data, seed): C1 starts stage 3 from Full's stage-2 model.
Training goes through `factorportrait.trainer.train(TrainConfig)`, i.e. exactly what `model-train` runs.
"""

from __future__ import annotations

from pathlib import Path

from ..train_config import STAGES, TrainConfig
from .config import ReproConfig


def stage_mixture(stage: int, variant: str, available: set[str]) -> dict[str, float]:
    """Tab. 1's mixture of `stage`, restricted to the rendered datasets (and without DynamicSweep for C1)."""
    mixture = {k: v for k, v in STAGES[stage]["mixture"].items() if k in available}
    if variant == "c1":
        mixture.pop("DynamicSweep", None)
    if not mixture:  # e.g. stage 1 (PhoneCapture only) when datagen offers no PhoneCapture
        fallback = [d for d in ("PhoneCapture", "StudioCapture", "ViewSweep", "DynamicSweep") if d in available]
        if variant == "c1":
            fallback = [d for d in fallback if d != "DynamicSweep"]
        mixture = {fallback[0]: 1.0}
    total = sum(mixture.values())
    return {k: v / total for k, v in mixture.items()}


def first_stage(variant: str) -> int:
    return 3 if variant == "c1" else 1


def train_config(
    config: ReproConfig, run_dir: Path, variant: str, stage: int, data_roots: list[Path], available: set[str]
) -> TrainConfig:
    run_dir = Path(run_dir)
    init = "auto"
    if variant == "c1" and stage == first_stage("c1"):
        init = str(run_dir / "train" / "full" / f"stage{stage - 1}" / "final")
    iterations = config.stage_iterations[stage - 1]
    return TrainConfig(
        stage=stage,
        frames=config.stage_frames[stage - 1],
        iterations=iterations,
        mixture=stage_mixture(stage, variant, available),
        data=[str(r) for r in data_roots],
        output=str(run_dir / "train" / variant),
        init=init,
        wan=str(run_dir / "wan"),
        model_size="1.3B",  # "not tiny": load the prior and the trained VAE from `wan` (the layer count differs)
        expression_mode="landmarks" if variant == "c3" else "codes",
        use_normals=variant != "c2",
        height=config.resolution,
        width=config.resolution,
        batch_size=config.train_batch,
        learning_rate=config.stage_lr[stage - 1],
        warmup_steps=min(config.warmup_steps, max(1, iterations // 5)),
        mixed_precision=config.mixed_precision,
        gradient_checkpointing=False,
        seed=config.seed,
        num_workers=0,
        save_every=iterations,
        keep_last=1,
        log_every=max(1, iterations // 10),
        validate_every=0,
        latent_cache=str(latent_cache_dir(run_dir, config.stage_frames[stage - 1])),
    )


def latent_cache_dir(run_dir: Path, frames: int) -> Path:
    return Path(run_dir) / "latents" / f"frames{frames:03d}"


def build_cache(config: ReproConfig, run_dir: Path, frames: int, data_roots: list[Path], available: set[str]) -> dict:
    """VAE latents of every training clip of `frames` frames (`model-cache-latents`' code): every variant and
    stage of that length reads them instead of decoding and encoding the clips at each step (the VAE encode is
    most of a CPU training step). Clips and references are a pure function of the seed, so one cache serves all."""
    from ..data.latent_cache import build_latent_cache
    from ..trainer import build_dataset
    from ..vae import WanVideoVAE

    stage = config.stage_frames.index(frames) + 1
    cfg = train_config(config, run_dir, "full", stage, data_roots, available)
    cfg.latent_cache = None
    dataset = build_dataset(cfg)
    vae = WanVideoVAE.from_pretrained(Path(run_dir) / "wan").to(config.device)
    out = latent_cache_dir(run_dir, frames)
    return {"frames": frames, **build_latent_cache(dataset, vae, out, device=config.device, progress=False)}


def run_stage(cfg: TrainConfig) -> dict:
    from ..trainer import train

    result = train(cfg, progress=False)
    losses = result.losses
    tail = max(1, len(losses) // 5)
    return {
        "stage": cfg.stage,
        "frames": cfg.frames,
        "iterations": cfg.iterations,
        "mixture": cfg.mixture,
        "expression_mode": cfg.expression_mode,
        "use_normals": cfg.use_normals,
        "init": cfg.init,
        "first_loss": float(sum(losses[:tail]) / tail) if losses else None,
        "last_loss": float(sum(losses[-tail:]) / tail) if losses else None,
        "skipped_samples": result.skipped_samples,
        "final": str(result.final_model),
    }
