"""Whole-video tracking on a real photograph (scikit-image's astronaut) and bad input: `face_tracker.track`,
`face-track` and `model-infer`'s tracked driving video.

Independent expectations: OpenCV's Haar cascade (a classical detector trained on photographs) places the face
box the MediaPipe landmarks must fall in; the affine warps that make the test video are known, so the track's
head roll must follow the applied in-plane rotation (image counter-clockwise by theta = head roll +theta about the
canonical +Z axis, which points at the camera) and its image shift must follow the applied translation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from face_tracker.track import NoFaceError, VideoError, fill_gaps, found_segments

FRAMES = 20


def _write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "16"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512 x 512 RGB, a real photograph


def _warps() -> tuple[np.ndarray, np.ndarray]:
    """Per frame: in-plane rotation (deg, counter-clockwise on screen) and horizontal shift (px)."""
    t = np.arange(FRAMES) / (FRAMES - 1)
    return 12.0 * np.sin(2 * math.pi * t), 30.0 * np.sin(math.pi * t)


@pytest.fixture(scope="module")
def moving_photo(tmp_path_factory) -> Path:
    import cv2

    image = _astronaut()
    angles, shifts = _warps()
    centre = (224.0, 124.0)  # about the face centre (Haar box below), so the face stays in the frame
    frames = []
    for angle, shift in zip(angles, shifts, strict=True):
        m = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
        m[0, 2] += shift
        frames.append(cv2.warpAffine(image, m, (512, 512), borderMode=cv2.BORDER_REFLECT))
    return _write_video(tmp_path_factory.mktemp("astro") / "astronaut_moving.mp4", np.stack(frames))


@pytest.fixture(scope="module")
def moving_track(moving_photo):
    from avatar_render import load_avatar
    from face_tracker.track import track_video

    return track_video(moving_photo, load_avatar("demo-000"))


def test_landmarks_land_on_the_photographed_face() -> None:
    import cv2

    from face_tracker.landmarker import Landmarker

    image = _astronaut()
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    haar = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    (x, y, w, h), *_ = haar.detectMultiScale(gray, 1.1, 5)
    with Landmarker(static=True) as landmarker:
        det = landmarker.process(image[None])
    assert det.found[0] and det.score[0] > 0.5
    pts = det.landmarks[0]
    in_x = (pts[:, 0] > x - 0.1 * w) & (pts[:, 0] < x + 1.1 * w)
    inside = in_x & (pts[:, 1] > y - 0.1 * h) & (pts[:, 1] < y + 1.3 * h)
    assert inside.mean() > 0.95  # the chin lies a little below the Haar box
    x0, y0, x1, y1 = det.box[0]
    inter = max(0.0, min(x1, x + w) - max(x0, x)) * max(0.0, min(y1, y + h) - max(y0, y))
    iou = inter / ((x1 - x0) * (y1 - y0) + w * h - inter)
    assert iou > 0.5, iou


def test_a_moving_photo_gives_a_smooth_consistent_track(moving_track) -> None:
    from avatar_render.geometry import axis_angle_to_rotmat

    track = moving_track
    assert len(track) == FRAMES and track.found.all()
    assert float(track.fit.rms_px.max()) < 6.0  # the rig explains the landmarks to ~2% of the face width
    angles, shifts = _warps()
    R = axis_angle_to_rotmat(track.fit.head_pose[:, :3].double())
    roll = np.degrees(np.arctan2(R[:, 1, 0].numpy(), R[:, 0, 0].numpy()))  # rotation about +Z
    roll -= roll[0]
    slope = np.polyfit(angles, roll, 1)[0]
    assert np.corrcoef(angles, roll)[0, 1] > 0.95 and 0.7 < slope < 1.3, (slope, roll.round(1))
    # the image shift: the fitted landmarks' centroid moves with the warp's horizontal shift
    cx = np.nanmean(track.landmarks[:, :, 0].numpy(), 1)
    assert np.corrcoef(shifts, cx - cx[0])[0, 1] > 0.95
    # smooth: no frame-to-frame jump in the head rotation beyond what the warps do (< 4 deg per frame here)
    step = np.degrees(
        torch.linalg.matrix_norm(R[1:] - R[:-1]).numpy() / math.sqrt(2)  # ~ angle for small rotations
    )
    assert step.max() < 6.0, step.round(2)
    assert np.isfinite(track.fit.codes.numpy()).all()


def test_face_track_cli_writes_a_track_model_infer_reads(moving_photo, moving_track, tmp_path, capsys) -> None:
    from face_tracker.cli import main
    from factorportrait.inference.driving import load_driving

    out = tmp_path / "track.npz"
    assert main([str(moving_photo), "--out", str(out), "--max-frames", "8"]) == 0
    assert "face in 8" in capsys.readouterr().out
    data = np.load(out)
    assert data["expression"].shape == (8, 128) and data["head_pose"].shape == (8, 6) and data["found"].all()
    assert data["landmarks"].shape == (8, 68, 2) and int(data["width"]) == 512
    signal = load_driving(str(out))
    np.testing.assert_array_equal(signal.codes, data["expression"])
    assert signal.landmark_layout == "ibug68" and signal.landmark_size == (512, 512)
    # and the video itself drives: tracked in-process over all 20 frames, as `track_video` tracks it
    direct = load_driving(str(moving_photo))
    assert direct.source["kind"] == "tracked-video" and len(direct) == FRAMES
    np.testing.assert_allclose(direct.codes, moving_track.fit.codes.numpy(), atol=1e-6)
    # the first 8 frames alone differ only through the temporal smoothing of the rig weights
    np.testing.assert_allclose(direct.codes[:8], data["expression"], atol=0.1)


def test_bad_videos_are_named(tmp_path, capsys) -> None:
    from avatar_render import load_avatar
    from face_tracker.cli import main
    from face_tracker.track import track_video

    avatar = load_avatar("demo-000")
    rng = np.random.default_rng(0)
    blank = _write_video(tmp_path / "no_face.mp4", rng.integers(90, 110, (6, 128, 128, 3), dtype=np.uint8))
    with pytest.raises(NoFaceError, match="no_face.mp4: no face found in any of its 6 frames"):
        track_video(blank, avatar)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="corrupt.mp4"):
        track_video(corrupt, avatar)
    with pytest.raises(VideoError, match="missing.mp4: no such file"):
        track_video(tmp_path / "missing.mp4", avatar)
    out = tmp_path / "t.npz"
    assert main([str(blank), "--out", str(out)]) == 2
    assert "no_face.mp4" in capsys.readouterr().err and not out.exists()


def test_gaps_and_segments() -> None:
    found = np.array([False, True, True, False, False, True, False])
    assert found_segments(found) == [(1, 3), (5, 6)] and found_segments(found, 2) == [(1, 3)]
    values = np.array([[9.0], [1.0], [2.0], [9.0], [9.0], [5.0], [9.0]])
    np.testing.assert_allclose(fill_gaps(values, found)[:, 0], [1, 1, 2, 3, 4, 5, 5])
    with pytest.raises(ValueError, match="no frame was found"):
        fill_gaps(values, np.zeros(7, bool))
