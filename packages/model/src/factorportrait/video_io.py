"""Minimal mp4 writing for validation and inference videos (PyAV, H.264, atomic rename)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 25.0, crf: int = 18) -> Path:
    """frames uint8 [T, H, W, 3] (even H, W) -> H.264 mp4 at `path`, written under a temporary name first."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_mp4: H.264 (yuv420p) needs even sizes, got {frames.shape[2]}x{frames.shape[1]}")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=int(round(fps)), options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
