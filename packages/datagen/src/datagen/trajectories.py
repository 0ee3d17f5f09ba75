"""Camera trajectories of the synthetic sequences: spin (an oval round the head) and spiral (a smooth curve through
random seed locations), paper Sec. 3.2, 7.3, 7.4 and CONVENTIONS 4.

Every function is a pure function of its `np.random.Generator`: the same generator state gives the same arrays.

Angles (avatar canonical frame, CONVENTIONS 1: metres, +Y up, the face looks down +Z, +X is the subject's left),
all relative to the head centre c:
  yaw   = atan2(x, z) of (eye - c), degrees: 0 in front of the face, +90 on the subject's left (+X);
  pitch = elevation asin(y / |eye - c|), degrees: positive above the head centre;
  distance = |eye - c| in metres (always to the head centre, never to the jittered look-at point).
So eye = c + distance * (cos(pitch) sin(yaw), sin(pitch), cos(pitch) cos(yaw)).

Look-at jitter: every sequence draws two offsets, each coordinate uniform in [-j, j], and the look-at point drifts
from c + start offset (first frame) to c + end offset (last frame) with a smoothstep easing; a convex combination,
so every frame's offset stays in the box.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar_render.camera import DEFAULT_FOV_DEG, focal_from_fov, look_at_viewmat

__all__ = [
    "CaptureConfig",
    "SpinConfig",
    "SpiralConfig",
    "Trajectory",
    "intrinsics",
    "phone_trajectory",
    "plot_trajectories",
    "spin_trajectory",
    "spiral_trajectory",
    "studio_trajectory",
]

#: |elevation| / |pitch| limit: keeps the viewing direction well away from the world up vector of the look-at.
MAX_ELEVATION_DEG = 85.0
#: Dense samples per output frame before the arc-length resampling (step lengths then agree to well under 1%).
_DENSE_PER_FRAME = 64


# ---------------------------------------------------------------------------------------------- configs
def _range(cls: str, name: str, value: Any, *, strict: bool = False, lo: float = -math.inf, hi: float = math.inf):
    """`value` as a (float, float) range, ordered (strictly if `strict`) and inside [lo, hi]; ValueError names it."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}: field '{name}' = {value!r}: expected two numbers (low, high)") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{cls}: field '{name}' = {value!r}: must be finite")
    if a > b or (strict and a == b):
        raise ValueError(f"{cls}: field '{name}' = {value!r}: low must be {'<' if strict else '<='} high")
    if a < lo or b > hi:
        raise ValueError(f"{cls}: field '{name}' = {value!r}: must lie within [{lo:g}, {hi:g}]")
    return a, b


def _check_common(cls: str, distance_m: tuple[float, float], lookat_jitter_m: float) -> None:
    if distance_m[0] <= 0:
        raise ValueError(f"{cls}: field 'distance_m' = {distance_m!r}: distances must be > 0")
    if not (math.isfinite(lookat_jitter_m) and lookat_jitter_m >= 0):
        raise ValueError(f"{cls}: field 'lookat_jitter_m' = {lookat_jitter_m!r}: must be >= 0")
    # the look-at box (half-diagonal sqrt(3) j) must stay well clear of the closest camera
    if math.sqrt(3.0) * lookat_jitter_m >= 0.5 * distance_m[0]:
        raise ValueError(
            f"{cls}: field 'lookat_jitter_m' = {lookat_jitter_m!r}: sqrt(3) * jitter must be < half the minimum "
            f"distance {distance_m[0]:g} m"
        )


@dataclass(frozen=True)
class SpinConfig:
    """Spin: an oval round the head (paper: distance 25-40 cm, at most 5 deg of elevation randomness)."""

    distance_m: tuple[float, float] = (0.25, 0.40)  # camera-to-head-centre distance range
    elevation_jitter_deg: float = 5.0  # |elevation| bound, every frame
    lookat_jitter_m: float = 0.02  # per-coordinate bound of the look-at offset from the head centre
    sweep_deg: float = 360.0  # yaw travelled from the first to the last frame

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "distance_m", _range(name, "distance_m", self.distance_m))
        _check_common(name, self.distance_m, self.lookat_jitter_m)
        if not (math.isfinite(self.elevation_jitter_deg) and 0 <= self.elevation_jitter_deg <= MAX_ELEVATION_DEG):
            raise ValueError(
                f"{name}: field 'elevation_jitter_deg' = {self.elevation_jitter_deg!r}: must be in "
                f"[0, {MAX_ELEVATION_DEG:g}]"
            )
        if not (math.isfinite(self.sweep_deg) and self.sweep_deg > 0):
            raise ValueError(f"{name}: field 'sweep_deg' = {self.sweep_deg!r}: must be > 0")


