"""`model-cache-latents`: precompute the Wan VAE latents of every training clip (RGB, normal maps, reference).

Example:
  model-cache-latents --stage 3 --data /data/phone /data/synthetic --wan /models/Wan2.1-T2V-1.3B-Diffusers \\
      --out /cache/stage3
  model-train --stage 3 ... --latent-cache /cache/stage3      # (or `latent_cache = ...` in the stage config)

The clips, their reference frames and the resolution come from the stage's config, exactly as training sees them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="model-cache-latents", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", type=int, required=True, choices=[1, 2, 3, 4])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--preset", choices=["tiny"])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--wan", help="local Wan 2.1 folder with vae/ (not needed with --preset tiny)")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from ..data.latent_cache import build_latent_cache
    from ..train_config import TrainConfigError, load_train_config
    from ..trainer import build_dataset, build_vae

    try:
        path = args.config or CONFIG_DIR / f"stage{args.stage}.toml"
        config = load_train_config(
            args.stage,
            path if path.exists() else None,
            args.preset,
            {"data": args.data, "wan": args.wan, "frames": args.frames, "height": args.height, "width": args.width},
        )
        dataset = build_dataset(config)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        vae = build_vae(config).to(device)
        summary = build_latent_cache(
            dataset, vae, args.out, shard_size=args.shard_size, device=device, progress=not args.quiet
        )
    except (TrainConfigError, FileNotFoundError, ValueError) as err:
        print(f"model-cache-latents: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
