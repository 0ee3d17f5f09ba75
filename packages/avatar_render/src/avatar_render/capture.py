"""Synthetic capture tracks: natural-looking ARKit rig weights and head poses over time.

A demo avatar has no real capture, so its track is synthesised from simple models of what a person
in front of a phone does: blinks (Poisson, ~0.2 s), speech bursts (syllable-rate jaw and lip motion),
smiles with cheek squint, brow raises, gaze saccades, head turns (smoothed random walks plus
occasional deliberate turns) and small translations. Everything is a pure function of the seed.

On top of those events, drawn from a second stream of the same seed (so the events themselves are unchanged):
- micro-motion on every channel: a small positive log-normal tone (0.5-2 % of full scale, varying over 0.4-1.5 s),
  so no channel ever rests exactly at zero and no two consecutive frames are equal, as in any tracked face;
- gaze: fixations (the held targets) joined by saccades (a 2-frame minimum-jerk jump) or, for about a third of
  the changes, by smooth pursuit (a 0.4-1 s glide), plus fixational drift;
- speech: lower-lip depression and upper-lip raise following the syllables, lip closures between them.
"""

from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float) -> np.ndarray:
    """Unit-variance low-pass noise (Gaussian-filtered white noise)."""
    radius = int(4 * sigma_frames) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_frames) ** 2)
    kernel /= kernel.sum()
    noise = np.convolve(rng.standard_normal(n + 2 * radius), kernel, mode="valid")
    return noise / (noise.std() + 1e-12)


def _events(
    rng: np.random.Generator,
    n: int,
    fps: float,
    rate_hz: float,
    duration_s: tuple[float, float],
) -> list[tuple[int, int]]:
    """Random non-overlapping (start, length) events with a Poisson rate."""
    events, t = [], rng.exponential(1.0 / rate_hz) * fps
    while t < n:
        length = max(2, int(rng.uniform(*duration_s) * fps))
        events.append((int(t), length))
        t += length + rng.exponential(1.0 / rate_hz) * fps
    return events


def _envelope(n: int, start: int, length: int, attack: float = 0.25) -> np.ndarray:
    """A smooth bump (raised-cosine attack and release) of the given length."""
    env = np.zeros(n)
    t = np.arange(length) / max(length - 1, 1)
    ramp = np.clip(np.minimum(t, 1 - t) / attack, 0, 1)
    bump = 0.5 - 0.5 * np.cos(np.pi * ramp)
    end = min(n, start + length)
    env[start:end] = bump[: end - start]
    return env


