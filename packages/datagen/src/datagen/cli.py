"""`datagen`: synthetic ViewSweep / DynamicSweep sequences (and PhoneCapture / StudioCapture stand-ins)
from animatable Gaussian avatars.

Examples:
  datagen render --avatars ids.txt --mode dynamicsweep --out data/         # paper settings (1024 px, 32 x 128 frames)
  datagen render --avatars ids.txt --config packages/datagen/configs/demo.toml --out data/   # small CPU preset
  datagen render --avatars ids.txt --mode viewsweep --sequences 4 --frames 16 --resolution 128 --workers 2 --out data/
  datagen render --avatars ids.txt --mode phonecapture --out data/         # one fixed frontal camera, dynamic face
  datagen render --avatars ids.txt --mode studiocapture --out data/        # 4 fixed cameras, one row per camera
  datagen validate data/                                                     # every video decodes, arrays line up
  datagen preview data/ --sequence demo-003/dynamicsweep/0001 --out sheet.png
  datagen plot-trajectories --mode spiral --count 8 --out spirals.png

ids.txt: one avatar id per line (demo-000 ... demo-015, or NAME for NAME.avatar.safetensors under --avatar-dir);
blank lines and # comments are ignored. A rerun skips complete sequences and redoes the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datagen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="render sequences of the listed avatars into videos + a Parquet manifest")
    render.add_argument("--avatars", required=True, type=Path, help="ids file: one avatar id per line")
    render.add_argument("--out", required=True, type=Path, help="dataset root (videos/ and manifest/ go there)")
    render.add_argument("--config", type=Path, help="TOML settings (default: configs/<mode>.toml, the paper's)")
    render.add_argument(
        "--mode",
        choices=["viewsweep", "dynamicsweep", "phonecapture", "studiocapture"],
        help="default: the config's, else dynamicsweep",
    )
    render.add_argument("--sequences", type=int, help="sequences per avatar (paper: 128 viewsweep, 32 dynamicsweep)")
    render.add_argument("--frames", type=int, help="frames per sequence (paper: 100 viewsweep, 128 dynamicsweep)")
    render.add_argument("--resolution", type=int, help="square image size in pixels (paper: 1024)")
    render.add_argument("--fps", type=float, help="frame rate of the videos and timestamps")
    render.add_argument(
        "--seed", type=int, help="global seed; plans are a pure function of (seed, avatar, mode, index)"
    )
    render.add_argument("--workers", type=int, help="local Ray workers (0 = render in this process, no Ray)")
    render.add_argument("--ray-address", help="join a running Ray cluster (e.g. auto or ray://host:10001)")
    render.add_argument("--backend", choices=["auto", "cpu", "gsplat"], help="splatting backend (gsplat needs CUDA)")
    render.add_argument("--avatar-dir", type=Path, help="folder of NAME.avatar.safetensors files")
    render.add_argument(
        "--camera-distance", type=float, help="phonecapture: camera distance from the head centre in m (0.32)"
    )
    render.add_argument(
        "--studio-yaws",
        type=_floats,
        help="studiocapture: comma-separated camera yaws in degrees (-45,-15,15,45); pitches default to 0 when "
        "their count changes",
    )
    render.add_argument("--studio-pitches", type=_floats, help="studiocapture: comma-separated camera pitches (deg)")
    render.add_argument("--quiet", action="store_true", help="no progress bar")

    validate = sub.add_parser("validate", help="check every manifest row's videos and per-frame arrays")
    validate.add_argument("root", type=Path, help="dataset root")
    validate.add_argument("--no-decode", action="store_true", help="probe videos instead of decoding every frame")

    preview = sub.add_parser("preview", help="contact sheet of one sequence: frames, normals, camera path")
    preview.add_argument("root", type=Path, help="dataset root")
    preview.add_argument("--sequence", required=True, help="sequence id, e.g. demo-003/dynamicsweep/0001")
    preview.add_argument("--out", required=True, type=Path, help="output PNG")
    preview.add_argument("--columns", type=int, default=6, help="frames shown (default 6)")

    plot = sub.add_parser("plot-trajectories", help="plot sampled camera trajectories around the head")
    plot.add_argument("--mode", choices=["spin", "spiral", "viewsweep", "dynamicsweep"], default="spin")
    plot.add_argument("--count", type=int, default=8, help="trajectories to draw")
    plot.add_argument("--frames", type=int, default=100)
    plot.add_argument("--seed", type=int, default=0)
    plot.add_argument("--config", type=Path, help="TOML settings for the trajectory ranges")
    plot.add_argument("--out", required=True, type=Path, help="output PNG")
    return parser


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as err:
        print(f"datagen: error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2


def _load_render_config(args: argparse.Namespace):
    from .config import apply_overrides, load_config

    mode = args.mode
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = load_config(CONFIG_DIR / f"{mode or 'dynamicsweep'}.toml")
    overrides = {
        "mode": mode,
        "sequences": args.sequences,
        "frames": args.frames,
        "resolution": args.resolution,
        "fps": args.fps,
        "seed": args.seed,
        "workers": args.workers,
        "ray_address": args.ray_address,
        "backend": args.backend,
        "avatar_dir": str(args.avatar_dir) if args.avatar_dir else None,
        "capture.distance_m": args.camera_distance,
        "capture.studio_yaw_deg": args.studio_yaws,
        "capture.studio_pitch_deg": args.studio_pitches,
    }
    yaws = args.studio_yaws
    if yaws is not None and args.studio_pitches is None and len(yaws) != len(config.capture.studio_pitch_deg):
        overrides["capture.studio_pitch_deg"] = (0.0,) * len(yaws)
    return apply_overrides(config, overrides)


def _render(args: argparse.Namespace) -> int:
    from .avatars import read_avatar_ids
    from .runner import run

    config = _load_render_config(args)
    avatar_ids = read_avatar_ids(args.avatars)
    cameras = f" x {config.num_cameras} cameras" if config.num_cameras > 1 else ""
    print(
        f"datagen: {config.mode}, {len(avatar_ids)} avatars x {config.sequences} sequences{cameras} x "
        f"{config.frames} frames "
        f"at {config.resolution}px, backend {config.backend}, "
        f"{'in-process' if config.workers == 0 and not config.ray_address else 'Ray'} -> {args.out}",
        file=sys.stderr,
    )
    summary = run(config, avatar_ids, args.out, progress=not args.quiet)
    print(summary.format())
    return 1 if summary.failed else 0


def _validate(args: argparse.Namespace) -> int:
    from .manifest import validate_dataset

    report = validate_dataset(args.root, decode=not args.no_decode)
    print(report.format())
    return 0 if report.ok else 1


def _preview(args: argparse.Namespace) -> int:
    from .preview import sequence_sheet

    sequence_sheet(args.root, args.sequence, args.out, columns=args.columns)
    print(f"wrote {args.out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    import numpy as np

    from .config import RenderConfig, load_config
    from .trajectories import plot_trajectories, spin_trajectory, spiral_trajectory

    config = load_config(args.config) if args.config else RenderConfig()
    trajectories = []
    for i in range(args.count):
        rng = np.random.default_rng([args.seed, i])
        kind = args.mode if args.mode in ("spin", "spiral") else config.trajectory_kind(i)
        if kind == "spin":
            trajectories.append(spin_trajectory(rng, args.frames, config.spin))
        else:
            trajectories.append(spiral_trajectory(rng, args.frames, config.spiral))
    plot_trajectories(trajectories, args.out, title=f"{args.count} {args.mode} trajectories (seed {args.seed})")
    print(f"wrote {args.out}")
    return 0


_COMMANDS = {"render": _render, "validate": _validate, "preview": _preview, "plot-trajectories": _plot}

if __name__ == "__main__":
    sys.exit(main())
