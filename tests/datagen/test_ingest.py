"""`datagen ingest` on a real photograph made into a video (scikit-image's astronaut, moved by affine warps), with
frames that show no face in the middle, plus bad videos and resume.

Independent expectations: the crop's geometry is checked on a synthetic frame (a block whose place after the crop
is computed by hand); the adjusted K is checked by projecting the fitted guide mesh with the row's K / viewmat and
comparing with the row's landmarks, which the crop transform (u' = k (u - x0)) produced by another formula.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen.cli import main
from datagen.ingest import IngestConfig, collect_videos, crop_frame, crop_intrinsics, run_ingest
from datagen.manifest import read_rows, validate_dataset

FRAMES = 24
GAP = range(10, 14)  # frames replaced by a blank wall: the video splits into two segments
SIZE = 128


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


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    import cv2
    from skimage import data

    folder = tmp_path_factory.mktemp("phone")
    image = data.astronaut()
    frames = []
    for t in range(FRAMES):
        angle = 8.0 * math.sin(2 * math.pi * t / FRAMES)
        m = cv2.getRotationMatrix2D((224.0, 124.0), angle, 1.0)
        m[0, 2] += 20.0 * math.sin(math.pi * t / FRAMES)
        frame = cv2.warpAffine(image, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
        frames.append(np.full_like(frame, 128) if t in GAP else frame)
    _write_video(folder / "astronaut take 1.mp4", np.stack(frames))
    return folder


@pytest.fixture(scope="module")
def ingested(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "data"
    code = main(
        ["ingest", str(videos), "--out", str(out), "--identity", "astronaut", "--resolution", str(SIZE)]
        + ["--min-segment-frames", "4", "--dataset", "PhoneCapture", "--masks"]
    )
    assert code == 0
    return out


def test_crop_geometry_by_hand() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[40:50, 40:50] = 255  # pixels 40..49 cover [40, 50)
    crop = crop_frame(frame, np.array([30.0, 30.0]), side=40.0, size=80)  # k = 2: [40, 50) -> [20, 40)
    inside = crop[:, :, 0] > 127
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 39, 20, 39)
    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    K2 = crop_intrinsics(K, np.array([[30.0, 30.0]]), 40.0, 80)[0]
    np.testing.assert_allclose(K2, [[200, 0, 40], [0, 200, 40], [0, 0, 1]])


def test_ingest_writes_valid_segments(ingested) -> None:
    from avatar_render import load_avatar

    report = validate_dataset(ingested)
    assert report.ok, report.format()
    rows = sorted(read_rows(ingested), key=lambda r: r.sequence_id)
    assert [r.sequence_id for r in rows] == [
        "astronaut/phonecapture/astronaut-take-1-s00",
        "astronaut/phonecapture/astronaut-take-1-s01",
    ]
    spans = [json.loads(r.plan)["ingest"]["frames"] for r in rows]
    assert spans == [[0, GAP.start], [GAP.stop, FRAMES]]  # the blank frames split the video
    for row in rows:
        assert row.source == "phone" and row.mode == "capture" and row.width == SIZE and row.num_landmarks == 68
        assert np.ptp(row.viewmat, axis=0).max() == 0  # a static camera; K follows the crop
        marks = row.landmarks.reshape(row.num_frames, 68, 2)
        assert (marks > 0).all() and (marks < SIZE).all()  # the face is inside every crop
        # the row's K projects the fitted mesh onto the row's landmarks
        avatar = load_avatar("demo-000")
        posed = avatar.pose(torch.from_numpy(row.expression), torch.from_numpy(row.head_pose))
        uv, _ = posed.landmarks(torch.from_numpy(row.K), torch.from_numpy(row.viewmat), SIZE, SIZE, pair_frames=True)
        np.testing.assert_allclose(uv.numpy(), marks, atol=0.05)


def test_foreground_masks_cover_the_face_not_the_background(ingested) -> None:
    from datagen.video import read_video

    row = sorted(read_rows(ingested), key=lambda r: r.sequence_id)[0]
    masks = read_video(ingested / json.loads(row.plan)["mask_path"])[..., 0].astype(float) / 255
    marks = row.landmarks.reshape(row.num_frames, 68, 2)
    lo, hi = marks.min(1).astype(int), marks.max(1).astype(int)
    face = [masks[t, lo[t, 1] : hi[t, 1], lo[t, 0] : hi[t, 0]].mean() for t in range(row.num_frames)]
    assert min(face) > 0.9, face  # the landmark box is foreground
    assert masks[:, :8, -8:].mean() < 0.1  # the top-right corner of the crop is the space behind him


def test_model_reads_the_ingested_dataset(ingested) -> None:
    from factorportrait.data.clips import ClipDataset, ClipDatasetConfig
    from factorportrait.data.manifest import read_manifest_rows

    sources = read_manifest_rows(ingested, datasets=["PhoneCapture"])
    dataset = ClipDataset(sources, ClipDatasetConfig(frames=5, height=64, width=64, landmarks=True))
    item = dataset[0]
    assert item is not None and item["video"].shape == (3, 5, 64, 64) and item["expression"].shape == (5, 128)
    assert item["normals"].max() > -1  # the fitted mesh's normal maps are there


def test_rerun_skips_and_other_settings_are_refused(videos, ingested, capsys) -> None:
    base = ["ingest", str(videos), "--out", str(ingested), "--identity", "astronaut", "--min-segment-frames", "4"]
    assert main(base + ["--resolution", str(SIZE), "--masks"]) == 0
    assert "skipped 1 already ingested" in capsys.readouterr().out
    assert main(base + ["--resolution", "64"]) == 2
    err = capsys.readouterr().err
    assert "astronaut take 1.mp4" in err and "resolution: recorded 128, now 64" in err and "--force" in err
    assert validate_dataset(ingested).ok  # nothing was touched
    # a damaged output video is redone on the next run
    row = sorted(read_rows(ingested), key=lambda r: r.sequence_id)[1]
    (ingested / row.rgb_path).write_bytes(b"truncated")
    assert main(base + ["--resolution", str(SIZE), "--masks"]) == 0
    assert "ingested 1 video(s) into 2 sequence(s)" in capsys.readouterr().out
    assert validate_dataset(ingested).ok


def test_bad_videos_are_named_and_the_rest_ingested(videos, tmp_path, capsys) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.mp4").write_bytes((videos / "astronaut take 1.mp4").read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 100)
    rng = np.random.default_rng(0)
    _write_video(folder / "wall.mp4", rng.integers(100, 110, (8, 96, 96, 3), dtype=np.uint8))
    out = tmp_path / "out"
    jobs = collect_videos([folder], None, None)
    assert [j.identity for j in jobs] == ["broken", "good", "wall"]
    summary = run_ingest(jobs, IngestConfig(resolution=64, min_segment_frames=4, preset="ultrafast"), out)
    assert len(summary.done) == 1 and len(summary.failed) == 2
    failed = "\n".join(summary.failed)
    assert "broken.mp4: not a readable video" in failed and "wall.mp4: no face found in any of its 8 frames" in failed
    assert {r.identity for r in read_rows(out)} == {"good"} and validate_dataset(out).ok


def test_bad_settings_name_the_field(tmp_path, videos, capsys) -> None:
    bad = tmp_path / "ingest.toml"
    bad.write_text("resolution = 63\n")
    assert main(["ingest", str(videos), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "field 'resolution' = 63" in capsys.readouterr().err
    mapping = tmp_path / "who.csv"
    mapping.write_text("other.mp4,someone\n")
    assert main(["ingest", str(videos), "--out", str(tmp_path / "o"), "--identities", str(mapping)]) == 2
    assert "no identity for video 'astronaut take 1.mp4'" in capsys.readouterr().err


def test_ray_workers_ingest_in_parallel(videos, tmp_path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes((videos / "astronaut take 1.mp4").read_bytes())
    config = IngestConfig(resolution=64, min_segment_frames=4, max_frames=8, workers=2, preset="ultrafast")
    summary = run_ingest(collect_videos([folder], None, None), config, tmp_path / "out")
    assert len(summary.done) == 2 and not summary.failed, summary.format()
    rows = read_rows(tmp_path / "out")
    assert sorted(r.identity for r in rows) == ["a", "b"] and all(r.num_frames == 8 for r in rows)
    assert validate_dataset(tmp_path / "out").ok
