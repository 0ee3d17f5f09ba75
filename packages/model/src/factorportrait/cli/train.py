"""`model-train`: four-stage flow-matching training of FactorPortrait (paper Tab. 1).

Examples:
  model-train --stage 1 --wan /models/Wan2.1-T2V-1.3B-Diffusers --data /data/phone --output runs/fp
  model-train --stage 2 --data /data/phone /data/studio --output runs/fp          # starts from stage 1's final model
  model-train --stage 4 --config packages/model/configs/stage4.toml --resume
  model-train --stage 1 --preset tiny --data out/demo --mixture DynamicSweep=1 --output runs/tiny   # CPU, minutes
  accelerate launch --config_file packages/model/configs/accelerate/ddp.yaml -m factorportrait.cli.train --stage 3 ...
  accelerate launch --config_file packages/model/configs/accelerate/cpu_fsdp.yaml -m factorportrait.cli.train ...  # CPU

Settings: packages/model/configs/stage{1..4}.toml (the paper's frames, mixture and iterations); flags override.
Each stage writes OUTPUT/stageN/{checkpoints/, logs/ (TensorBoard), validation/, final/ (diffusers format)}.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="model-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3, 4])
    p.add_argument("--config", type=Path, help="TOML settings (default: configs/stageN.toml)")
    p.add_argument("--preset", choices=["tiny"], help="tiny: random tiny model + VAE, small clips, for CPU")
    p.add_argument("--init", help="start from: auto (default), a FactorPortrait folder, or a Wan 2.1 folder")
    p.add_argument("--wan", help="local Wan 2.1 T2V diffusers folder (stage 1 weights and the VAE)")
    p.add_argument("--data", nargs="+", help="dataset roots (folders with manifest/)")
    p.add_argument("--mixture", help="override the mixture, e.g. ViewSweep=0.3,DynamicSweep=0.7")
    p.add_argument("--output", help="output root (stages go to OUTPUT/stageN)")
    p.add_argument("--resume", action="store_true", help="continue from the stage's latest checkpoint")
    p.add_argument(
        "--force", action="store_true", help="with --resume: accept settings that differ from the run's config.json"
    )
    p.add_argument("--iterations", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--validate-every", type=int)
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    p.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None, help="recompute blocks"
    )
    p.add_argument("--latent-cache", help="folder written by model-cache-latents (read instead of videos)")
    p.add_argument(
        "--expression-mode", choices=["codes", "landmarks"], help="landmarks: the C3 ablation (needs 1.1 landmarks)"
    )
    p.add_argument(
        "--expression-dropout", type=float, help="P(expression -> neutral code / all landmarks hidden), default 0.1"
    )
    p.add_argument("--reference-dropout", type=float, help="P(reference latent -> zeros), default 0")
    p.add_argument("--normal-dropout", type=float, help="P(normal maps -> no surface), default 0")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    from ..training.config import TrainConfigError, load_train_config, parse_mixture

    try:
        config_path = args.config or (CONFIG_DIR / f"stage{args.stage}.toml")
        overrides = {
            "init": args.init,
            "wan": args.wan,
            "data": args.data,
            "output": args.output,
            "iterations": args.iterations,
            "frames": args.frames,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "height": args.height,
            "width": args.width,
            "seed": args.seed,
            "num_workers": args.num_workers,
            "save_every": args.save_every,
            "validate_every": args.validate_every,
            "latent_cache": args.latent_cache,
            "mixed_precision": args.mixed_precision,
            "ema_decay": args.ema_decay,
            "grad_accum": args.grad_accum,
            "gradient_checkpointing": args.gradient_checkpointing,
            "expression_mode": args.expression_mode,
            "expression_dropout": args.expression_dropout,
            "reference_dropout": args.reference_dropout,
            "normal_dropout": args.normal_dropout,
            "mixture": parse_mixture(args.mixture) if args.mixture else None,
        }
        config = load_train_config(args.stage, config_path if config_path.exists() else None, args.preset, overrides)
        from ..training.loop import train

        result = train(config, resume=args.resume, progress=not args.quiet, force=args.force)
    except (TrainConfigError, FileNotFoundError, ValueError) as err:
        print(f"model-train: error: {err}", file=sys.stderr)
        return 2
    print(
        f"stage {config.stage}: {result.steps} steps, last loss {result.losses[-1] if result.losses else 'n/a'}, "
        f"{result.skipped_samples} broken samples skipped; model -> {result.final_model}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
