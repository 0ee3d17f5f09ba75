"""`model-infer`: animate a portrait image with driving expressions/head poses along a camera path.

Examples (the paper's four control modes):
  model-infer --model runs/fp/stage4/final --vae /models/Wan2.1-T2V-1.3B-Diffusers --image me.png \\
      --driving data::demo-003/dynamicsweep/0001 --camera static --frames 81 --out frontal.mp4     # 1. frontal
  model-infer ... --camera static --view-yaw 35 --out novel.mp4          # 2. static novel view, dynamic face
  model-infer ... --driving codes.npz --freeze-driving --camera spin --out spin.mp4   # 3. static face, moving camera
  model-infer ... --camera spiral --out all.mp4                           # 4. everything dynamic
  model-infer ... --camera cameras.json                                   # a camera path file (OpenCV c2w + K)

--driving: ROOT::SEQUENCE_ID (a manifest sequence), a .npz/.safetensors file with `expression` [T, 128] and
`head_pose` [T, 6], or a video with --expression-encoder PATH. Writes OUT (mp4) and OUT.json with every condition.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="model-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="trained model folder (model-train's stageN/final)")
    p.add_argument("--vae", default="tiny", help="Wan 2.1 folder with vae/, or 'tiny' for tiny test models")
    p.add_argument("--image", required=True, type=Path, help="reference portrait (PNG/JPEG)")
    p.add_argument("--driving", required=True, help="ROOT::SEQUENCE_ID, codes file (.npz/.safetensors) or video")
    p.add_argument("--expression-encoder", help="expression-encoder weights (for a driving video)")
    p.add_argument("--freeze-driving", action="store_true", help="hold the first driving frame (static face)")
    p.add_argument("--camera", default="static", help="static | spin | spiral | PATH (.json/.npz camera file)")
    p.add_argument("--view-yaw", type=float, default=0.0, help="static/spin start yaw in degrees (0 = frontal)")
    p.add_argument("--sweep", type=float, default=90.0, help="spin: degrees turned over the clip")
    p.add_argument("--distance", type=float, default=0.32, help="camera distance from the head (m)")
    p.add_argument("--frames", type=int, help="frames to generate (default: the driving length)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--scheduler", choices=["unipc", "euler"], default="unipc")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--window", type=int, default=81, help="frames per model call (1+4k); longer clips overlap")
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--guide-avatar", default="demo-000", help="head mesh for the normal maps (avatar id or file)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"model-infer: error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..inference.camera_paths import load_camera_file, make_camera_path
    from ..inference.driving import DrivingSignal, load_driving
    from ..inference.pipeline import FactorPortraitPipeline
    from ..video_io import write_mp4

    if not args.image.exists():
        raise FileNotFoundError(f"reference image '{args.image}' does not exist")
    image = np.asarray(Image.open(args.image).convert("RGB"))
    driving = load_driving(args.driving, args.expression_encoder)
    frames = args.frames or len(driving)
    if args.freeze_driving:
        driving = DrivingSignal(
            np.repeat(driving.codes[:1], frames, 0),
            np.repeat(driving.head_poses[:1], frames, 0),
            {**driving.source, "frozen": True},
            driving.codes_in_avatar_space,
        )
    K = None
    if args.camera in ("static", "spin", "spiral"):
        c2w, camera = make_camera_path(args.camera, frames, args.view_yaw, args.distance, args.sweep)
    else:
        c2w, K, camera = load_camera_file(args.camera, frames)
    pipeline = FactorPortraitPipeline.from_pretrained(
        args.model, vae=args.vae, scheduler=args.scheduler, shift=args.shift, guide_avatar=args.guide_avatar
    )
    result = pipeline(
        image,
        driving,
        c2w,
        K,
        height=args.height,
        width=args.width,
        num_frames=frames,
        num_inference_steps=args.steps,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        window=args.window,
        overlap=args.overlap,
        progress=not args.quiet,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(result.frames, args.out, fps=args.fps)
    sidecar = {
        "model": str(args.model),
        "vae": args.vae,
        "image": str(args.image),
        "driving": driving.source,
        "camera": camera,
        "frames": frames,
        "height": args.height,
        "width": args.width,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "shift": args.shift,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "window": args.window,
        "overlap": args.overlap,
        "guide_avatar": args.guide_avatar,
        "fps": args.fps,
        "control_mode": _control_mode(args),
        "K": result.K.tolist(),
        "c2w": result.c2w.tolist(),
        "expression": driving.codes[:frames].tolist(),
        "head_pose": driving.head_poses[:frames].tolist(),
    }
    tmp = args.out.with_name(f".{args.out.name}.json.tmp")
    tmp.write_text(json.dumps(sidecar))
    tmp.replace(args.out.with_suffix(".json"))
    print(f"wrote {args.out} ({frames} frames, {args.width}x{args.height}) and {args.out.with_suffix('.json')}")
    return 0


def _control_mode(args: argparse.Namespace) -> str:
    if args.camera == "static":
        return "static-frontal" if args.view_yaw == 0 else "static-novel-view"
    return "moving-camera-static-face" if args.freeze_driving else "all-dynamic"


if __name__ == "__main__":
    sys.exit(main())
