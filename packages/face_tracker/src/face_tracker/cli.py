"""`face-track`: track a face video onto the avatar head rig and write a track file.

    face-track VIDEO --out track.npz [--avatar demo-000] [--fov-deg 53.1 | --K fx,fy,cx,cy]

The track file is an .npz that `model-infer --driving track.npz` reads: expression [T, 128] (the avatar's code
space), head_pose [T, 6], iBUG-68 landmarks of the fitted mesh with width/height, plus found [T], confidence [T],
rms_px [T], rig_weights [T, E], K, viewmat and fps. Frames without a face are filled from their neighbours in
expression / head_pose / landmarks (found = False marks them). See docs/real_captures.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _intrinsics(text: str):
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--K wants fx,fy,cx,cy (pixels), got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="face-track", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("video", type=Path, help="input video (any format PyAV/FFmpeg reads)")
    p.add_argument("--out", type=Path, required=True, help="track file to write (.npz)")
    p.add_argument("--avatar", default="demo-000", help="head rig to fit (avatar id or .avatar.safetensors file)")
    p.add_argument("--fov-deg", type=float, help="horizontal field of view of the camera (default 53.1, a phone)")
    p.add_argument("--K", type=_intrinsics, help="camera intrinsics fx,fy,cx,cy in pixels (instead of --fov-deg)")
    p.add_argument("--max-frames", type=int, help="track only the first N frames")
    p.add_argument("--segment-frames", type=int, default=1000, help="frames per rig solve (bounds memory)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from avatar_render import load_avatar

    from .track import NoFaceError, VideoError, save_track, track_video

    K = None
    if args.K is not None:
        fx, fy, cx, cy = args.K
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    try:
        avatar = load_avatar(args.avatar)
        tick = time.perf_counter()
        track = track_video(
            args.video,
            avatar,
            K=K,
            fov_deg=args.fov_deg,
            max_frames=args.max_frames,
            segment_frames=args.segment_frames,
        )
        seconds = time.perf_counter() - tick
        save_track(args.out, track)
    except (VideoError, NoFaceError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"face-track: error: {e}", file=sys.stderr)
        return 2
    found = int(track.found.sum())
    segments = track.segments()
    print(
        f"face-track: {args.video}: {len(track)} frames ({track.width}x{track.height}, {track.fps:g} fps), "
        f"face in {found} ({len(segments)} segment{'s' if len(segments) != 1 else ''}), "
        f"median fit rms {float(track.fit.rms_px.nanmedian()):.2f} px, {len(track) / seconds:.1f} frames/s "
        f"-> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
