"""`datagen ingest` speed on CPU, stage by stage, on a 480p phone-like video of a real photograph (scikit-image's
astronaut, moved by affine warps, on an 854 x 480 canvas).

    uv run python benchmarks/ingest.py [--frames 120] [--resolution 512] [--threads 1]

Stages (frames/s of each alone, then end to end; the landmarker alone is the baseline the ratios refer to):
  decode      PyAV decode of the 480p video
  landmarker  decode + MediaPipe face mesh (tracking mode) + face detector
  fit         the rig fit of those landmarks (rigid + blendshapes, one solve) + fitted iBUG-68 landmarks
  ingest      the whole `ingest_video`: track, crop, normal maps of the fitted mesh, two H.264 encodes, manifest
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# benchmarks/datagen.py would shadow the datagen package when this file is run as a script
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def make_video(path: Path, frames: int) -> Path:
    import av
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut(), (480, 480), interpolation=cv2.INTER_AREA)
    canvas = cv2.copyMakeBorder(face, 0, 0, 187, 187, cv2.BORDER_REFLECT)  # 854 x 480
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 854, 480, "yuv420p"
        for t in range(frames):
            m = cv2.getRotationMatrix2D((427.0, 116.0), 10 * math.sin(t / 15), 1.0 + 0.05 * math.sin(t / 23))
            m[0, 2] += 25 * math.sin(t / 19)
            frame = cv2.warpAffine(canvas, m, (854, 480), borderMode=cv2.BORDER_REFLECT)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from avatar_render import load_avatar
    from datagen.ingest import IngestConfig, VideoJob, ingest_video
    from face_tracker.track import detect_stream, fit_track, video_frames

    avatar = load_avatar("demo-000")
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "phone.mp4", args.frames)
        # warm-up: first-call set-up of MediaPipe and torch.func
        frames, info = video_frames(video, 8)
        fit_track(avatar, detect_stream(frames), info["width"], info["height"], info["fps"])

        frames, info = video_frames(video)
        decoded, t_dec, c_dec = timed(lambda: sum(1 for _ in frames))
        frames, _ = video_frames(video)
        det, t_lm, c_lm = timed(lambda: detect_stream(frames))
        track, t_fit, c_fit = timed(lambda: fit_track(avatar, det, info["width"], info["height"], info["fps"]))
        config = dataclasses.asdict(IngestConfig(resolution=args.resolution))
        job = VideoJob(str(video), "bench", "phone")
        result, t_all, c_all = timed(lambda: ingest_video(job, config, str(Path(tmp) / "out")))

    n = args.frames
    print(
        f"{n} frames of {info['width']}x{info['height']} at {info['fps']:g} fps; face found in "
        f"{int(det.found.sum())}; median fit rms {float(np.nanmedian(track.fit.rms_px.numpy())):.2f} px; "
        f"output {args.resolution} px; torch threads {args.threads}"
    )
    print("| stage | wall s | CPU s | frames/s | vs landmarker |")
    print("|---|---:|---:|---:|---:|")
    for name, wall, cpu in (
        ("decode", t_dec, c_dec),
        ("landmarker (decode + MediaPipe)", t_lm, c_lm),
        ("rig fit", t_fit, c_fit),
        ("ingest end to end", t_all, c_all),
    ):
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {n / wall:.1f} | {t_lm / wall:.2f}x |")
    assert decoded == n and result["frames"] == n


if __name__ == "__main__":
    main()
