"""Synthetic capture tracks behave like tracked faces: never exactly still, blinks every few seconds, saccades
and smooth pursuit, lips that follow speech. Expectations from human behaviour, not from the generator's code:
people blink ~10-20 times a minute, the eyes jump between fixations within ~50 ms (about a frame at 25 fps) and
follow slowly moving targets smoothly, and no two consecutive frames of a tracked face are identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avatar_render.capture import synthesize_rig_track
from avatar_render.demo import CAPTURE_FPS, CAPTURE_FRAMES, load_kit

SEEDS = range(5000, 5016)  # the 16 demo avatars' track seeds


@pytest.fixture(scope="module")
def tracks() -> tuple[list[str], list[np.ndarray]]:
    labels = json.loads(load_kit()[1]["blendshape_labels"])
    return labels, [synthesize_rig_track(labels, CAPTURE_FRAMES, CAPTURE_FPS, seed)[0] for seed in SEEDS]


def test_no_frame_repeats_and_every_channel_lives(tracks, demo_avatar) -> None:
    _, weights = tracks
    for rig in weights:
        assert not (rig[1:] == rig[:-1]).all(axis=1).any()
        assert (rig.std(axis=0) > 1e-4).all() and rig.min() > 0  # micro-motion on every channel
    codes = demo_avatar.capture_codes
    assert not bool((codes[1:] == codes[:-1]).all(dim=1).any())  # the avatar's 128-d codes too


def test_blinks_every_few_seconds(tracks) -> None:
    labels, weights = tracks
    seconds = CAPTURE_FRAMES / CAPTURE_FPS
    for rig in weights:
        lid = rig[:, labels.index("eyeBlinkLeft")]
        closed = lid > 0.8
        blinks = int((closed[1:] & ~closed[:-1]).sum() + closed[0])
        assert 4 <= 60 * blinks / seconds <= 40, blinks  # per minute


def _gaze(rig: np.ndarray, labels: list[str]) -> np.ndarray:
    return rig[:, labels.index("eyeLookOutLeft")] - rig[:, labels.index("eyeLookInLeft")]


def test_gaze_moves_in_saccades_and_smooth_pursuit(tracks) -> None:
    labels, weights = tracks
    saccades = pursuits = 0
    for rig in weights:
        step = np.diff(_gaze(rig, labels))
        saccades += int((np.abs(step) > 0.15).sum())  # big jumps happen within a frame or two
        moving = (np.abs(step) > 0.005) & (np.abs(step) < 0.06)
        same_sign = np.sign(step[1:]) == np.sign(step[:-1])
        run, longest = 0, 0
        for ok in moving[1:] & moving[:-1] & same_sign:
            run = run + 1 if ok else 0
            longest = max(longest, run)
        pursuits += longest >= 8  # >= 0.3 s of steady, slow motion in one direction
    assert saccades > 10 * len(weights)  # many per track
    assert pursuits >= len(weights) // 2


def test_lips_follow_speech(tracks) -> None:
    labels, weights = tracks
    for rig in weights:
        jaw = rig[:, labels.index("jawOpen")]
        lower = rig[:, labels.index("mouthLowerDownLeft")]
        if jaw.max() > 0.1:  # the track speaks
            assert np.corrcoef(jaw, lower)[0, 1] > 0.8


def test_track_is_a_pure_function_of_the_seed(tracks) -> None:
    labels, weights = tracks
    again, poses = synthesize_rig_track(labels, CAPTURE_FRAMES, CAPTURE_FPS, SEEDS[0])
    np.testing.assert_array_equal(again, weights[0])
    assert torch.isfinite(torch.from_numpy(poses)).all()