def synthesize_rig_track(labels: list[str], num_frames: int, fps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rig weights [T, E] in [0, 1] for the ARKit `labels`, and head poses [T, 6] (axis-angle rad, metres)."""
    rng = np.random.default_rng(seed)
    n = num_frames
    index = {name: i for i, name in enumerate(labels)}
    weights = np.zeros((n, len(labels)))

    def add(name: str, value: np.ndarray) -> None:
        if name in index:
            weights[:, index[name]] += value

    # Blinks: both eyes, about every 3-4 s, 0.15-0.3 s long; occasionally a double blink.
    for start, length in _events(rng, n, fps, rate_hz=0.3, duration_s=(0.15, 0.3)):
        env = _envelope(n, start, length, attack=0.45)
        add("eyeBlinkLeft", env)
        add("eyeBlinkRight", env * rng.uniform(0.9, 1.0))

    # Speech: bursts of syllables at 3.5-5.5 Hz driving the jaw and lips.
    for start, length in _events(rng, n, fps, rate_hz=0.4, duration_s=(2.0, 5.0)):
        burst = _envelope(n, start, length, attack=0.1)
        rate = rng.uniform(3.5, 5.5)
        phase = np.cumsum(np.full(n, rate / fps) * (1 + 0.2 * _smooth_noise(rng, n, fps * 0.3)))
        syllables = (0.5 + 0.5 * np.sin(2 * np.pi * phase)) ** 1.5
        loud = 0.25 + 0.2 * np.clip(_smooth_noise(rng, n, fps * 0.2), -1, 1)
        add("jawOpen", burst * syllables * loud)
        add("mouthFunnel", burst * np.clip(_smooth_noise(rng, n, fps * 0.15), 0, None) * 0.25)
        add("mouthPucker", burst * np.clip(_smooth_noise(rng, n, fps * 0.2), 0, None) * 0.2)
        add("mouthStretchLeft", burst * np.clip(_smooth_noise(rng, n, fps * 0.2), 0, None) * 0.15)
        add("mouthStretchRight", burst * np.clip(_smooth_noise(rng, n, fps * 0.2), 0, None) * 0.15)
        add("browInnerUp", burst * np.clip(_smooth_noise(rng, n, fps * 0.5), 0, None) * 0.3)

    # Smiles, with cheek squint; slightly asymmetric.
    for start, length in _events(rng, n, fps, rate_hz=0.08, duration_s=(1.0, 3.5)):
        env = _envelope(n, start, length, attack=0.2) * rng.uniform(0.4, 0.9)
        tilt = rng.uniform(-0.1, 0.1)
        add("mouthSmileLeft", env * (1 + tilt))
        add("mouthSmileRight", env * (1 - tilt))
        add("cheekSquintLeft", env * 0.4)
        add("cheekSquintRight", env * 0.4)

    # Occasional frowns and surprise.
    for start, length in _events(rng, n, fps, rate_hz=0.03, duration_s=(0.8, 2.0)):
        env = _envelope(n, start, length) * rng.uniform(0.3, 0.7)
        if rng.random() < 0.5:
            add("browDownLeft", env)
            add("browDownRight", env)
            add("mouthFrownLeft", env * 0.5)
            add("mouthFrownRight", env * 0.5)
        else:
            add("browOuterUpLeft", env)
            add("browOuterUpRight", env)
            add("browInnerUp", env)
            add("eyeWideLeft", env * 0.6)
            add("eyeWideRight", env * 0.6)

    # Gaze: fixation targets left/right/up/down, one every 10 frames (joined by saccades or pursuit below).
    fine = np.random.default_rng([seed, 7])  # the second stream: micro-motion, gaze dynamics, lip shapes
    gaze_x = _saccades_and_pursuit(rng.uniform(-0.4, 0.4, n // 10 + 1), 10, n, fps, fine)
    gaze_y = _saccades_and_pursuit(rng.uniform(-0.25, 0.25, n // 10 + 1), 10, n, fps, fine)
    add("eyeLookOutLeft", np.clip(gaze_x, 0, None))
    add("eyeLookInRight", np.clip(gaze_x, 0, None))
    add("eyeLookInLeft", np.clip(-gaze_x, 0, None))
    add("eyeLookOutRight", np.clip(-gaze_x, 0, None))
    add("eyeLookUpLeft", np.clip(gaze_y, 0, None))
    add("eyeLookUpRight", np.clip(gaze_y, 0, None))
    add("eyeLookDownLeft", np.clip(-gaze_y, 0, None))
    add("eyeLookDownRight", np.clip(-gaze_y, 0, None))

    # Head: smooth wander plus a few deliberate turns; rotation as axis-angle in the canonical frame
    # (+Y up, face toward +Z): yaw about Y, pitch about X, roll about Z.
    yaw = np.radians(8) * _smooth_noise(rng, n, fps * 0.8)
    for start, length in _events(rng, n, fps, rate_hz=0.06, duration_s=(1.5, 3.0)):
        yaw += np.radians(rng.uniform(-25, 25)) * _envelope(n, start, length, attack=0.3)
    pitch = np.radians(5) * _smooth_noise(rng, n, fps * 0.7)
    roll = np.radians(3) * _smooth_noise(rng, n, fps * 1.0)
    translation = np.stack([0.006 * _smooth_noise(rng, n, fps * 1.2) for _ in range(3)], -1)
    poses = np.concatenate([np.stack([pitch, yaw, roll], -1), translation], -1)
    _add_lip_shapes(weights, index, fine, n, fps, speech=weights[:, index["jawOpen"]] if "jawOpen" in index else None)
    # Micro-motion: a positive tone on every channel, so nothing is ever exactly still.
    for e in range(len(labels)):
        tone = fine.uniform(0.005, 0.02) * np.exp(0.4 * _smooth_noise(fine, n, fps * fine.uniform(0.4, 1.5)))
        weights[:, e] += tone
    return np.clip(weights, 0.0, 1.0), poses


def _saccades_and_pursuit(
    targets: np.ndarray, hold: int, n: int, fps: float, rng: np.random.Generator
) -> np.ndarray:  # [n]
    """Gaze over time: each target held `hold` frames; changes are saccades (2-frame minimum-jerk jumps) or, with
    probability 1/3, smooth pursuit (a linear glide over 0.4-1 s); plus fixational drift (~1 % of the range)."""
    gaze = np.repeat(targets, hold)[:n].astype(float)
    out = gaze.copy()
    for change in range(hold, n, hold):
        before, after = out[change - 1], gaze[change]  # from where the eye is (a glide may be under way)
        length = int(rng.uniform(0.4, 1.0) * fps) if rng.random() < 1 / 3 else 2
        t = np.arange(1, length + 1) / (length + 1)
        shape = t if length > 2 else 10 * t**3 - 15 * t**4 + 6 * t**5  # pursuit: linear; saccade: minimum jerk
        end = min(n, change + length)
        out[change:end] = before + (after - before) * shape[: end - change]
    return out + 0.01 * _smooth_noise(rng, n, fps * 0.3)


def _add_lip_shapes(
    weights: np.ndarray, index: dict[str, int], rng: np.random.Generator, n: int, fps: float, speech
) -> None:
    """Lip shapes that follow the syllables: lower lip down / upper lip up while the jaw opens, closures between."""
    if speech is None:
        return
    opening = np.clip(speech / 0.45, 0.0, 1.0)  # jawOpen relative to a loud syllable
    talking = np.convolve(opening > 0.05, np.ones(int(fps)) / int(fps), mode="same")  # ~1 while speaking
    closure = talking * np.clip(1.0 - 4.0 * opening, 0.0, 1.0)  # between syllables, lips meet
    asymmetry = 1.0 + 0.15 * _smooth_noise(rng, n, fps * 1.0)
    for name, value in (
        ("mouthLowerDownLeft", 0.35 * opening * asymmetry),
        ("mouthLowerDownRight", 0.35 * opening / asymmetry),
        ("mouthUpperUpLeft", 0.15 * opening * asymmetry),
        ("mouthUpperUpRight", 0.15 * opening / asymmetry),
        ("mouthClose", 0.2 * closure),
        ("mouthPressLeft", 0.1 * closure),
        ("mouthPressRight", 0.1 * closure),
    ):
        if name in index:
            weights[:, index[name]] += np.clip(value, 0.0, None)
