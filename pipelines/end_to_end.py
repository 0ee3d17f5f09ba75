"""End-to-end run of the whole toolkit with the CLIs, in order: render data, train the four stages, animate a
portrait in the four control modes, evaluate. Thin by design: every step is the documented command.

    uv run python pipelines/end_to_end.py --out runs/e2e --preset tiny      # CPU, ~10 minutes
    uv run python pipelines/end_to_end.py --out runs/e2e --wan /models/Wan2.1-T2V-1.3B-Diffusers \
        --data-config packages/datagen/configs/dynamicsweep.toml             # real sizes (GPU cluster)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_FRAMES_TINY = {1: 5, 2: 9, 3: 13, 4: 17}


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", choices=["tiny"], help="tiny: small data, tiny random model (CPU)")
    parser.add_argument("--wan", help="local Wan 2.1 T2V folder (without --preset tiny)")
    parser.add_argument("--avatars", default=str(ROOT / "pipelines" / "demo_avatars.txt"))
    parser.add_argument("--data-config", default=str(ROOT / "packages" / "datagen" / "configs" / "demo.toml"))
    args = parser.parse_args()
    py, data = sys.executable, args.out / "data"
    tiny = ["--preset", "tiny"] if args.preset else ["--wan", args.wan]

    # 1. data: DynamicSweep and ViewSweep of the demo avatars
    for mode in ("dynamicsweep", "viewsweep"):
        extra = ["--frames", "24", "--sequences", "2"] if args.preset else []
        run(
            py,
            "-m",
            "datagen.cli",
            "render",
            "--avatars",
            args.avatars,
            "--config",
            args.data_config,
            "--mode",
            mode,
            "--out",
            str(data),
            "--quiet",
            *extra,
        )
    run(py, "-m", "datagen.cli", "validate", str(data), "--no-decode")

    # 2. training: the four progressive stages (synthetic data only here: no phone / studio captures)
    mixtures = {
        1: "DynamicSweep=1",
        2: "DynamicSweep=1",
        3: "ViewSweep=0.5,DynamicSweep=0.5",
        4: "ViewSweep=0.5,DynamicSweep=0.5",
    }
    for stage in (1, 2, 3, 4):
        frames = ["--frames", str(STAGE_FRAMES_TINY[stage])] if args.preset else []
        run(
            py,
            "-m",
            "factorportrait.cli.train",
            "--stage",
            str(stage),
            *tiny,
            "--data",
            str(data),
            "--mixture",
            mixtures[stage],
            "--output",
            str(args.out / "runs"),
            "--quiet",
            *frames,
        )

    # 3. inference in the paper's four control modes, driven by a rendered sequence
    model = args.out / "runs" / "stage4" / "final"
    image = args.out / "portrait.png"
    run(
        py,
        "-c",
        "import numpy as np; from PIL import Image; from datagen.manifest import read_rows; "
        "from datagen.video import read_video; "
        f"r = read_rows('{data}')[0]; Image.fromarray(read_video('{data}/' + r.rgb_path)[0]).save('{image}')",
    )
    size = ["--height", "32", "--width", "32", "--steps", "4", "--frames", "17"] if args.preset else []
    vae = ["--vae", "tiny"] if args.preset else ["--vae", args.wan]
    for name, extra in (
        ("frontal", ["--camera", "static"]),
        ("novel", ["--camera", "static", "--view-yaw", "35"]),
        ("spin", ["--camera", "spin", "--freeze-driving"]),
        ("spiral", ["--camera", "spiral"]),
    ):
        run(
            py,
            "-m",
            "factorportrait.cli.infer",
            "--model",
            str(model),
            *vae,
            "--image",
            str(image),
            "--driving",
            f"{data}::demo-001/dynamicsweep/0001",
            *extra,
            *size,
            "--out",
            str(args.out / "infer" / f"{name}.mp4"),
            "--quiet",
        )
    print(f"done: data {data}, models {args.out / 'runs'}, videos {args.out / 'infer'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
