"""`datagen`: synthetic ViewSweep / DynamicSweep sequences (and PhoneCapture / StudioCapture stand-ins)
from animatable Gaussian avatars.

Examples:
  datagen render --avatars ids.txt --mode dynamicsweep --out data/         # paper settings (1024 px, 32 x 128 frames)
  datagen render --avatars ids.txt --config packages/datagen/configs/demo.toml --out data/   # small CPU preset
  datagen render --avatars ids.txt --mode viewsweep --sequences 4 --frames 16 --resolution 128 --workers 2 --out data/
  datagen render --avatars ids.txt --mode phonecapture --out data/         # one fixed frontal camera, dynamic face
  datagen render --avatars ids.txt --mode studiocapture --out data/        # 4 fixed cameras, one row per camera
  datagen render --avatars ids.txt --mode viewsweep --out s3://bucket/prefix   # object storage (AWS_* environment)
  datagen ingest phone_videos/ --out real/ --dataset PhoneCapture           # real face videos (tracked)
  datagen validate data/                                                     # every video decodes, arrays line up
  datagen plan --avatars ids.txt --mode both                                 # sizes and machine-hours, dry run
  datagen preview data/ --sequence demo-003/dynamicsweep/0001 --out sheet.png
  datagen plot-trajectories --mode spiral --count 8 --out spirals.png

ids.txt: one avatar id per line (demo-000 ... demo-015, or NAME for NAME.avatar.safetensors under --avatar-dir);
blank lines and # comments are ignored; `avatar-render list --count 802 --ids-only` writes one.
A rerun skips complete sequences (part file, same settings, videos of the recorded size and checksum), redoes
broken ones, and refuses sequences rendered with other settings (listing the fields) unless --force.
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
    render.add_argument(
        "--out",
        required=True,
        help="dataset root (videos/ and manifest/ go there): a folder, s3://bucket/prefix or gs://bucket/prefix "
        "(credentials and endpoint from the standard environment, e.g. AWS_ENDPOINT_URL)",
    )
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
    render.add_argument(
        "--normal-mesh",
        choices=["neutral", "tracked"],
        help="normal maps of the neutral template posed by the head pose (default, the paper's) or with the expression",
    )
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
    render.add_argument(
        "--x264-threads", type=int, help="x264 threads per video (1, the default, keeps files bit-identical)"
    )
    render.add_argument("--x264-preset", help="x264 preset (config default: medium)")
    render.add_argument(
        "--no-overlap", action="store_true", help="encode in the render loop instead of on encoder threads"
    )
    render.add_argument("--force", action="store_true", help="redo sequences rendered with other settings")
    render.add_argument(
        "--verify",
        choices=["checksum", "size"],
        default="checksum",
        help="how existing videos are checked before they are skipped (default checksum: sha256 of each; size: "
        "sizes only, for very large datasets)",
    )
    render.add_argument("--profile", action="store_true", help="per-frame times of each stage in the summary")
    render.add_argument("--quiet", action="store_true", help="no progress bar")

    ingest = sub.add_parser("ingest", help="real face videos (phone captures) into videos + a Parquet manifest")
    ingest.add_argument("inputs", nargs="+", type=Path, help="video files and/or folders of videos")
    ingest.add_argument("--out", required=True, type=Path, help="dataset root (a local folder; resumed)")
    ingest.add_argument("--config", type=Path, help="TOML settings (default: configs/ingest.toml)")
    ingest.add_argument("--dataset", help="dataset name in the manifest (default PhoneCapture)")
    who = ingest.add_mutually_exclusive_group()
    who.add_argument("--identity", help="one identity for every video (default: one per video, its file name)")
    who.add_argument("--identities", type=Path, help="mapping file: lines 'file_name,identity'")
    ingest.add_argument("--resolution", type=int, help="square output size in pixels (default 512)")
    ingest.add_argument("--fov-deg", type=float, help="the camera's horizontal field of view (default 53.1)")
    ingest.add_argument("--avatar", help="head rig the faces are tracked onto (default demo-000)")
    ingest.add_argument("--normal-mesh", choices=["neutral", "tracked"], help="normal maps without / with expression")
    ingest.add_argument("--min-segment-frames", type=int, help="shortest run of face frames kept (default 16)")
    ingest.add_argument("--max-frames", type=int, help="frames per video at most")
    ingest.add_argument("--masks", action="store_true", default=None, help="also write foreground-mask videos")
    ingest.add_argument("--workers", type=int, help="Ray workers (0 = in this process)")
    ingest.add_argument("--force", action="store_true", help="replace rows of videos ingested with other settings")

    validate = sub.add_parser("validate", help="check every manifest row's videos and per-frame arrays")
    validate.add_argument("root", help="dataset root: a folder, s3://... or gs://...")
    validate.add_argument("--no-decode", action="store_true", help="probe videos instead of decoding every frame")

    preview = sub.add_parser("preview", help="contact sheet of one sequence: frames, normals, camera path")
    preview.add_argument("root", type=Path, help="dataset root")
    preview.add_argument("--sequence", required=True, help="sequence id, e.g. demo-003/dynamicsweep/0001")
    preview.add_argument("--out", required=True, type=Path, help="output PNG")
    preview.add_argument("--columns", type=int, default=6, help="frames shown (default 6)")

    plan = sub.add_parser("plan", help="dry run: sequences, frames, bytes and machine-hours of a job")
    plan.add_argument("--avatars", required=True, type=Path, help="ids file: one avatar id per line")
    plan.add_argument("--mode", choices=["viewsweep", "dynamicsweep", "phonecapture", "studiocapture", "both"])
    plan.add_argument("--config", type=Path, help="TOML settings (with --mode both: used for both)")
    plan.add_argument("--sequences", type=int, help="sequences per avatar")
    plan.add_argument("--frames", type=int, help="frames per sequence")
    plan.add_argument("--resolution", type=int, help="square image size in pixels")
    plan.add_argument("--avatar-dir", type=Path, help="folder of NAME.avatar.safetensors files")
    plan.add_argument("--rates", type=Path, help="measured rates (default: the package's configs/rates.json)")
    plan.add_argument("--hardware", help="profile in the rates file (default: the first; see --list-hardware)")
    plan.add_argument("--tasks-per-machine", type=float, default=1.0, help="render tasks run at once per machine")

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
    except (ValueError, FileNotFoundError, PermissionError, KeyError, OSError) as err:
        print(f"datagen: error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2


def _load_render_config(args: argparse.Namespace, mode: str | None = None):
    from .config import apply_overrides, load_config

    mode = mode or args.mode
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = load_config(CONFIG_DIR / f"{mode or 'dynamicsweep'}.toml")
    overrides = {
        "mode": mode,
        "sequences": args.sequences,
        "frames": args.frames,
        "resolution": args.resolution,
        "fps": getattr(args, "fps", None),
        "seed": getattr(args, "seed", None),
        "workers": getattr(args, "workers", None),
        "ray_address": getattr(args, "ray_address", None),
        "backend": getattr(args, "backend", None),
        "normal_mesh": getattr(args, "normal_mesh", None),
        "avatar_dir": str(args.avatar_dir) if args.avatar_dir else None,
        "capture.distance_m": getattr(args, "camera_distance", None),
        "capture.studio_yaw_deg": getattr(args, "studio_yaws", None),
        "capture.studio_pitch_deg": getattr(args, "studio_pitches", None),
        "video.threads": getattr(args, "x264_threads", None),
        "video.preset": getattr(args, "x264_preset", None),
        "video.overlap": False if getattr(args, "no_overlap", False) else None,
    }
    yaws = getattr(args, "studio_yaws", None)
    if (
        yaws is not None
        and getattr(args, "studio_pitches", None) is None
        and len(yaws) != len(config.capture.studio_pitch_deg)
    ):
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
    summary = run(
        config,
        avatar_ids,
        args.out,
        progress=not args.quiet,
        force=args.force,
        verify=args.verify,
        profile=args.profile,
    )
    print(summary.format())
    return 1 if summary.failed else 0


def _plan(args: argparse.Namespace) -> int:
    from .avatars import read_avatar_ids, resolve_avatar
    from .sizing import HEADER, estimate_job, load_rates, task_memory_bytes

    avatar_ids = read_avatar_ids(args.avatars)
    for avatar_id in avatar_ids:
        resolve_avatar(avatar_id, args.avatar_dir)
    rates = load_rates(args.rates)
    name = args.hardware or next(iter(rates))
    if name not in rates:
        raise ValueError(f"--hardware {name!r}: the rates file has {', '.join(rates)}")
    profile = rates[name]
    modes = ["viewsweep", "dynamicsweep"] if args.mode == "both" else [args.mode]
    estimates = []
    for mode in modes:
        config = _load_render_config(args, mode=mode)
        estimates.append((config, estimate_job(config, len(avatar_ids), profile, args.tasks_per_machine)))
    print(
        f"rates '{name}': {profile.get('description', '')} at {profile['resolution']} px per task: render "
        f"{profile['render_fps']:.1f}, encode {profile['encode_fps']:.1f}, end to end {profile['end_to_end_fps']:.1f} "
        f"frames/s (scaled by pixel count); {args.tasks_per_machine:g} tasks per machine"
    )
    print(HEADER)
    for _, estimate in estimates:
        print(estimate.row())
    if len(estimates) > 1:
        total = estimates[0][1]
        for _, e in estimates[1:]:
            total = type(total)(
                "total", total.avatars, total.sequences + e.sequences, total.frames + e.frames, total.bytes + e.bytes,
                total.render_hours + e.render_hours, total.encode_hours + e.encode_hours,
                total.task_hours + e.task_hours, total.machine_hours + e.machine_hours,
            )  # fmt: skip
        print(total.row())
    config = estimates[0][0]
    print(
        f"resolution {config.resolution} px, memory per task about {task_memory_bytes(config) / 2**30:.1f} GiB; "
        "hours are per task at the measured end-to-end rate (render h / encode h: each stage alone)"
    )
    return 0


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


def _ingest(args: argparse.Namespace) -> int:
    from .ingest import collect_videos, frames_per_second, load_ingest_config, run_ingest

    config = load_ingest_config(
        args.config or CONFIG_DIR / "ingest.toml",
        {
            "dataset": args.dataset,
            "resolution": args.resolution,
            "fov_deg": args.fov_deg,
            "avatar": args.avatar,
            "normal_mesh": args.normal_mesh,
            "min_segment_frames": args.min_segment_frames,
            "max_frames": args.max_frames,
            "masks": args.masks,
            "workers": args.workers,
        },
    )
    jobs = collect_videos(args.inputs, args.identity, args.identities)
    print(
        f"datagen ingest: {len(jobs)} video(s) -> {args.out} as {config.dataset} at {config.resolution}px, "
        f"{'in-process' if config.workers == 0 else f'{config.workers} Ray workers'}",
        file=sys.stderr,
    )
    summary = run_ingest(jobs, config, args.out, force=args.force)
    print(summary.format() + f" ({frames_per_second(summary):.1f} frames/s)")
    return 1 if summary.failed else 0


_COMMANDS = {
    "ingest": _ingest,
    "render": _render,
    "validate": _validate,
    "plan": _plan,
    "preview": _preview,
    "plot-trajectories": _plot,
}

if __name__ == "__main__":
    sys.exit(main())
