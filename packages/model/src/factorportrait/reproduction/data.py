"""Data plan of the reproduction: which datagen renders, with which identities, seeds and sizes (issue 15, step 1).

Splits (every root is one datagen render, so a training root never contains a held-out sequence):
  * train:        `train_ids`, plans drawn with `seed`                 -> data/train/<Dataset>
  * heldout_ids:  `heldout_ids` (never trained on), `seed`              -> data/heldout_ids/<Dataset>
  * heldout_seqs: `heldout_sequence_ids` (train identities), plans drawn with `heldout_sequence_seed`, so the
                  trajectories, expressions and capture segments are new -> data/heldout_seqs/<Dataset>
  * instruments:  `instrument_ids` generated demo identities (`instrument_identities`), plans drawn with
                  `seed + 2`, for training the instruments only             -> data/instruments/<Dataset>
This module never imports datagen: the orchestrator (pipelines/reproduce.py) runs `datagen render` for each job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DATAGEN_MODES, ReproConfig

SPLITS = ("train", "heldout_ids", "heldout_seqs", "instruments")


@dataclass
class RenderJob:
    split: str
    dataset: str  # manifest dataset name (PhoneCapture, StudioCapture, ViewSweep, DynamicSweep)
    ids: list[str]
    sequences: int
    frames: int
    resolution: int
    seed: int
    workers: int
    spin_sweep_deg: float
    normal_mesh: str = "neutral"  # datagen --normal-mesh
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return DATAGEN_MODES[self.dataset]

    @property
    def root(self) -> str:
        """Dataset root relative to the run folder."""
        return f"data/{self.split}/{self.dataset}"

    @property
    def name(self) -> str:
        return f"data-{self.split}-{self.dataset}"


def render_jobs(config: ReproConfig, available: set[str]) -> list[RenderJob]:
    """Every render of the plan whose dataset datagen offers (`available`: dataset names)."""
    jobs = []
    for split, ids, seed, plan in (
        ("train", config.train_ids, config.seed, config.sequences),
        ("heldout_ids", config.heldout_ids, config.seed, config.sequences),
        ("heldout_seqs", config.heldout_sequence_ids, config.heldout_sequence_seed, config.sequences),
        ("instruments", instrument_identities(config), config.seed + 2, config.instrument_sequences),
    ):
        for dataset, count in plan.items():
            if dataset not in available or count < 1 or not ids:
                continue
            jobs.append(
                RenderJob(
                    split=split,
                    dataset=dataset,
                    ids=list(ids),
                    sequences=count if split in ("train", "instruments") else min(count, config.heldout_sequences),
                    frames=config.frames_per_sequence,
                    resolution=config.resolution,
                    seed=seed,
                    workers=config.render_workers,
                    spin_sweep_deg=config.spin_sweep_deg,
                    normal_mesh=config.normal_mesh,
                    extra={"studio_yaw_deg": config.studio_yaw_deg, "studio_pitch_deg": config.studio_pitch_deg}
                    if dataset == "StudioCapture"
                    else {},
                )
            )
    return jobs


def instrument_identities(config: ReproConfig) -> list[str]:
    """The first `instrument_ids` generated demo identities whose face shape mixes only the meshes of the kit
    identities among `train_ids` (so no held-out identity's shape leaks into the instruments)."""
    if config.instrument_ids <= 0:
        return []
    from avatar_render.demo import MAX_DEMO_AVATARS, NUM_DEMO_AVATARS, demo_id, demo_shape_weights

    allowed = np.zeros(NUM_DEMO_AVATARS, bool)
    for name in config.train_ids:
        index = int(name.split("-")[1])
        if index < NUM_DEMO_AVATARS:
            allowed[index] = True
    picked: list[str] = []
    for index in range(NUM_DEMO_AVATARS, MAX_DEMO_AVATARS):
        if len(picked) == config.instrument_ids:
            break
        if demo_shape_weights(index)[~allowed].sum() == 0:
            picked.append(demo_id(index))
    return picked


def split_roots(run_dir: Path, split: str) -> dict[str, Path]:
    """{dataset name: root} of the rendered roots of a split (those with a manifest)."""
    base = Path(run_dir) / "data" / split
    if not base.is_dir():
        return {}
    return {p.name: p for p in sorted(base.iterdir()) if (p / "manifest" / "manifest.parquet").is_file()}


def load_sources(roots: dict[str, Path]) -> list:
    """ClipSource rows of every root."""
    from ..data.manifest import read_manifest_rows

    return [source for root in roots.values() for source in read_manifest_rows(root)]


def decode_all(path: Path) -> np.ndarray:
    """uint8 [T, H, W, 3] of a whole video."""
    import av

    from ..data.clips import _to_rgb

    with av.open(str(path)) as container:
        frames = [_to_rgb(frame) for frame in container.decode(video=0)]
    return np.stack(frames)


def camera_centre(source, frame: int = 0) -> np.ndarray:
    """World position [3] of the camera of `frame` (viewmat is world-to-camera)."""
    viewmat = np.asarray(source.viewmat[frame], np.float64)
    return -viewmat[:3, :3].T @ viewmat[:3, 3]


def view_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two camera positions seen from the origin (the avatar's head)."""
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
