"""datagen.video: H.264 round trips, exact time stamps, byte-identical rewrites, atomic writes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from datagen.video import VideoError, VideoInfo, VideoWriter, probe_video, read_video, write_video

T, H, W = 10, 64, 64


def smooth_frames(num_frames: int = T, height: int = H, width: int = W) -> np.ndarray:
    """[T, H, W, 3] uint8 of slowly varying colours: what a lossy codec keeps well."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = [
        np.stack(
            [
                128 + 90 * np.sin(x / 11 + t / 3),
                128 + 90 * np.cos(y / 13 - t / 4),
                128 + 70 * np.sin((x + y) / 17 + t / 5),
            ],
            axis=-1,
        )
        for t in range(num_frames)
    ]
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def test_round_trip_keeps_count_size_and_pixels(tmp_path: Path) -> None:
    frames = smooth_frames()
    path = write_video(frames, tmp_path / "a.mp4", fps=30)
    assert path == tmp_path / "a.mp4"

    decoded = read_video(path)
    assert decoded.shape == (T, H, W, 3) and decoded.dtype == np.uint8
    # Against the source frames: PSNR of crf 18 on smooth content is well above 35 dB.
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
    assert np.abs(decoded.astype(int) - frames).mean() < 4

    assert probe_video(path) == VideoInfo(num_frames=T, width=W, height=H, fps=30.0, codec="h264")
    assert probe_video(path, decode=True) == probe_video(path)


def test_read_video_window_matches_full_decode(tmp_path: Path) -> None:
    path = write_video(smooth_frames(), tmp_path / "a.mp4", fps=25)
    full = read_video(path)
    np.testing.assert_array_equal(read_video(path, start=3, count=4), full[3:7])
    np.testing.assert_array_equal(read_video(path, start=8), full[8:])
    assert read_video(path, start=20).shape == (0, H, W, 3)
    assert read_video(path, count=0).shape == (0, H, W, 3)


@pytest.mark.parametrize("fps", [30, 24.0, Fraction(30000, 1001)])
def test_frame_times_are_index_over_fps(tmp_path: Path, fps: float | Fraction) -> None:
    path = write_video(smooth_frames(6), tmp_path / "a.mp4", fps=fps)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.pts * stream.time_base for frame in container.decode(stream)]
    # Exact rational equality with i / fps, independent of the time base the muxer chose.
    assert times == [Fraction(i) / Fraction(fps) for i in range(6)]
    assert probe_video(path).fps == pytest.approx(float(fps), rel=1e-12)


def test_same_frames_give_byte_identical_files(tmp_path: Path) -> None:
    frames = smooth_frames()
    a = write_video(frames, tmp_path / "a.mp4", fps=30)
    # Frame by frame through the writer this time: the same bytes must come out.
    with VideoWriter(tmp_path / "b.mp4", W, H, 30) as writer:
        for frame in frames:
            writer.write(frame)
    assert a.read_bytes() == (tmp_path / "b.mp4").read_bytes()
    # No FFmpeg version tag: the bitexact muxer flag is set.
    assert b"Lavf" not in a.read_bytes()


def test_exception_mid_write_leaves_no_file_and_no_temp(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="renderer crashed"), VideoWriter(tmp_path / "a.mp4", W, H, 30) as writer:
        for t, frame in enumerate(smooth_frames()):
            if t == 5:
                raise RuntimeError("renderer crashed")
            writer.write(frame)
    assert list(tmp_path.iterdir()) == []


def test_exception_mid_write_leaves_existing_file_untouched(tmp_path: Path) -> None:
    path = write_video(smooth_frames(4), tmp_path / "a.mp4", fps=30)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"expected uint8 \[64, 64, 3\]"), VideoWriter(path, W, H, 30) as writer:
        writer.write(smooth_frames(1)[0])
        writer.write(np.zeros((32, 32, 3), np.uint8))  # wrong size: the writer refuses it
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_temporary_file_is_hidden_beside_the_target_until_close(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "a.mp4", W, H, 30)
    writer.write(smooth_frames(1)[0])
    assert writer.tmp_path.parent == tmp_path
    assert writer.tmp_path.name.startswith(".") and ".tmp" in writer.tmp_path.name
    assert not (tmp_path / "a.mp4").exists()
    writer.close()
    assert (tmp_path / "a.mp4").exists() and leftovers(tmp_path) == []


def test_closing_without_frames_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"), VideoWriter(tmp_path / "a.mp4", W, H, 30):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [(63, 64), (64, 63)])
def test_odd_size_is_refused_with_the_size_named(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    with pytest.raises(ValueError, match=f"{width}x{height}.*yuv420p"):
        VideoWriter(tmp_path / "a.mp4", width, height, 30)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(missing)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        probe_video(missing)

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(VideoError, match="junk.mp4"):
        probe_video(junk)

    # Cut a good file in half: decoding must notice, not return a short video silently.
    data = write_video(smooth_frames(), tmp_path / "good.mp4", fps=30).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        info = probe_video(cut, decode=True)
    except VideoError as e:
        assert "cut.mp4" in str(e)
    else:
        assert info.num_frames < T