@dataclass(frozen=True)
class SpiralConfig:
    """Spiral: a smooth curve through `num_seeds` random seed locations (paper: 4 seeds; yaw range missing)."""

    yaw_range_deg: tuple[float, float] = (-60.0, 60.0)  # CONVENTIONS 4 default
    pitch_range_deg: tuple[float, float] = (-20.0, 20.0)
    distance_m: tuple[float, float] = (0.25, 0.40)
    num_seeds: int = 4
    lookat_jitter_m: float = 0.02
    min_yaw_separation_deg: float = 10.0  # seeds closer in yaw would make the curve turn sharply there
    max_steepness: float = 1.0  # per seed-to-seed segment: (pitch, distance) travel <= this x yaw travel

    def __post_init__(self) -> None:
        name = type(self).__name__
        m = MAX_ELEVATION_DEG
        object.__setattr__(
            self, "yaw_range_deg", _range(name, "yaw_range_deg", self.yaw_range_deg, strict=True, lo=-180.0, hi=180.0)
        )
        object.__setattr__(self, "pitch_range_deg", _range(name, "pitch_range_deg", self.pitch_range_deg, lo=-m, hi=m))
        object.__setattr__(self, "distance_m", _range(name, "distance_m", self.distance_m))
        _check_common(name, self.distance_m, self.lookat_jitter_m)
        if isinstance(self.num_seeds, bool) or not isinstance(self.num_seeds, int) or self.num_seeds < 2:
            raise ValueError(f"{name}: field 'num_seeds' = {self.num_seeds!r}: must be an integer >= 2")
        sep = self.min_yaw_separation_deg
        if not (math.isfinite(sep) and sep > 0):
            raise ValueError(f"{name}: field 'min_yaw_separation_deg' = {sep!r}: must be > 0")
        span = self.yaw_range_deg[1] - self.yaw_range_deg[0]
        if (self.num_seeds - 1) * sep > span:
            raise ValueError(
                f"{name}: field 'min_yaw_separation_deg' = {sep!r}: {self.num_seeds} seeds need "
                f"{(self.num_seeds - 1) * sep:g} deg of yaw, the yaw range spans {span:g} deg"
            )
        if not (math.isfinite(self.max_steepness) and self.max_steepness > 0):
            raise ValueError(f"{name}: field 'max_steepness' = {self.max_steepness!r}: must be > 0")


