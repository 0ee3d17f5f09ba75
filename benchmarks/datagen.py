"""datagen throughput: sequences/s and frames/s with 1 and 2 local Ray workers, and the share of task time
spent outside splatting (planning, posing, normal maps, video encoding, Parquet).

    uv run python benchmarks/datagen.py [--avatars 2] [--sequences 4] [--frames 12] [--resolution 128]

Ray is started before the clock starts (a cluster is up before a real job begins); worker start-up
(importing torch, growing the demo avatar) is inside the measured time, as it is in a real job.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This file is named after the package it measures: drop its folder from the import path so that
# `import datagen` finds the package, not this script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def measure(workers: int, args: argparse.Namespace) -> tuple[float, object]:
    import ray

    from datagen.config import RenderConfig
    from datagen.runner import run

    config = RenderConfig.for_mode(
        "dynamicsweep",
        sequences=args.sequences,
        frames=args.frames,
        resolution=args.resolution,
        workers=workers,
        backend=args.backend,
    )
    ids = [f"demo-{i:03d}" for i in range(args.avatars)]
    out = Path(tempfile.mkdtemp(prefix=f"datagen-bench-{workers}-"))
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        start = time.perf_counter()
        summary = run(config, ids, out, progress=False)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    return wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatars", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--backend", default="cpu")
    args = parser.parse_args()
    print(
        f"{args.avatars} avatars x {args.sequences} sequences x {args.frames} frames at {args.resolution}px, "
        f"backend {args.backend}"
    )
    print(
        f"{'workers':>8} {'wall s':>8} {'seq/s':>8} {'frames/s':>9} {'splat %':>8} {'normals %':>10} "
        f"{'other %':>8} {'outside-splat %':>16}"
    )
    results = {}
    for workers in (1, 2):
        wall, s = measure(workers, args)
        task = s.render_s + s.normals_s + s.other_s
        results[workers] = wall
        print(
            f"{workers:>8} {wall:>8.1f} {s.done / wall:>8.3f} {s.frames / wall:>9.2f} {100 * s.render_s / task:>8.1f} "
            f"{100 * s.normals_s / task:>10.1f} {100 * s.other_s / task:>8.1f} "
            f"{100 * (s.normals_s + s.other_s) / task:>16.1f}"
        )
    print(f"speed-up of 2 workers over 1: {results[1] / results[2]:.2f}x")


if __name__ == "__main__":
    main()
