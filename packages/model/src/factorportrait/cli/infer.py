"""`model-infer`: animate a portrait image with driving expressions/head poses along a camera path.

Examples (the paper's four control modes):
  model-infer --model runs/fp/stage4/final --vae /models/Wan2.1-T2V-1.3B-Diffusers --image me.png \\
      --driving data::demo-003/dynamicsweep/0001 --camera static --frames 81 --out frontal.mp4     # 1. frontal
  model-infer ... --camera static --view-yaw 35 --out novel.mp4          # 2. static novel view, dynamic face
  model-infer ... --driving codes.npz --freeze-driving --camera spin --out spin.mp4   # 3. static face, moving camera
  model-infer ... --camera spiral --out all.mp4                           # 4. everything dynamic
  model-infer ... --camera cameras.json                                   # a camera path file (OpenCV c2w + K)

Cameras: the --image photo is the reference camera, taken to be frontal at the default distance (0.32 m); every
camera path is relative to it (--view-yaw 35 = turned 35 deg around the head from the photo's viewpoint). A camera
file's c2w are relative to the photo, unless the file also holds `reference_c2w` (the photo's own camera): then
c2w and reference_c2w are absolute in the avatar frame and the path is made relative to reference_c2w.

--driving: ROOT::SEQUENCE_ID (a manifest sequence), a .npz/.safetensors file with `expression` [T, 128] and
`head_pose` [T, 6] (e.g. from `face-track`), or a video: tracked onto the --guide-avatar head rig (codes, head poses
and landmarks; no weights needed), or with --expression-encoder PATH encoded by that network (codes only).
C3 (landmark) models read landmarks from --landmarks, else from the driving sequence / file / track.
--guidance-scale > 1 contrasts with the neutral code; it needs a model
trained with expression dropout (model-train's expression_dropout, default 0.1) and warns otherwise.
Writes OUT (mp4) and OUT.json with every condition.
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
    p.add_argument(
        "--expression-encoder",
        help="expression-encoder weights for a driving video (default: track the video onto --guide-avatar's rig)",
    )
    p.add_argument("--freeze-driving", action="store_true", help="hold the first driving frame (static face)")
    p.add_argument("--camera", default="static", help="static | spin | spiral | PATH (.json/.npz camera file)")
    p.add_argument(
        "--view-yaw", type=float, default=0.0, help="yaw in degrees from the photo's viewpoint (0 = the photo's)"
    )
    p.add_argument("--view-pitch", type=float, default=0.0, help="pitch in degrees from the photo's viewpoint (+ up)")
    p.add_argument("--sweep", type=float, default=90.0, help="spin: degrees turned over the clip")
    p.add_argument(
        "--distance", type=float, default=0.32, help="path's camera distance from the head (m); the photo's is 0.32"
    )
    p.add_argument("--frames", type=int, help="frames to generate (default: the driving length)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--scheduler", choices=["unipc", "euler"], default="unipc")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="expression guidance vs the neutral code (needs a model trained with expression dropout)",
    )
    p.add_argument(
        "--landmarks", help="C3 models: ROOT::SEQUENCE_ID or .npz with landmarks [T, K, 2] (default: from --driving)"
    )
    p.add_argument("--window", type=int, default=81, help="frames per model call (1+4k); longer clips overlap")
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--guide-avatar", default="demo-000", help="head mesh for the normal maps (avatar id or file)")
    p.add_argument(
        "--normal-mesh",
        choices=["neutral", "tracked"],
        default="neutral",
        help="normal maps of the neutral template posed by the head pose (paper, datagen default) or with expression",
    )
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
    from PIL import Image, UnidentifiedImageError

    from ..inference.camera_paths import CameraPath, load_camera_file, make_camera_path, reference_c2w
    from ..inference.driving import DrivingSignal, load_driving, load_landmarks
    from ..inference.pipeline import FactorPortraitPipeline
    from ..video_io import write_mp4

    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames {args.frames}: must be at least 1 (1 + 4k, e.g. 13, 25, 49, 81)")
    if not args.image.exists():
        raise FileNotFoundError(f"reference image '{args.image}' does not exist")
    try:
        with Image.open(args.image) as opened:
            image = np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"--image '{args.image}' is not an image PIL can read (PNG, JPEG, ...): {err}") from None
    driving = load_driving(args.driving, args.expression_encoder, args.guide_avatar)
    if args.landmarks:
        marks = load_landmarks(args.landmarks)
        driving = DrivingSignal(
            driving.codes,
            driving.head_poses,
            driving.source,
            driving.codes_in_avatar_space,
            marks.landmarks,
            marks.landmark_visible,
            marks.landmark_layout,
            marks.landmark_size,
        )
    frames = args.frames or len(driving)
    if args.freeze_driving:
        driving = driving.frozen(frames)
    if args.camera in ("static", "spin", "spiral"):
        c2w, params = make_camera_path(
            args.camera, frames, args.view_yaw, args.distance, args.sweep, view_pitch_deg=args.view_pitch
        )
        camera = CameraPath(c2w, reference_c2w(), params=params)
    else:
        camera = load_camera_file(args.camera, frames)
    pipeline = FactorPortraitPipeline.from_pretrained(
        args.model,
        vae=args.vae,
        scheduler=args.scheduler,
        shift=args.shift,
        guide_avatar=args.guide_avatar,
        normal_mesh=args.normal_mesh,
    )
    result = pipeline(
        image,
        driving,
        camera.c2w,
        camera.K,
        reference_c2w=camera.reference_c2w,
        reference_K=camera.reference_K,
        landmarks=driving.landmarks_at(args.height, args.width),
        landmark_visible=driving.landmark_visible,
        landmark_layout=driving.landmark_layout,
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
        "camera": camera.params,
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
        "normal_mesh": args.normal_mesh,
        "fps": args.fps,
        "control_mode": _control_mode(args),
        "K": result.K.tolist(),
        "c2w": result.c2w.tolist(),
        "reference_c2w": result.reference_c2w.tolist(),
        "reference_K": result.reference_K.tolist(),
        "camera_convention": "c2w absolute (avatar frame); rays use inverse(reference_c2w) @ c2w",
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
        return "static-frontal" if args.view_yaw == 0 and args.view_pitch == 0 else "static-novel-view"
    return "moving-camera-static-face" if args.freeze_driving else "all-dynamic"


if __name__ == "__main__":
    sys.exit(main())
