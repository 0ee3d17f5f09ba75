"""Sequence plans: everything random about one sequence, as a pure function of
(global seed, avatar id, mode, sequence index) — the same plan on any machine, in any order.

A studiocapture sequence is one take seen by every camera of the fixed rig: its random choices (the capture
segment) depend on the take's key only, and each camera gives one plan (one video, one manifest row)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .config import RenderConfig
from .trajectories import (
    Trajectory,
    intrinsics,
    phone_trajectory,
    spin_trajectory,
    spiral_trajectory,
    studio_trajectory,
)

#: Manifest `dataset` of each render mode.
DATASETS = {
    "viewsweep": "ViewSweep",
    "dynamicsweep": "DynamicSweep",
    "phonecapture": "PhoneCapture",
    "studiocapture": "StudioCapture",
}


def derive_seed(global_seed: int, avatar_id: str, mode: str, index: int) -> int:
    """A 63-bit seed from the plan's key (a cryptographic hash: stable across machines and Python versions)."""
    key = f"factorportrait-datagen|{global_seed}|{avatar_id}|{mode}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def sequence_id(avatar_id: str, mode: str, index: int, camera: int | None = None) -> str:
    """`avatar/mode/0007`, or `avatar/studiocapture/0007/cam02` for camera 2 of a studio take."""
    base = f"{avatar_id}/{mode}/{index:04d}"
    return base if camera is None else f"{base}/cam{camera:02d}"


@dataclass
class SequencePlan:
    """One sequence: cameras, expression codes and head poses for its frames."""

    avatar_id: str
    mode: str
    index: int
    seed: int
    trajectory: Trajectory
    K: np.ndarray  # [3, 3]
    width: int
    height: int
    fps: float
    codes: np.ndarray  # [T, D] float32
    poses: np.ndarray  # [T, 6] float32 axis-angle (rad), translation (m)
    capture_frames: np.ndarray  # [T] the capture-track frame behind each frame
    extra: dict = field(default_factory=dict)
    camera: int | None = None  # studio rig camera; None for single-camera modes
    camera_id: str = "virtual"

    @property
    def sequence_id(self) -> str:
        return sequence_id(self.avatar_id, self.mode, self.index, self.camera)

    @property
    def dataset(self) -> str:
        return DATASETS[self.mode]

    @property
    def manifest_mode(self) -> str:
        """The manifest's `mode`: capture stand-ins are recorded like the captures they stand in for."""
        return "capture" if self.mode in ("phonecapture", "studiocapture") else self.mode

    @property
    def num_frames(self) -> int:
        return self.codes.shape[0]

    def viewmats(self) -> np.ndarray:  # [T, 4, 4]
        return self.trajectory.viewmats()

    def describe(self) -> dict:
        """JSON-serialisable parameters of the plan (stored in the manifest's `plan` column)."""
        return {
            "avatar_id": self.avatar_id,
            "mode": self.mode,
            "index": self.index,
            "seed": self.seed,
            "trajectory": self.trajectory.kind,
            "trajectory_params": self.trajectory.params,
            "capture_frames": [int(self.capture_frames[0]), int(self.capture_frames[-1])],
            **self.extra,
        }


def plan_sequence(
    config: RenderConfig, avatar, index: int, avatar_id: str | None = None, camera: int | None = None
) -> SequencePlan:
    """Plan sequence `index` of `avatar` (an avatar_render.Avatar) under `config`.

    `avatar_id` (default: the avatar's name) is the identity the plan is keyed and recorded under.
    `camera`: which camera of the studio rig (studiocapture only, required there).
    """
    avatar_id = avatar_id or avatar.name
    if (camera is None) != (config.mode != "studiocapture"):
        raise ValueError(
            f"plan_sequence: camera={camera!r} for mode {config.mode!r} (a camera index iff studiocapture)"
        )
    seed = derive_seed(config.seed, avatar_id, config.mode, index)
    rng = np.random.default_rng(seed)
    kind = config.trajectory_kind(index)
    camera_id = "virtual"
    centre = config.head_centre_m
    if config.mode == "phonecapture":
        trajectory = phone_trajectory(rng, config.frames, config.capture, head_centre=centre)
        camera_id = config.capture.phone_camera_id
    elif config.mode == "studiocapture":
        trajectory = studio_trajectory(camera, config.frames, config.capture, head_centre=centre)
        camera_id = f"cam{camera:02d}"
    elif kind == "spin":
        trajectory = spin_trajectory(rng, config.frames, config.spin, head_centre=centre)
    else:
        trajectory = spiral_trajectory(rng, config.frames, config.spiral, head_centre=centre)
    track_codes = avatar.capture_codes.detach().cpu().numpy()
    track_poses = avatar.capture_poses.detach().cpu().numpy()
    available = track_codes.shape[0]
    if config.mode == "viewsweep":
        # one expression and head pose from the capture, frozen for the whole sequence
        frame = int(rng.integers(available))
        capture_frames = np.full(config.frames, frame)
        extra = {"frozen_capture_frame": frame}
    else:
        if config.frames > available:
            raise ValueError(
                f"avatar '{avatar_id}': a {config.frames}-frame {DATASETS[config.mode]} needs a capture track of at "
                f"least that many frames, it has {available}"
            )
        start = int(rng.integers(available - config.frames + 1))
        capture_frames = np.arange(start, start + config.frames)
        extra = {"capture_segment_start": start}
    return SequencePlan(
        avatar_id=avatar_id,
        mode=config.mode,
        index=index,
        seed=seed,
        trajectory=trajectory,
        K=intrinsics(config.resolution, config.resolution, config.fov_deg),
        width=config.resolution,
        height=config.resolution,
        fps=config.fps,
        codes=track_codes[capture_frames].astype(np.float32),
        poses=track_poses[capture_frames].astype(np.float32),
        capture_frames=capture_frames,
        extra={**extra, "take": index, "camera": camera} if camera is not None else extra,
        camera=camera,
        camera_id=camera_id,
    )
