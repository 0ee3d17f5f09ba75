"""Per-clip view of the camera swap test: how far the donor's camera path is from the true one, and what the swap
did to each clip's PSNR (a diagnostic next to the pooled swap table; it changes no verdict).

The pooled test compares the seed means of 4 clips; when it fails, this tells whether the model ignored the rays
(every clip unchanged, even those whose donor looks from the other side of the head) or whether the swaps that
should matter did matter and the others diluted them (donor paths close to the true ones).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .data import camera_centre, load_sources, split_roots, view_angle_deg
from .evaluate import donor_indices
from .report import _stats

SPLIT = "heldout_ids"


def yaw_deg(centre: np.ndarray) -> float:
    """Azimuth of a camera position around the head's vertical axis (0 = in front, +90 = the avatar's left)."""
    return math.degrees(math.atan2(float(centre[0]), float(centre[2])))


def _clip_ids(mode_data: dict) -> list[str]:
    """Sequence ids in evaluation order (the per-seed `clips` dicts keep the order the clips were built in)."""
    return list(next(iter(mode_data["true"].values()))["clips"])


def _per_clip(mode_data: dict, key: str, sequence_id: str, metric: str) -> list[float]:
    return [float(seed["clips"][sequence_id][metric]) for seed in mode_data[key].values()]


def camera_swap_rows(run_dir: Path, evals: dict[str, dict], frames: int, metric: str = "psnr") -> list[dict]:
    """One dict per (variant, mode, clip) of every camera swap run: the true and the donor camera's yaw at the
    first and last evaluated frame, the mean angle between the two cameras over the clip (seen from the head),
    and the metric's seed mean / std with the true and the swapped rays."""
    sources = {s.sequence_id: s for s in load_sources(split_roots(Path(run_dir), SPLIT))}
    rows = []
    for variant, result in evals.items():
        modes = result.get("splits", {}).get(SPLIT, {})
        all_dynamic = None
        if "all-dynamic" in modes:
            all_dynamic = [{"mode": "all-dynamic", "sequence_id": s} for s in _clip_ids(modes["all-dynamic"])]
        for mode, data in modes.items():
            if "camera" not in data:
                continue
            clips = [{"mode": mode, "sequence_id": s} for s in _clip_ids(data)]
            donors, donor_clips = donor_indices(clips, "camera", all_dynamic)
            for clip, d in zip(clips, donors, strict=True):
                own, donor = sources.get(clip["sequence_id"]), sources.get(donor_clips[d]["sequence_id"])
                if own is None or donor is None:
                    continue
                n = min(frames, own.num_frames, donor.num_frames)
                own_c = [camera_centre(own, t) for t in range(n)]
                donor_c = [camera_centre(donor, t) for t in range(n)]
                rows.append(
                    {
                        "variant": variant,
                        "mode": mode,
                        "clip": clip["sequence_id"],
                        "donor": donor_clips[d]["sequence_id"],
                        "yaw": (yaw_deg(own_c[0]), yaw_deg(own_c[-1])),
                        "donor_yaw": (yaw_deg(donor_c[0]), yaw_deg(donor_c[-1])),
                        "gap_deg": float(np.mean([view_angle_deg(a, b) for a, b in zip(own_c, donor_c, strict=True)])),
                        "true": _stats(_per_clip(data, "true", clip["sequence_id"], metric)),
                        "swapped": _stats(_per_clip(data, "camera", clip["sequence_id"], metric)),
                    }
                )
    return rows


def gap_correlation(rows: list[dict]) -> float:
    """Pearson correlation between the camera gap and the PSNR drop (true - swapped) over the rows; NaN if < 3."""
    if len(rows) < 3:
        return float("nan")
    gap = np.array([r["gap_deg"] for r in rows])
    drop = np.array([r["true"][0] - r["swapped"][0] for r in rows])
    if gap.std() == 0 or drop.std() == 0:
        return float("nan")
    return float(np.corrcoef(gap, drop)[0, 1])


__all__ = ["camera_swap_rows", "gap_correlation", "yaw_deg"]
