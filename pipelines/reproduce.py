"""Reproduce the paper's ablation table (Tab. 2) and four control modes (Tab. 3) at CPU scale, on held-out data.

    uv run python pipelines/reproduce.py --preset cpu --out runs/repro          # 2-core CPU, ~120 min (measured)
    uv run python pipelines/reproduce.py --preset gpu --out runs/repro-gpu      # one CUDA GPU, bf16, larger
    uv run python pipelines/reproduce.py --preset micro --out /tmp/m --report /tmp/m/report.md   # seconds/step

Thin: renders the data with `datagen render` (a subprocess: the model package never imports datagen) and hands
everything else to `factorportrait.reproduction` (VAE, prior, model-train stages for Full/C1/C2/C3, instruments,
evaluation, swap tests, report). A rerun resumes: finished steps (RUN/steps/*.done.json) are skipped.
`--set KEY=VALUE` overrides any field of the preset (packages/model/configs/reproduction/*.toml).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATAGEN_CONFIGS = ROOT / "packages" / "datagen" / "configs"


def datagen_modes() -> set[str]:
    """datagen render's --mode choices, read from its help (so new modes are picked up when they land)."""
    text = subprocess.run(
        [sys.executable, "-m", "datagen.cli", "render", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return {m for m in ("viewsweep", "dynamicsweep", "phonecapture", "studiocapture") if m in text}


def render_job(job, root: Path) -> None:
    """One `datagen render` of a job: sweeps and the studio rig from a generated TOML, the phone from its config."""
    root.mkdir(parents=True, exist_ok=True)
    ids = root / "ids.txt"
    ids.write_text("\n".join(job.ids) + "\n")
    if job.mode in ("viewsweep", "dynamicsweep"):
        config = root / "render.toml"
        config.write_text(
            f'mode = "{job.mode}"\nsequences = {job.sequences}\nframes = {job.frames}\n'
            f"resolution = {job.resolution}\nseed = {job.seed}\nworkers = {job.workers}\n"
            f'backend = "auto"\n\n[spin]\nsweep_deg = {job.spin_sweep_deg}\n\n'
            '[video]\ncrf = 18\nnormal_crf = 10\npreset = "fast"\n'
        )
    elif job.mode == "studiocapture":  # the rig of the preset (fewer cameras than datagen's default: CPU time)
        config = root / "render.toml"
        config.write_text(
            f'mode = "studiocapture"\nresolution = {job.resolution}\nbackend = "auto"\n\n[capture]\n'
            f"studio_yaw_deg = {list(map(float, job.extra['studio_yaw_deg']))}\n"
            f"studio_pitch_deg = {list(map(float, job.extra['studio_pitch_deg']))}\n"
            "studio_distance_m = 0.36\n\n"
            '[video]\ncrf = 18\nnormal_crf = 10\npreset = "fast"\n'
        )
    else:
        config = DATAGEN_CONFIGS / f"{job.mode}.toml"
    cmd = [
        sys.executable,
        "-m",
        "datagen.cli",
        "render",
        "--avatars",
        str(ids),
        "--config",
        str(config),
        "--mode",
        job.mode,
        "--sequences",
        str(job.sequences),
        "--frames",
        str(job.frames),
        "--resolution",
        str(job.resolution),
        "--seed",
        str(job.seed),
        "--workers",
        str(job.workers),
        "--normal-mesh",
        job.normal_mesh,
        "--out",
        str(root),
        "--quiet",
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="micro | cpu | gpu, or a TOML file")
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed when it exists)")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "reproduction.md", help="report path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from factorportrait.reproduction.config import DATAGEN_MODES, ReproConfigError, load_repro_config
    from factorportrait.reproduction.run import run_reproduction

    try:
        config = load_repro_config(args.preset, args.set)
    except ReproConfigError as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    modes = datagen_modes()
    available = {name for name, mode in DATAGEN_MODES.items() if mode in modes}
    missing = sorted(set(config.sequences) - available)
    if missing:
        print(f"reproduce: datagen offers no mode for {missing}: those datasets are left out", file=sys.stderr)
    run_reproduction(config, args.out, render_job, available, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
