"""Derive the MediaPipe-point -> guide-mesh-vertex correspondence for the demo topology.

Procedure (documented in face_tracker/correspondence.py): render kit avatars at the neutral expression from a
frontal camera and at +-15 deg yaw; run the face mesh; rasterise the guide mesh in the same camera; for each
MediaPipe point choose the visible guide-mesh vertex (head weight >= 0.99, a skin vertex) with the smallest mean image
distance to it over all renders; keep the point when that mean is <= --max-px (384 px renders: ~1.5% of
the face width). Prints the Python table to paste into correspondence.py.

    uv run python packages/face_tracker/tools/pick_correspondence.py --avatars 6
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from avatar_render import Camera, load_avatar, render
from avatar_render.mesh_raster import rasterize_mesh
from face_tracker.landmarker import Landmarker

SKIN_VERTICES = 4200  # the demo topology: skin 0-4199, then tongue, left eye, right eye (ASSETS.md)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--avatars", type=int, default=6)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--max-px", type=float, default=4.0, help="keep points whose best vertex is this close")
    args = parser.parse_args()
    costs: list[torch.Tensor] = []
    lm = Landmarker(static=True)
    head_w = None
    for a in range(args.avatars):
        av = load_avatar(f"demo-{a:03d}")
        head_w = av.head_weights
        posed = av.canonical()
        for yaw in (-15.0, 0.0, 15.0):
            r = 0.32
            eye = torch.tensor([[r * math.sin(math.radians(yaw)), -0.03, r * math.cos(math.radians(yaw))]])
            cam = Camera.look_at(eye, torch.tensor([0.0, -0.03, 0.0]), args.size, args.size)
            with torch.no_grad():
                out = render(posed.frame(0), cam, backend="cpu")
            img = (out.rgb[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
            det = lm.process(img[None])
            if not det.found[0]:
                print(f"demo-{a:03d} yaw {yaw}: no face")
                continue
            uv_all, z = cam.project(posed.vertices[0])
            frag = rasterize_mesh(posed.vertices[0], posed.faces, cam.viewmat, cam.K, args.size, args.size)
            col = uv_all[0, :, 0].long().clamp(0, args.size - 1)
            row = uv_all[0, :, 1].long().clamp(0, args.size - 1)
            seen = frag.mask[0, row, col] & (z[0] <= frag.depth[0, row, col] + 3e-3)
            lms = torch.from_numpy(det.landmarks[0][:468])
            dist = torch.cdist(lms, uv_all[0])  # [468, V]
            dist[:, ~seen] = 1e3  # hidden vertices cannot be what the landmarker saw
            costs.append(dist)
    head_w = head_w.float()
    cost = torch.stack(costs).mean(0)  # [468, V] mean pixel distance over renders
    cost[:, head_w < 0.99] = torch.inf
    cost[:, SKIN_VERTICES:] = torch.inf  # tongue and eyeballs: the landmarker tracks lids and lips
    best, vid = cost.min(1)
    table = [(i, int(vid[i])) for i in range(468) if float(best[i]) <= args.max_px]
    print(f"# {len(table)} of 468 points kept")
    print("MP_TO_DEMO_VERTEX: tuple[tuple[int, int], ...] = (")
    for k in range(0, len(table), 8):
        print("    " + " ".join(f"({i}, {v})," for i, v in table[k : k + 8]))
    print(")")


if __name__ == "__main__":
    main()