@dataclass(frozen=True)
class CaptureConfig:
    """Fixed cameras of the capture stand-ins: one frontal phone camera; a studio rig of a few cameras.

    Phone: a camera `distance_m` from the head centre on the face's axis (+Z), looking at it, with a
    per-sequence jitter (uniform, +-`distance_jitter_m` in distance and +-`position_jitter_m` per axis in the
    camera position and, independently, the look-at point), fixed over the sequence.
    Studio: one camera per entry of `studio_yaw_deg` / `studio_pitch_deg` (degrees about the head centre,
    yaw toward the subject's left +X, pitch up), `studio_distance_m` away, looking at the head centre;
    the rig is the same for every take of every identity.
    """

    distance_m: float = 0.32  # the model's default camera distance for a user's photo
    distance_jitter_m: float = 0.02
    position_jitter_m: float = 0.01
    phone_camera_id: str = "phone-standin"
    studio_yaw_deg: tuple[float, ...] = (-45.0, -15.0, 15.0, 45.0)
    studio_pitch_deg: tuple[float, ...] = (5.0, -5.0, -5.0, 5.0)
    studio_distance_m: float = 0.36

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field_name in ("distance_m", "studio_distance_m"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and value > 0.05):
                raise ValueError(f"{name}: field '{field_name}' = {value!r}: must be > 0.05 m")
        for field_name in ("distance_jitter_m", "position_jitter_m"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and 0 <= value < 0.25 * self.distance_m):
                raise ValueError(f"{name}: field '{field_name}' = {value!r}: must be in [0, distance_m / 4)")
        object.__setattr__(self, "studio_yaw_deg", tuple(float(v) for v in self.studio_yaw_deg))
        object.__setattr__(self, "studio_pitch_deg", tuple(float(v) for v in self.studio_pitch_deg))
        if not self.studio_yaw_deg or len(self.studio_yaw_deg) != len(self.studio_pitch_deg):
            raise ValueError(
                f"{name}: fields 'studio_yaw_deg' {list(self.studio_yaw_deg)} and 'studio_pitch_deg' "
                f"{list(self.studio_pitch_deg)} must be non-empty and of equal length (one entry per camera)"
            )
        if any(abs(p) > MAX_ELEVATION_DEG for p in self.studio_pitch_deg):
            raise ValueError(f"{name}: field 'studio_pitch_deg' must lie within +-{MAX_ELEVATION_DEG:g} deg")
        if not self.phone_camera_id.strip():
            raise ValueError(f"{name}: field 'phone_camera_id' must be a non-empty string")

    @property
    def num_studio_cameras(self) -> int:
        return len(self.studio_yaw_deg)


def phone_trajectory(
    rng: np.random.Generator, num_frames: int, cfg: CaptureConfig | None = None, head_centre=(0.0, 0.0, 0.0)
) -> Trajectory:
    """A fixed frontal camera (the phone stand-in), jittered once per sequence."""
    cfg = cfg or CaptureConfig()
    _check_frames(num_frames)
    centre = np.asarray(head_centre, np.float64)
    distance = cfg.distance_m + rng.uniform(-cfg.distance_jitter_m, cfg.distance_jitter_m)
    eye = centre + [0.0, 0.0, distance] + rng.uniform(-cfg.position_jitter_m, cfg.position_jitter_m, 3)
    target = centre + rng.uniform(-cfg.position_jitter_m, cfg.position_jitter_m, 3)
    params = {"distance_m": float(distance), "eye": _floats(eye), "target": _floats(target)}
    return Trajectory(
        "static", np.repeat(eye[None], num_frames, 0), np.repeat(target[None], num_frames, 0), params, centre
    )


def studio_trajectory(
    camera: int, num_frames: int, cfg: CaptureConfig | None = None, head_centre=(0.0, 0.0, 0.0)
) -> Trajectory:
    """Camera `camera` of the fixed studio rig (no randomness: the rig is the same for every take)."""
    cfg = cfg or CaptureConfig()
    _check_frames(num_frames)
    if not 0 <= camera < cfg.num_studio_cameras:
        raise ValueError(f"studio_trajectory: camera {camera} outside the rig's {cfg.num_studio_cameras} cameras")
    centre = np.asarray(head_centre, np.float64)
    yaw, pitch = cfg.studio_yaw_deg[camera], cfg.studio_pitch_deg[camera]
    eye = centre + _spherical(np.array(yaw), np.array(pitch), np.array(cfg.studio_distance_m))
    params = {"camera": camera, "yaw_deg": yaw, "pitch_deg": pitch, "distance_m": cfg.studio_distance_m}
    return Trajectory(
        "static", np.repeat(eye[None], num_frames, 0), np.repeat(centre[None], num_frames, 0), params, centre
    )


