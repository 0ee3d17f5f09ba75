"""datagen throughput, in one run on the same cores: render-only, encode-only and end-to-end frames/s of one task.

    uv run python benchmarks/datagen.py [--frames 24] [--resolution 128] [--backend cpu] [--save configs/rates.json]

- render-only: the task's render loop (posing, splatting, normal maps, uint8 conversion), frames kept in memory;
- encode-only: those same frames through the two H.264 encoders (RGB crf 18, normals crf 10), serially;
- end-to-end: `datagen render` of the same sequences in this process (planning, rendering with the encoders on
  their own threads beside it, checksums, Parquet part), from the job's timer; also with --no-overlap.
A frame is one RGB + one normal-map frame. The goal is end-to-end >= 0.8 x the slower of render and encode.
`--save FILE` merges the rates into a rates file under `--name` (what `datagen plan` reads).
`--ray-scaling` also runs the earlier measurement: 1 and 2 local Ray workers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This file is named after the package it measures: drop its folder from the import path so that
# `import datagen` finds the package, not this script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _config(args: argparse.Namespace, **overrides):
    from datagen.config import RenderConfig

    return RenderConfig.for_mode(
        "dynamicsweep",
        sequences=args.sequences,
        frames=args.frames,
        resolution=args.resolution,
        workers=0,
        backend=args.backend,
        **overrides,
    )


def render_only(args: argparse.Namespace, avatar_id: str) -> tuple[float, list, list, object]:
    """frames/s of the render loop alone; returns the frames for the encode-only run."""
    import numpy as np
    import torch

    from avatar_render import Camera, render, render_normals
    from avatar_render.normals import encode_normals
    from datagen.avatars import cached_avatar
    from datagen.plan import plan_sequence
    from datagen.render_sequence import POSE_CHUNK

    config = _config(args)
    torch.set_num_threads(config.torch_threads)
    avatar = cached_avatar(avatar_id)
    device = "cuda" if args.backend in ("gsplat", "auto") and torch.cuda.is_available() else "cpu"
    avatar = avatar.to(device=device)
    background = torch.tensor(config.background, dtype=torch.float32, device=device)
    rgbs, normals_out = [], []
    elapsed = 0.0
    for index in range(args.sequences):
        plan = plan_sequence(config, avatar, index, avatar_id=avatar_id)
        tick = time.perf_counter()
        cameras = Camera(
            K=torch.from_numpy(np.repeat(plan.K[None].astype(np.float32), plan.num_frames, 0)),
            viewmat=torch.from_numpy(plan.viewmats().astype(np.float32)),
            width=plan.width,
            height=plan.height,
        ).to(device=device)
        codes, poses = torch.from_numpy(plan.codes).to(device), torch.from_numpy(plan.poses).to(device)
        with torch.no_grad():
            for start in range(0, plan.num_frames, POSE_CHUNK):
                chunk = slice(start, min(plan.num_frames, start + POSE_CHUNK))
                posed = avatar.pose(codes[chunk], poses[chunk])
                for offset in range(len(posed)):
                    t = start + offset
                    out = render(posed.frame(offset), cameras[t], backend=args.backend, background=background)
                    rgbs.append((out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
                    n, mask = render_normals(posed.vertices[offset], posed.faces, cameras[t])
                    normals_out.append(encode_normals(n, mask)[0].cpu().numpy())
        elapsed += time.perf_counter() - tick
    return len(rgbs) / elapsed, rgbs, normals_out, config


def encode_only(config, rgbs: list, normals: list, folder: Path) -> tuple[float, float, float]:
    """frames/s of the two encoders on pre-rendered frames; bytes per pixel per frame of each video."""
    from datagen.video import VideoWriter

    video = config.video
    per_sequence = config.frames
    tick = time.perf_counter()
    sizes = [0, 0]
    for start in range(0, len(rgbs), per_sequence):
        for n, (frames, crf) in enumerate(((rgbs, video.crf), (normals, video.normal_crf))):
            path = folder / f"enc-{start}-{n}.mp4"
            with VideoWriter(path, config.resolution, config.resolution, config.fps, crf=crf, preset=video.preset,
                             threads=video.threads) as writer:  # fmt: skip
                for frame in frames[start : start + per_sequence]:
                    writer.write(frame)
            sizes[n] += path.stat().st_size
    elapsed = time.perf_counter() - tick
    pixel_frames = len(rgbs) * config.resolution**2
    return len(rgbs) / elapsed, sizes[0] / pixel_frames, sizes[1] / pixel_frames


def end_to_end(config, avatar_id: str, folder: Path):
    from datagen.runner import run

    summary = run(config, [avatar_id], folder, progress=False)
    assert summary.failed == 0, summary.format()
    return summary


def ray_scaling(args: argparse.Namespace) -> None:
    import ray

    from datagen.runner import run

    ids = [f"demo-{i:03d}" for i in range(2)]
    for workers in (1, 2):
        config = _config(args, workers=workers)
        out = Path(tempfile.mkdtemp(prefix=f"datagen-bench-ray{workers}-"))
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            summary = run(config, ids, out, progress=False)
        finally:
            ray.shutdown()
            shutil.rmtree(out, ignore_errors=True)
        print(f"Ray, {workers} worker(s), 2 avatars: {summary.frames / summary.wall_s:.2f} frames/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--avatar", default="demo-000")
    parser.add_argument("--save", type=Path, help="merge the measured rates into this rates file")
    parser.add_argument("--name", default="cpu", help="profile name in the rates file")
    parser.add_argument("--description", default="", help="what machine this is (stored with --save)")
    parser.add_argument("--ray-scaling", action="store_true", help="also time 1 and 2 local Ray workers")
    args = parser.parse_args()

    import torch

    print(
        f"{args.sequences} sequences x {args.frames} frames at {args.resolution}px, backend {args.backend}, "
        f"one task ({torch.get_num_threads()} torch threads available, 1 used)"
    )
    from datagen.avatars import cached_avatar

    cached_avatar(args.avatar)  # growing the avatar is start-up, not throughput
    warm = argparse.Namespace(**{**vars(args), "sequences": 1, "frames": 2})
    render_only(warm, args.avatar)  # first calls pay one-off costs (allocator, kernels): not throughput
    folder = Path(tempfile.mkdtemp(prefix="datagen-bench-"))
    try:
        render_fps, rgbs, normals, config = render_only(args, args.avatar)
        encode_fps, rgb_bpp, normal_bpp = encode_only(config, rgbs, normals, folder)
        overlapped = end_to_end(config, args.avatar, folder / "overlap")
        serial_config = _config(args)
        serial_config.video.overlap = False
        serial = end_to_end(serial_config, args.avatar, folder / "serial")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    e2e, e2e_serial = overlapped.frames_per_s, serial.frames_per_s
    slower = min(render_fps, encode_fps)
    print(f"render-only      {render_fps:8.2f} frames/s")
    print(
        f"encode-only      {encode_fps:8.2f} frames/s  (RGB {rgb_bpp:.3f}, normals {normal_bpp:.3f} bytes/pixel/frame)"
    )
    print(f"end-to-end       {e2e:8.2f} frames/s  (encoders on threads beside the render loop)")
    print(f"end-to-end serial {e2e_serial:7.2f} frames/s  (--no-overlap)")
    print(f"end-to-end / slower stage = {e2e / slower:.2f} (goal >= 0.8); serial: {e2e_serial / slower:.2f}")
    print(overlapped.format().splitlines()[2] if len(overlapped.format().splitlines()) > 2 else "")
    if args.ray_scaling:
        ray_scaling(args)
    if args.save:
        rates = json.loads(args.save.read_text()) if args.save.exists() else {}
        rates[args.name] = {
            "description": args.description or f"{args.backend} backend, one task",
            "resolution": args.resolution,
            "backend": args.backend,
            "render_fps": round(render_fps, 3),
            "encode_fps": round(encode_fps, 3),
            "end_to_end_fps": round(e2e, 3),
            "end_to_end_serial_fps": round(e2e_serial, 3),
            "rgb_bytes_per_pixel_frame": round(rgb_bpp, 4),
            "normal_bytes_per_pixel_frame": round(normal_bpp, 4),
            "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        args.save.write_text(json.dumps(rates, indent=2) + "\n")
        print(f"saved profile '{args.name}' to {args.save}")


if __name__ == "__main__":
    main()
