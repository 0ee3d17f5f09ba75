"""Render one planned sequence to an RGB video and a normal-map video, and describe it as a manifest row.

Outputs are written under temporary names and renamed when complete (datagen.video); the manifest part is
written by the caller only after both videos exist, so a sequence reaches the manifest only when whole.
With `video.overlap` (the default) each video is encoded on its own thread (ThreadedVideoWriter) while this loop
renders the next frames; the files are byte-identical to encoding inline.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import RenderConfig
from .manifest import ManifestRow
from .plan import SequencePlan
from .video import ThreadedVideoWriter, VideoWriter

#: Environment variable for fault-injection tests: "SEQUENCE_ID@FRAME" makes the process exit abruptly
#: (as if killed) while rendering that frame, "SEQUENCE_ID@upload" between the two uploads to object storage;
#: once per output folder (a marker under the folder, or under the local staging folder for object storage).
FAULT_ENV = "DATAGEN_INJECT_CRASH"
POSE_CHUNK = 16  # frames posed at once: bounds memory at 1024 px with tens of thousands of Gaussians


@dataclass
class SequenceStats:
    frames: int
    render_s: float  # splatting
    normals_s: float  # mesh normal maps
    other_s: float  # the rest of the task's wall time: planning, posing, landmarks, waiting for encoders, I/O
    encode_s: float = 0.0  # colour conversion + x264, summed over both videos (on encoder threads when overlapped)
    upload_s: float = 0.0  # copying the videos and the part to object storage
    wall_s: float = 0.0  # the whole task


def video_paths(plan: SequencePlan) -> tuple[str, str]:
    """Relative paths of the RGB and normal videos of a plan: videos/<sequence id>_{rgb,normal}.mp4."""
    base = f"videos/{plan.sequence_id}"
    return f"{base}_rgb.mp4", f"{base}_normal.mp4"


def remove_stale_temporaries(root: Path, plan: SequencePlan) -> None:
    """Delete temporary files a killed attempt at this sequence left behind."""
    rgb, _ = video_paths(plan)
    folder = (root / rgb).parent
    if folder.exists():
        stem = plan.sequence_id.rsplit("/", 1)[-1] + "_"
        for path in folder.iterdir():
            if path.name.startswith("." + stem) and ".tmp" in path.name:
                path.unlink(missing_ok=True)


def _maybe_crash(root: Path, plan: SequencePlan, frame: int | str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec != f"{plan.sequence_id}@{frame}":
        return
    marker = root / ".fault-injected" / plan.sequence_id.replace("/", "__")
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    os._exit(17)  # abrupt, like a killed worker: no cleanup, no exception handlers


def render_sequence(plan: SequencePlan, avatar, config: RenderConfig, root: Path) -> tuple[ManifestRow, SequenceStats]:
    """Render `plan` of `avatar` into `root` and return its manifest row (not yet written) and timings."""
    from avatar_render import Camera, render, render_normals
    from avatar_render.normals import encode_normals

    t_start = time.perf_counter()
    render_s = normals_s = 0.0
    root = Path(root)
    rgb_rel, normal_rel = video_paths(plan)
    (root / rgb_rel).parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root, plan)

    viewmats = plan.viewmats().astype(np.float32)
    cameras = Camera(
        K=torch.from_numpy(np.repeat(plan.K[None].astype(np.float32), plan.num_frames, 0)),
        viewmat=torch.from_numpy(viewmats),
        width=plan.width,
        height=plan.height,
    )
    background = torch.tensor(config.background, dtype=torch.float32)
    backend = config.backend
    device = "cuda" if backend in ("gsplat", "auto") and torch.cuda.is_available() else "cpu"
    avatar = avatar.to(device=device)
    cameras = cameras.to(device=device)
    background = background.to(device)
    codes = torch.from_numpy(plan.codes).to(device)
    poses = torch.from_numpy(plan.poses).to(device)
    video = config.video
    layout = avatar.landmark_layout  # None for topologies without a layout: the row then has no landmarks
    landmarks = np.zeros((plan.num_frames, layout.num_points if layout else 0, 2), np.float32)
    visible = np.zeros(landmarks.shape[:2], bool)
    writers = [
        VideoWriter(
            root / rel,
            plan.width,
            plan.height,
            plan.fps,
            crf=crf,
            preset=video.preset,
            pix_fmt=video.pix_fmt,
            threads=video.threads,
        )
        for rel, crf in ((rgb_rel, video.crf), (normal_rel, video.normal_crf))
    ]
    if video.overlap:
        writers = [ThreadedVideoWriter(w, depth=video.queue_frames) for w in writers]
    rgb_writer, normal_writer = writers
    encode_s = 0.0
    try:
        with torch.no_grad():
            for chunk_start in range(0, plan.num_frames, POSE_CHUNK):
                chunk = slice(chunk_start, min(plan.num_frames, chunk_start + POSE_CHUNK))
                posed = avatar.pose(codes[chunk], poses[chunk])
                # the paper's normal maps come from body-mesh tracking: the head pose without the expression
                normal_vertices = (
                    posed.vertices
                    if config.normal_mesh == "tracked"
                    else avatar.pose_mesh(codes[chunk], poses[chunk], with_expression=False)
                )
                if layout is not None:
                    # camera t sees frame t; pixels in the stored frames' grid (CONVENTIONS 1)
                    uv, vis = posed.landmarks(
                        cameras.K[chunk], cameras.viewmat[chunk], plan.width, plan.height, pair_frames=True
                    )
                    landmarks[chunk], visible[chunk] = uv.cpu().numpy(), vis.cpu().numpy()
                for offset in range(len(posed)):
                    t = chunk_start + offset
                    _maybe_crash(root, plan, t)
                    tick = time.perf_counter()
                    out = render(posed.frame(offset), cameras[t], backend=backend, background=background)
                    rgb = (out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                    tock = time.perf_counter()
                    # same device as the splats (the avatar and cameras were moved there above)
                    normals, mask = render_normals(normal_vertices[offset], posed.faces, cameras[t])
                    encoded = encode_normals(normals, mask)[0].cpu().numpy()
                    tack = time.perf_counter()
                    render_s += tock - tick
                    normals_s += tack - tock
                    rgb_writer.write(rgb)
                    normal_writer.write(encoded)
                    if not video.overlap:
                        encode_s += time.perf_counter() - tack
        tick = time.perf_counter()
        for writer in writers:
            writer.close()
        if video.overlap:
            encode_s = sum(w.encode_s for w in writers)
        else:
            encode_s += time.perf_counter() - tick
    except BaseException:
        for writer in writers:
            writer.abort()
        raise

    frame_index = np.arange(plan.num_frames, dtype=np.int32)
    row = ManifestRow(
        sequence_id=plan.sequence_id,
        dataset=plan.dataset,
        source="synthetic",
        identity=plan.avatar_id,
        camera_id=plan.camera_id,
        mode=plan.manifest_mode,
        trajectory=plan.trajectory.kind,
        seed=plan.seed,
        sequence_index=plan.index,
        num_frames=plan.num_frames,
        width=plan.width,
        height=plan.height,
        fps=float(plan.fps),
        rgb_path=rgb_rel,
        normal_path=normal_rel,
        frame_index=frame_index,
        timestamp=frame_index / float(plan.fps),
        K=np.repeat(plan.K[None].astype(np.float32), plan.num_frames, 0),
        viewmat=viewmats,
        expression_dim=plan.codes.shape[1],
        expression=plan.codes,
        head_pose=plan.poses,
        plan=json.dumps(
            {
                **plan.describe(),
                "render": {
                    "resolution": config.resolution,
                    "fov_deg": config.fov_deg,
                    "background": list(config.background),
                    "backend": backend,
                    "normal_mesh": config.normal_mesh,
                },
            }
        ),
        created_by=f"factorportrait-datagen {__version__}",
        world_frame=plan.avatar_id,  # every sequence of an avatar is rendered in its canonical frame
        num_landmarks=layout.num_points if layout else 0,
        landmark_layout=layout.name if layout else None,
        landmarks=landmarks if layout else None,
        landmark_visible=visible if layout else None,
    )
    total = time.perf_counter() - t_start
    # overlapped encoding ran beside the loop: only what the loop itself did is subtracted from the wall time
    inline = render_s + normals_s + (0.0 if video.overlap else encode_s)
    stats = SequenceStats(
        frames=plan.num_frames,
        render_s=render_s,
        normals_s=normals_s,
        other_s=max(0.0, total - inline),
        encode_s=encode_s,
        wall_s=total,
    )
    return row, stats
