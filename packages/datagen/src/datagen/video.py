"""mp4 reading and writing on PyAV: atomic, deterministic H.264 writes and plain RGB reads.

The datagen pipeline writes every rendered sequence through `VideoWriter`, so that a crashed
or interrupted worker never leaves a half-written video under its final name, and so that
re-running a sequence with the same seed gives a byte-identical file (resumable and
checksum-friendly). Frame t of a video written here has the presentation time t / fps exactly:
the stream uses a rational time base of 1 / fps, matching the manifest's
`timestamp = frame_index / fps`.

Colour: RGB is converted to BT.709 limited-range YUV and the stream is tagged as such, so
players and decoders (including `read_video`) convert back with the same matrix.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation

__all__ = [
    "ThreadedVideoWriter",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "probe_video",
    "read_video",
    "write_video",
]

# H.264 / ISO colour tags (ITU-T H.273): 1 = BT.709 for primaries, transfer and matrix.
_BT709 = 1
_RANGE_LIMITED = 1
# Accurate rounding plus bit-exact swscale: SIMD paths otherwise differ between CPUs.
_SWS_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT


class VideoError(RuntimeError):
    """A video could not be written, opened or decoded; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` found in a file's first video stream."""

    num_frames: int
    width: int
    height: int
    fps: float
    codec: str


def _as_rate(fps: float | Fraction) -> Fraction:
    """fps as an exact fraction: 30 -> 30/1, 30000/1001 stays NTSC, 29.97 -> 2997/100."""
    if isinstance(fps, Fraction):
        rate = fps
    else:
        if not math.isfinite(float(fps)):
            raise ValueError(f"fps must be finite, got {fps!r}")
        rate = Fraction(float(fps)).limit_denominator(1_000_000)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    return rate


def _check_subsampling(width: int, height: int, pix_fmt: str) -> None:
    """Chroma-subsampled formats (yuv420p: 2x2) need sizes divisible by the subsampling."""
    if width < 1 or height < 1:
        raise ValueError(f"video size must be positive, got {width}x{height}")
    fmt = av.VideoFormat(pix_fmt)
    if not fmt.components:
        raise ValueError(f"unknown pixel format {pix_fmt!r}")
    # chroma_width(1) is 1 without horizontal subsampling and 1 (rounded up) with it, so
    # compare the chroma size of an even size instead: 2 -> 1 means a 2x subsampling.
    sub_w = 2 // fmt.chroma_width(2)
    sub_h = 2 // fmt.chroma_height(2)
    if width % sub_w or height % sub_h:
        raise ValueError(
            f"video size {width}x{height} is not supported by pixel format {pix_fmt}: "
            f"width must be a multiple of {sub_w} and height a multiple of {sub_h} (crop or pad the frames)"
        )


class VideoWriter:
    """Writes RGB frames to an H.264 mp4, atomically and deterministically.

    Frames go to a hidden temporary file next to `path` (`.<name>.<random>.tmp<suffix>`), which is
    renamed onto `path` by `close()` only when at least one frame was written and no exception is
    in flight; otherwise the temporary file is removed and an existing `path` stays untouched.

    Determinism: the encoder runs with a fixed thread count (`threads`, default 1; x264's output
    depends on it) and the bitexact flags, so the muxer writes no library version or time
    stamps; the same frames and settings give byte-identical files on the same PyAV/FFmpeg build.
    `crf` and `preset` apply to libx264 / libx265 only.

    x264's macroblock-tree rate control is off (see `__init__`): with it, identical frames gave different
    files from run to run when rendering ran between frames. Frames narrower than 64 px also varied in
    our trials, so tests use 64 px and more.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float | Fraction,
        crf: int = 18,
        preset: str = "medium",
        pix_fmt: str = "yuv420p",
        codec: str = "libx264",
        threads: int = 1,
    ) -> None:
        self.path = Path(path)
        self.width = int(width)
        self.height = int(height)
        self.rate = _as_rate(fps)
        self.fps = float(self.rate)
        self.num_frames = 0
        _check_subsampling(self.width, self.height, pix_fmt)
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (a fixed count keeps the output deterministic), got {threads}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write video {self.path}: folder {self.path.parent} does not exist")

        # Same folder as the target so that os.replace is an atomic rename on one file system;
        # the real suffix is kept last so that FFmpeg picks the container from it.
        self.tmp_path = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:12]}.tmp{self.path.suffix}")
        self._closed = False
        try:
            # +bitexact: no "Lavf..." encoder tag; faststart: moov atom first (readable while streaming).
            self._container = av.open(
                str(self.tmp_path),
                mode="w",
                container_options={"fflags": "+bitexact", "movflags": "+faststart"},
            )
        except (av.FFmpegError, ValueError) as e:
            self._closed = True
            self.tmp_path.unlink(missing_ok=True)
            raise VideoError(f"cannot open {self.path} for writing: {e}") from e
        try:
            options = {"threads": str(threads)}
            if codec == "libx264":
                # x264's macroblock-tree rate control made byte-different files from identical frames
                # when other work (PyTorch rendering) ran between frames; without it, outputs repeat
                # exactly (at a few percent more bits for the same quality).
                options["x264-params"] = "mbtree=0"
            if codec in ("libx264", "libx265"):
                options.update(crf=str(crf), preset=preset)
            stream = self._container.add_stream(codec, rate=self.rate, options=options)
            stream.width = self.width
            stream.height = self.height
            stream.pix_fmt = pix_fmt
            stream.time_base = 1 / self.rate
            cc = stream.codec_context
            cc.time_base = 1 / self.rate
            cc.thread_count = threads
            cc.flags |= av.codec.context.Flags.bitexact
            cc.color_primaries = _BT709
            cc.color_trc = _BT709
            cc.colorspace = _BT709
            cc.color_range = _RANGE_LIMITED
            self._stream = stream
            self._pix_fmt = pix_fmt
        except Exception as e:
            self._abort()
            raise VideoError(f"cannot set up {codec} for {self.path}: {e}") from e

    def write(self, frame: np.ndarray) -> None:
        """Appends one frame, [H, W, 3] uint8 RGB; its time stamp is num_frames / fps."""
        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {self.num_frames} for {self.path}: expected uint8 [{self.height}, {self.width}, 3], "
                f"got {frame.dtype} {list(frame.shape)}"
            )
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        yuv = rgb.reformat(
            format=self._pix_fmt,
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
            interpolation=_SWS_FLAGS,
            threads=1,
        )
        yuv.pts = self.num_frames
        yuv.time_base = 1 / self.rate
        try:
            for packet in self._stream.encode(yuv):
                self._container.mux(packet)
        except av.FFmpegError as e:
            raise VideoError(f"encoding frame {self.num_frames} of {self.path} failed: {e}") from e
        self.num_frames += 1

    def close(self) -> Path:
        """Flushes the encoder and renames the temporary file onto `path`; returns `path`."""
        if self._closed:
            return self.path
        if self.num_frames < 1:
            self._abort()
            raise ValueError(f"no frames were written to {self.path}; nothing saved")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except Exception as e:
            self._abort()
            raise VideoError(f"finishing {self.path} failed: {e}") from e
        self._closed = True
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Discards everything written so far; `path` is left as it was."""
        self._abort()

    def _abort(self) -> None:
        self._closed = True
        # The file is being thrown away: a muxer error while closing it says nothing useful.
        with contextlib.suppress(Exception):
            self._container.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave its temporary file behind.
        if not getattr(self, "_closed", True):
            self._abort()


class ThreadedVideoWriter:
    """A VideoWriter fed through a bounded queue and encoded on its own thread.

    The caller (the render loop) hands over frames and goes on rendering while x264 encodes; libav releases
    the GIL while it converts and encodes, so encoding really runs beside PyTorch. At most `depth` frames
    wait (memory stays bounded and a slow encoder slows the renderer rather than filling RAM). The encoder
    sees the same frames in the same order as a serial writer, so the file is byte-identical to it.
    An encoder error is raised by the next `write` or by `close`; `abort` discards everything.
    """

    _STOP = object()

    def __init__(self, writer: VideoWriter, depth: int = 8) -> None:
        if depth < 1:
            raise ValueError(f"queue depth must be >= 1, got {depth}")
        self.writer = writer
        self.path = writer.path
        self.encode_s = 0.0  # time spent converting and encoding, on the encoder thread
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._work, name=f"encode-{writer.path.name}", daemon=True)
        self._thread.start()

    @property
    def num_frames(self) -> int:
        return self.writer.num_frames

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                break
            if self._error is not None or self._discard:
                continue  # keep draining so that the producer never blocks on a dead encoder
            tick = time.perf_counter()
            try:
                self.writer.write(item)
            except BaseException as e:  # noqa: BLE001 - handed to the producer thread
                self._error = e
            self.encode_s += time.perf_counter() - tick
        if self._error is None and not self._discard:
            tick = time.perf_counter()
            try:
                self.writer.close()  # flushes x264's delayed frames here, beside the other writer's flush
            except BaseException as e:  # noqa: BLE001
                self._error = e
            self.encode_s += time.perf_counter() - tick

    def write(self, frame: np.ndarray) -> None:
        """Queues one [H, W, 3] uint8 frame (blocks while `depth` frames wait); the array must not change after."""
        if self._error is not None:
            raise self._error
        self._queue.put(frame)

    def close(self) -> Path:
        """Waits for the encoder to finish and rename the file; raises its error if it had one."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        if self._error is not None:
            self.writer.abort()
            raise self._error
        return self.writer.close()  # already closed by the thread: returns the path

    def abort(self) -> None:
        self._discard = True
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self.writer.abort()

    def __enter__(self) -> ThreadedVideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    frames: Iterable[np.ndarray] | np.ndarray,  # [T, H, W, 3] uint8 or an iterable of [H, W, 3]
    path: str | os.PathLike[str],
    fps: float | Fraction,
    **kwargs,
) -> Path:
    """Writes all frames with `VideoWriter` (kwargs: crf, preset, pix_fmt, codec, threads); returns path."""
    iterator = iter(frames)
    try:
        first = np.asarray(next(iterator))
    except StopIteration:
        raise ValueError(f"no frames given for {path}") from None
    if first.ndim != 3:
        raise ValueError(f"frames for {path} must be [H, W, 3] each, got a frame of shape {list(first.shape)}")
    with VideoWriter(path, first.shape[1], first.shape[0], fps, **kwargs) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.path


def _open_input(path: str | os.PathLike[str]) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise VideoError(f"cannot open video {path}: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"no video stream in {path}")
    return container, container.streams.video[0]


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """[H, W, 3] uint8, converted with the colour matrix and range the stream is tagged with."""
    src_range = frame.color_range if frame.color_range != ColorRange.UNSPECIFIED else None
    return frame.to_ndarray(format="rgb24", src_color_range=src_range, interpolation=_SWS_FLAGS)


def read_video(path: str | os.PathLike[str], start: int = 0, count: int | None = None) -> np.ndarray:
    """Decodes frames [start, start + count) (all from start when count is None) -> [T, H, W, 3] uint8.

    Decodes sequentially from the first frame: frame indices are positions in decode order,
    which is right for any file, including variable-frame-rate phone videos whose time stamps
    would mislead a seek. Fewer frames come back when the file ends early.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0 or None, got {count}")
    container, stream = _open_input(path)
    stream.thread_type = "AUTO"  # frame threads: faster, and H.264 decoding is exact either way
    width, height = stream.codec_context.width, stream.codec_context.height
    frames: list[np.ndarray] = []
    try:
        if count != 0:
            for index, frame in enumerate(container.decode(stream)):
                if index < start:
                    continue
                frames.append(_to_rgb(frame))
                if count is not None and len(frames) == count:
                    break
    except av.FFmpegError as e:
        raise VideoError(f"decoding {path} failed after {len(frames) + start} frames: {e}") from e
    finally:
        container.close()
    if not frames:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(frames)


def probe_video(path: str | os.PathLike[str], decode: bool = False) -> VideoInfo:
    """Frame count, size, fps and codec of the first video stream.

    The count never trusts the header (`stream.frames` is 0 for some containers): decode=False
    counts the demuxed packets, cheap and right for intact files; decode=True decodes every frame,
    which also catches truncated or corrupt data and frames of another size.
    """
    container, stream = _open_input(path)
    cc = stream.codec_context
    width, height = cc.width, cc.height
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else float("nan")
    num_frames = 0
    try:
        if decode:
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if (frame.width, frame.height) != (width, height):
                    raise VideoError(
                        f"{path}: frame {num_frames} is {frame.width}x{frame.height}, the stream says {width}x{height}"
                    )
                num_frames += 1
        else:
            # The demuxer ends with an empty flush packet (size 0, no pts): not a frame.
            num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as e:
        raise VideoError(f"reading {path} failed after {num_frames} frames: {e}") from e
    finally:
        container.close()
    return VideoInfo(num_frames=num_frames, width=width, height=height, fps=fps, codec=cc.name)