# ---------------------------------------------------------------------------------------------- trajectory
@dataclass
class Trajectory:
    """A camera path: centres `eyes` [T, 3] looking at `targets` [T, 3] (float64, avatar canonical frame)."""

    kind: str  # "spin" | "spiral" | "static"
    eyes: np.ndarray  # [T, 3] camera centres
    targets: np.ndarray  # [T, 3] look-at points
    params: dict = field(default_factory=dict)  # JSON-serialisable description of the random choices
    head_centre: np.ndarray = field(default_factory=lambda: np.zeros(3))  # [3]

    def __post_init__(self) -> None:
        self.eyes = np.asarray(self.eyes, dtype=np.float64)
        self.targets = np.asarray(self.targets, dtype=np.float64)
        self.head_centre = np.asarray(self.head_centre, dtype=np.float64).reshape(3)
        if self.eyes.ndim != 2 or self.eyes.shape[1] != 3 or self.targets.shape != self.eyes.shape:
            raise ValueError(
                f"Trajectory: eyes and targets must both be [T, 3], got {self.eyes.shape} and {self.targets.shape}"
            )

    def __len__(self) -> int:
        return self.eyes.shape[0]

    def viewmats(self) -> np.ndarray:  # [T, 4, 4]
        """World-to-camera matrices (OpenCV axes, world up +Y; CONVENTIONS 1)."""
        vm = look_at_viewmat(torch.from_numpy(self.eyes), torch.from_numpy(self.targets), up=(0.0, 1.0, 0.0))
        return vm.numpy()

    def c2w(self) -> np.ndarray:  # [T, 4, 4]
        """Camera-to-world matrices (the rigid inverse of `viewmats`)."""
        vm = self.viewmats()
        out = np.zeros_like(vm)
        out[:, :3, :3] = np.swapaxes(vm[:, :3, :3], -1, -2)
        out[:, :3, 3] = self.eyes
        out[:, 3, 3] = 1.0
        return out

    def yaw_pitch_distance(self) -> np.ndarray:  # [T, 3]
        """(yaw_deg in (-180, 180], pitch_deg, distance_m) of each camera about the head centre (module docstring)."""
        rel = self.eyes - self.head_centre
        dist = np.linalg.norm(rel, axis=-1)
        yaw = np.degrees(np.arctan2(rel[:, 0], rel[:, 2]))
        pitch = np.degrees(np.arcsin(np.clip(rel[:, 1] / dist, -1.0, 1.0)))
        return np.stack([yaw, pitch, dist], axis=-1)


def intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:  # [3, 3]
    """K (float64): horizontal field of view `fov_deg`, square pixels, principal point (W/2, H/2)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"intrinsics: image size must be positive, got {width}x{height}")
    f = focal_from_fov(fov_deg, width)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------- helpers
def _spherical(yaw_deg: np.ndarray, pitch_deg: np.ndarray, dist: np.ndarray) -> np.ndarray:  # [..., 3]
    """Offsets from the head centre for (yaw, pitch, distance) (module docstring)."""
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    return np.stack([dist * np.cos(p) * np.sin(y), dist * np.sin(p), dist * np.cos(p) * np.cos(y)], axis=-1)


def _resample_by_arclength(
    curve: Callable[[np.ndarray], np.ndarray], u0: float, u1: float, num_frames: int
) -> np.ndarray:  # [T] parameters
    """Parameters of `num_frames` points evenly spaced by 3D arc length along curve(u), u in [u0, u1], ends exact.

    The points are then evaluated on the curve itself (not interpolated), so they keep every property of the curve
    (ranges, passing through seeds).
    """
    if num_frames == 1:
        return np.array([u0])
    u = np.linspace(u0, u1, max(4096, _DENSE_PER_FRAME * num_frames))
    pts = curve(u)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=-1))])
    out = np.interp(np.linspace(0.0, s[-1], num_frames), s, u)
    out[0], out[-1] = u0, u1
    return out


def _lookat_targets(rng: np.random.Generator, num_frames: int, jitter: float, centre: np.ndarray):
    """Look-at points [T, 3] drifting between two random offsets in the jitter box, and the two offsets."""
    start = rng.uniform(-jitter, jitter, size=3)
    end = rng.uniform(-jitter, jitter, size=3)
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    w = (t * t * (3.0 - 2.0 * t))[:, None]  # smoothstep: no jerk in the look-at at either end
    return centre + (1.0 - w) * start + w * end, start, end


def _check_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int | np.integer) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")


def _floats(a: Sequence[float] | np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


# ---------------------------------------------------------------------------------------------- spin
def spin_trajectory(
    rng: np.random.Generator,
    num_frames: int,
    cfg: SpinConfig | None = None,
    head_centre: Sequence[float] = (0.0, 0.0, 0.0),
) -> Trajectory:
    """A spin: the camera goes `cfg.sweep_deg` round the head on an oval, at a steady 3D speed.

    Oval: in (yaw, distance) the camera follows the polar curve of an ellipse with semi-axes A, B ~ U(distance_m)
    and a random orientation, so distance(yaw) stays in [min(A, B), max(A, B)] within distance_m (distances are
    to the head centre; the horizontal footprint is that ellipse scaled by cos(elevation) >= cos(5 deg)).
    Yaw goes from a random start angle by direction * sweep_deg (direction = +1: towards +X / the subject's left).
    Elevation = base ~ U(-J/2, J/2) + amplitude ~ U(0, J - |base|) * sin(2 pi cycles u + phase), cycles ~ U(0.5, 2),
    over the progress u in [0, 1], so |elevation| <= J = elevation_jitter_deg always.
    Frames are evenly spaced by 3D arc length; the first frame is at progress 0, the last at progress 1.
    """
    cfg = SpinConfig() if cfg is None else cfg
    _check_frames(num_frames)
    centre = np.asarray(head_centre, dtype=np.float64).reshape(3)
    d_lo, d_hi = cfg.distance_m
    jit = cfg.elevation_jitter_deg

    start_deg = float(rng.uniform(-180.0, 180.0))
    direction = 1 if rng.random() < 0.5 else -1
    semi_a, semi_b = (float(v) for v in rng.uniform(d_lo, d_hi, size=2))
    orient_deg = float(rng.uniform(0.0, 180.0))  # yaw of semi-axis A (an ellipse is symmetric under +180 deg)
    base = float(rng.uniform(-0.5 * jit, 0.5 * jit))
    amplitude = float(rng.uniform(0.0, jit - abs(base)))
    cycles = float(rng.uniform(0.5, 2.0))
    phase = float(rng.uniform(0.0, 2.0 * math.pi))

    def yaw_at(u: np.ndarray) -> np.ndarray:
        return start_deg + direction * cfg.sweep_deg * u

    def curve(u: np.ndarray) -> np.ndarray:  # [N] -> [N, 3]
        yaw = yaw_at(u)
        rel = np.radians(yaw - orient_deg)
        dist = semi_a * semi_b / np.hypot(semi_b * np.cos(rel), semi_a * np.sin(rel))  # ellipse polar radius
        elev = base + amplitude * np.sin(2.0 * math.pi * cycles * u + phase)
        return centre + _spherical(yaw, elev, dist)

    u = _resample_by_arclength(curve, 0.0, 1.0, num_frames)
    eyes = curve(u)
    targets, off0, off1 = _lookat_targets(rng, num_frames, cfg.lookat_jitter_m, centre)
    params = {
        "kind": "spin",
        "start_yaw_deg": start_deg,
        "direction": direction,
        "sweep_deg": float(cfg.sweep_deg),
        "oval_semi_axes_m": [semi_a, semi_b],
        "oval_orientation_deg": orient_deg,
        "base_elevation_deg": base,
        "elevation_wobble_amplitude_deg": amplitude,
        "elevation_wobble_cycles": cycles,
        "elevation_wobble_phase_rad": phase,
        "lookat_offset_start_m": _floats(off0),
        "lookat_offset_end_m": _floats(off1),
        "head_centre": _floats(centre),
    }
    return Trajectory(kind="spin", eyes=eyes, targets=targets, params=params, head_centre=centre)


# ---------------------------------------------------------------------------------------------- spiral
def _steepness(yaw: np.ndarray, pitch: np.ndarray, dist: np.ndarray) -> np.ndarray:  # [n] -> [n-1]
    """Per segment between neighbouring seeds: off-yaw travel / yaw travel, both as angles.

    Off-yaw travel = hypot(pitch change, distance change / mean distance in degrees): how far the camera moves up,
    down, in or out, relative to how far it goes round the head.
    """
    d_dist = np.degrees(np.diff(dist) / (0.5 * (dist[1:] + dist[:-1])))
    return np.hypot(np.diff(pitch), d_dist) / np.abs(np.diff(yaw))


def _spiral_seeds(rng: np.random.Generator, cfg: SpiralConfig, max_draws: int = 1000):
    """Seeds (yaw [n], pitch [n], dist [n], direction, number of draws), in the order the camera visits them.

    Rejection sampling: whole seed sets are drawn until every segment's steepness is <= cfg.max_steepness (about
    a third of the default draws pass), so the accepted seeds are uniform given that constraint. After
    `max_draws` misses (only for extreme configs) the last draw's pitch/distance steps are shrunk, seed by seed,
    towards the previous seed until they pass (convex combinations, so they stay inside the ranges).
    """
    n = cfg.num_seeds
    (y_lo, y_hi), (p_lo, p_hi), (d_lo, d_hi) = cfg.yaw_range_deg, cfg.pitch_range_deg, cfg.distance_m
    sep = cfg.min_yaw_separation_deg
    free = (y_hi - y_lo) - (n - 1) * sep
    draws = 0
    while True:
        draws += 1
        # n sorted uniforms with gaps >= sep == sorted uniforms on a range shortened by (n-1) sep, spread out
        yaw = np.clip(y_lo + np.sort(rng.uniform(0.0, free, size=n)) + sep * np.arange(n), y_lo, y_hi)
        pitch = rng.uniform(p_lo, p_hi, size=n)
        dist = rng.uniform(d_lo, d_hi, size=n)
        if np.all(_steepness(yaw, pitch, dist) <= cfg.max_steepness):
            break
        if draws < max_draws:
            continue
        for i in range(1, n):
            seg = slice(i - 1, i + 1)
            steep = _steepness(yaw[seg], pitch[seg], dist[seg])[0]
            if steep > cfg.max_steepness:
                # pitch steps scale exactly with w, distance steps about so (the mean distance moves a little)
                w = 0.99 * cfg.max_steepness / steep
                pitch[i], dist[i] = (
                    pitch[i - 1] + w * (pitch[i] - pitch[i - 1]),
                    dist[i - 1] + w * (dist[i] - dist[i - 1]),
                )
                if _steepness(yaw[seg], pitch[seg], dist[seg])[0] > cfg.max_steepness:
                    pitch[i], dist[i] = pitch[i - 1], dist[i - 1]  # a flat segment always passes
        break
    direction = 1 if rng.random() < 0.5 else -1  # +1: increasing yaw (towards the subject's left, +X)
    if direction < 0:
        yaw, pitch, dist = yaw[::-1].copy(), pitch[::-1].copy(), dist[::-1].copy()
    return yaw, pitch, dist, direction, draws


def spiral_trajectory(
    rng: np.random.Generator,
    num_frames: int,
    cfg: SpiralConfig | None = None,
    head_centre: Sequence[float] = (0.0, 0.0, 0.0),
) -> Trajectory:
    """A spiral: a smooth curve through `cfg.num_seeds` random seed locations, evenly spaced by 3D arc length.

    Seeds: yaw uniform in yaw_range_deg conditioned on a gap >= min_yaw_separation_deg between neighbours (sampled
    exactly by the spacing transform), pitch and distance uniform in their ranges, the whole set redrawn until no
    seed-to-seed segment is steeper than max_steepness (see `_spiral_seeds`: steep zig-zags between seeds close in
    yaw would force sharp corners on any curve through them); visited in yaw order, left-to-right or right-to-left
    at random. Yaw, pitch and distance are each a monotone cubic (PCHIP)
    of the cumulative chord length between the seeds' 3D points: the curve passes through every seed, each
    coordinate stays between the values of its neighbouring seeds (so within the configured ranges), and yaw is
    strictly monotone, so the camera never stops or turns back. First / last frame = first / last seed.
    """
    from scipy.interpolate import PchipInterpolator  # lazily: only spirals need scipy

    cfg = SpiralConfig() if cfg is None else cfg
    _check_frames(num_frames)
    centre = np.asarray(head_centre, dtype=np.float64).reshape(3)
    yaw, pitch, dist, direction, draws = _spiral_seeds(rng, cfg)
    seeds = np.stack([yaw, pitch, dist], axis=-1)  # [n, 3]
    seed_points = centre + _spherical(yaw, pitch, dist)  # [n, 3]

    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(seed_points, axis=0), axis=-1))])
    interp = PchipInterpolator(chord, seeds, axis=0)

    def curve(u: np.ndarray) -> np.ndarray:  # [N] -> [N, 3]
        ypd = interp(u)
        return centre + _spherical(ypd[:, 0], ypd[:, 1], ypd[:, 2])

    u = _resample_by_arclength(curve, 0.0, float(chord[-1]), num_frames)
    eyes = curve(u)
    eyes[0] = seed_points[0]  # exact: the PCHIP reproduces the seeds only up to rounding
    if num_frames > 1:
        eyes[-1] = seed_points[-1]
    targets, off0, off1 = _lookat_targets(rng, num_frames, cfg.lookat_jitter_m, centre)
    params = {
        "kind": "spiral",
        "direction": direction,
        "seed_draws": draws,
        "seeds_yaw_pitch_distance": [_floats(s) for s in seeds],
        "seed_points_m": [_floats(p) for p in seed_points],
        "seed_frames": [int(np.argmin(np.abs(u - c))) for c in chord],
        "lookat_offset_start_m": _floats(off0),
        "lookat_offset_end_m": _floats(off1),
        "head_centre": _floats(centre),
    }
    return Trajectory(kind="spiral", eyes=eyes, targets=targets, params=params, head_centre=centre)


# ---------------------------------------------------------------------------------------------- plot
def plot_trajectories(
    trajectories: Sequence[Trajectory],
    path: str | os.PathLike,
    head_radius_m: float = 0.09,
    title: str | None = None,
    figsize: tuple[float, float] = (10.0, 5.0),
    dpi: int = 100,
    arrows_per_path: int = 6,
) -> None:
    """Top view (x-z) and side view (z-y) of camera paths round the head; written atomically to `path`.

    Each path: a line, a circle at the first frame, a square at the last, and `arrows_per_path` arrows along the
    viewing direction. The head is a circle of `head_radius_m` with a tick towards the face (+Z).
    """
    # lazily, and through the Agg canvas directly: no pyplot global state, safe in worker processes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    path = Path(path)
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    views = [
        ("top view", 0, 2, "x (m, subject's left)", "z (m, face direction)"),
        ("side view", 2, 1, "z (m)", "y (m, up)"),
    ]
    axes = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(trajectories))]
    for ax, (name, i, j, xlabel, ylabel) in zip(axes, views, strict=True):
        centre = trajectories[0].head_centre if trajectories else np.zeros(3)
        ax.add_patch(Circle((centre[i], centre[j]), head_radius_m, facecolor="0.85", edgecolor="0.4", zorder=0))
        face = centre + np.array([0.0, 0.0, head_radius_m])  # the face looks down +Z
        ax.plot([centre[i], face[i]], [centre[j], face[j]], color="0.4", lw=2)
        for k, (traj, colour) in enumerate(zip(trajectories, colours, strict=True)):
            e = traj.eyes
            ax.plot(e[:, i], e[:, j], color=colour, lw=1.2, label=f"{k}: {traj.kind}" if i == 0 else None)
            ax.plot(e[0, i], e[0, j], "o", color=colour, ms=5)
            ax.plot(e[-1, i], e[-1, j], "s", color=colour, ms=5)
            if arrows_per_path > 0 and len(traj) > 0:
                idx = np.unique(np.linspace(0, len(traj) - 1, arrows_per_path).round().astype(int))
                look = traj.targets[idx] - e[idx]
                look = 0.05 * look / np.linalg.norm(look, axis=-1, keepdims=True)
                ax.quiver(
                    e[idx, i],
                    e[idx, j],
                    look[:, i],
                    look[:, j],
                    color=colour,
                    angles="xy",
                    scale_units="xy",
                    scale=1.0,
                    width=0.004,
                )
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if trajectories:
        axes[0].legend(fontsize="small", loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, path)  # readers never see a half-written image
    finally:
        tmp.unlink(missing_ok=True)
