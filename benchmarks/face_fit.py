"""Face-tracker fit speed on CPU: ms/frame of `fit_landmarks` (rigid start + joint pose/blendshape fit) on clips
of the demo avatar's own projected correspondence vertices (0.5 px noise), and the MediaPipe landmarker's ms/frame
on 480x480 renders when `--landmarker` is given. The fit's cost does not depend on the image size (it sees ~150
points per frame); the landmarker's does.

    uv run python benchmarks/face_fit.py [--frames 25 100 400] [--threads 1] [--landmarker]

Wall times are the best of 3 repeats (CPU time of the same run printed too: on a shared machine wall time
mostly measures the scheduler).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from avatar_render import load_avatar
from face_tracker.correspondence import correspondence
from face_tracker.fit import fit_landmarks, tracking_camera
from face_tracker.landmarker import NUM_MP_POINTS


def clip(avatar, frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Landmarks [T, 478, 2] of a head-turning clip of the capture track, and the camera K, viewmat."""
    codes = avatar.capture_codes[torch.arange(frames) % avatar.num_capture_frames]
    s = torch.linspace(0, 1, frames)
    poses = torch.zeros(frames, 6)
    poses[:, 1] = torch.deg2rad(25 * torch.sin(2 * math.pi * s))
    poses[:, 0] = torch.deg2rad(15 * torch.sin(4 * math.pi * s))
    K, V = tracking_camera(size, size)
    mp, vid = correspondence(avatar.neutral_vertices.shape[0])
    cam = avatar.pose_mesh(codes, poses)[:, vid] @ V[:3, :3].T + V[:3, 3]
    uv = cam[..., :2] / cam[..., 2:] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    lms = torch.full((frames, NUM_MP_POINTS, 2), torch.nan)
    lms[:, mp] = uv + 0.5 * torch.randn(uv.shape, generator=torch.Generator().manual_seed(0))
    return lms, K, V


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--landmarker", action="store_true", help="also time MediaPipe on 480x480 renders")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    avatar = load_avatar("demo-003")
    fit_landmarks(avatar, *clip(avatar, 4, 480))  # warm-up (first-call set-up of torch.func)
    print(f"fit_landmarks, {args.threads} thread(s)")
    for frames in args.frames:
        lms, K, V = clip(avatar, frames, 480)
        best_wall, best_cpu = math.inf, math.inf
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            fit_landmarks(avatar, lms, K, V)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        print(
            f"  T={frames:4d}: {1000 * best_wall / frames:6.1f} ms/frame wall ({frames / best_wall:6.1f} frames/s), "
            f"{1000 * best_cpu / frames:6.1f} ms/frame CPU"
        )
    if args.landmarker:
        import numpy as np

        from avatar_render import Camera, render
        from face_tracker.landmarker import Landmarker

        K, V = tracking_camera(480, 480)
        camera = Camera(K=K[None], viewmat=V[None], width=480, height=480)
        posed = avatar.pose(avatar.capture_codes[:8], torch.zeros(8, 6))
        with torch.no_grad():
            frames = np.stack(
                [
                    (render(posed.frame(t), camera, backend="cpu").rgb[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
                    for t in range(8)
                ]
            )
        with Landmarker() as landmarker:
            landmarker.process(frames[:1])  # warm-up
            t0 = time.perf_counter()
            landmarker.process(frames)
            wall = time.perf_counter() - t0
        print(f"MediaPipe landmarker (tracking mode, 480x480): {1000 * wall / len(frames):.1f} ms/frame")


if __name__ == "__main__":
    main()
