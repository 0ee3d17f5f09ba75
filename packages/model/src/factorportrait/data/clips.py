"""Training clips from manifest rows: decoded, resized / cropped video, normal maps, reference frame and cameras.

A clip is `frames` consecutive frames (T = 1 + 4k, what the Wan VAE takes) of one sequence, starting every
`stride` frames. Each item carries the clip's RGB and normal-map video in [-1, 1], a reference frame, the camera
ray features of CONVENTIONS 6, the per-frame expression codes and, for the C3 ablation, the 2D landmarks.

Reference frames: "other_sequence" draws it from another row of the same identity AND the same non-null
`world_frame` (manifest 1.1: rows whose cameras live in one world frame, e.g. all renders of one avatar), because
the clip's cameras are made relative to the reference frame's own recorded camera (c2w_i' = w2c_ref c2w_i). Rows
with a null world_frame (real captures from different sessions) or alone in theirs take the reference from the
same sequence, from a frame outside the clip when there is one.

Normal maps: a row without a normal video gets all-black frames (-1), the encoding's "no surface", the same
thing the prepended reference frame gets (`factorportrait.conditions`).

Geometry: frames are scaled so that their short side covers the training size, then centre-cropped; K and the
landmarks get the same transform (pixel centres at i + 0.5, so scaling continuous pixel coordinates by s and
shifting by the crop offset is exact for align_corners=False resampling).

Broken data (a missing, truncated or undecodable video, bad cameras) never crashes a loader worker: `__getitem__`
returns None, counts it in `dataset.broken` (per process: DataLoader workers hold their own copies) and logs it;
`collate_clips` drops the Nones and reports how many in the batch's "skipped". `check_sources()` probes every
video up front and removes the bad sequences before training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import ColorRange, Interpolation
from torch import Tensor

from ..cameras import latent_frame_count, viewmat_to_c2w
from ..conditions import camera_features, no_surface_normals
from .manifest import ClipSource

__all__ = [
    "REFERENCE_MODES",
    "BrokenClips",
    "ClipDataset",
    "ClipDatasetConfig",
    "ClipRef",
    "VideoDecodeError",
    "adjust_intrinsics",
    "adjust_points",
    "collate_clips",
    "cover_crop",
    "decode_frames",
    "group_by_dataset",
    "resize_crop_frames",
]

log = logging.getLogger(__name__)

REFERENCE_MODES = ("same_sequence", "other_sequence")
_MAX_MESSAGES = 5
# Bilinear YUV -> RGB with accurate rounding, as datagen's reader: the same pixels whichever tool decodes them.
_SWS_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
# Frames resized per interpolate call: bounds the working set at 81 frames of 1024 px.
_RESIZE_CHUNK = 8


class VideoDecodeError(RuntimeError):
    """A video is missing, unreadable, shorter than needed or of another size than its row says."""


@dataclass
class ClipDatasetConfig:
    frames: int  # T per clip, 1 + 4k
    height: int  # training resolution, multiples of 16 (VAE 8x, patch 2x)
    width: int
    stride: int = 4  # frames between clip starts within a sequence
    reference: str = "other_sequence"  # or "same_sequence"
    seed: int = 0  # reference choices are a pure function of (seed, clip index)
    landmarks: bool = False  # items carry "landmarks" / "landmark_visible" (C3); rows without landmarks are dropped
    # items carry "ray_features" / "reference_rays" (1536 channels per latent pixel: ~0.8 GB per 81-frame 480x832
    # clip in float32); False: only the cameras (K, c2w, reference_K, reference_c2w), and the consumer builds the
    # rays on its device (training does: `training.step.condition_inputs`), so loader samples stay small
    ray_features: bool = True

    def __post_init__(self) -> None:
        latent_frame_count(self.frames)  # ValueError unless frames = 1 + 4k
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value % 16:
                raise ValueError(f"ClipDatasetConfig.{name} must be a positive multiple of 16, got {value!r}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"ClipDatasetConfig.stride must be an integer >= 1, got {self.stride!r}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"ClipDatasetConfig.reference must be one of {REFERENCE_MODES}, got {self.reference!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ClipDatasetConfig.seed must be an integer >= 0, got {self.seed!r}")


class ClipRef(NamedTuple):
    """Clip `start .. start + frames - 1` of `source`."""

    source: ClipSource
    start: int


class BrokenClips:
    """How many items failed to load in this process, and the first few reasons ("<sequence_id>: <problem>")."""

    def __init__(self, max_messages: int = _MAX_MESSAGES) -> None:
        self.count = 0
        self.messages: list[str] = []
        self.max_messages = max_messages

    def record(self, sequence_id: str, problem: str) -> None:
        self.count += 1
        if len(self.messages) < self.max_messages:
            message = f"{sequence_id}: {problem}"
            self.messages.append(message)
            log.warning("skipping broken clip %s", message)

    def __repr__(self) -> str:
        return f"BrokenClips(count={self.count}, messages={self.messages})"


# ---------------------------------------------------------------------------------------------- geometry
def cover_crop(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(scaled_height, scaled_width, top, left): scale so the frame covers height x width, then centre-crop."""
    scale = max(height / src_height, width / src_width)
    scaled_h = max(height, round(src_height * scale))  # max(): round() must never undershoot the crop
    scaled_w = max(width, round(src_width * scale))
    return scaled_h, scaled_w, (scaled_h - height) // 2, (scaled_w - width) // 2


def adjust_intrinsics(K: np.ndarray, src_height: int, src_width: int, height: int, width: int) -> np.ndarray:
    """K [..., 3, 3] of src_height x src_width frames -> K of the cover_crop'ed height x width frames (float32).

    Continuous pixel coordinates scale by the per-axis factor actually used (scaled / source, exact after rounding)
    and shift by the crop offset: fx' = sx fx, cx' = sx cx - left; fy' = sy fy, cy' = sy cy - top.
    """
    scaled_h, scaled_w, top, left = cover_crop(src_height, src_width, height, width)
    sx, sy = scaled_w / src_width, scaled_h / src_height
    out = np.array(K, np.float64, copy=True)
    out[..., 0, :] *= sx  # fx, skew, cx
    out[..., 1, :] *= sy  # 0, fy, cy
    out[..., 0, 2] -= left
    out[..., 1, 2] -= top
    return out.astype(np.float32)


def adjust_points(points: np.ndarray, src_height: int, src_width: int, height: int, width: int) -> np.ndarray:
    """Continuous pixel coordinates [..., 2] = (u, v) of src frames -> the same points in the cover_crop'ed frames.

    The transform of `adjust_intrinsics` applied to points: u' = sx u - left, v' = sy v - top (float32). Points
    may fall outside the cropped frame; they are kept (their visibility flag is the data's).
    """
    scaled_h, scaled_w, top, left = cover_crop(src_height, src_width, height, width)
    out = np.array(points, np.float64, copy=True)
    out[..., 0] = out[..., 0] * (scaled_w / src_width) - left
    out[..., 1] = out[..., 1] * (scaled_h / src_height) - top
    return out.astype(np.float32)


def resize_crop_frames(frames: np.ndarray, height: int, width: int) -> Tensor:
    """uint8 [N, h, w, 3] -> float32 [3, N, height, width] in [-1, 1], with the cover_crop transform.

    Resampled in uint8 with channels-last layout: torch's vectorised uint8 path for antialiased bilinear is ~15x
    faster on CPU than float32 (81 frames 1024 px -> 480x832: ~0.5 s instead of ~4 s on one core), at the cost of
    rounding each output pixel to the 8-bit grid the decoded video already lives on (|error| <= 1 level).
    """
    n, src_h, src_w, _ = frames.shape
    scaled_h, scaled_w, top, left = cover_crop(src_h, src_w, height, width)
    out = torch.empty(3, n, height, width, dtype=torch.float32)
    source = torch.from_numpy(frames)
    for lo in range(0, n, _RESIZE_CHUNK):
        x = source[lo : lo + _RESIZE_CHUNK].permute(0, 3, 1, 2)  # [n, 3, h, w] uint8, channels-last strides
        if (scaled_h, scaled_w) != (src_h, src_w):
            x = F.interpolate(x, size=(scaled_h, scaled_w), mode="bilinear", antialias=True, align_corners=False)
        out[:, lo : lo + _RESIZE_CHUNK] = x[:, :, top : top + height, left : left + width].transpose(0, 1)
    return out.div_(127.5).sub_(1.0)  # [3, N, H, W]; exact endpoints: 0 -> -1, 255 -> 1


# ---------------------------------------------------------------------------------------------- decoding
def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """[H, W, 3] uint8, converted with the colour range the stream is tagged with."""
    src_range = frame.color_range if frame.color_range != ColorRange.UNSPECIFIED else None
    return frame.to_ndarray(format="rgb24", src_color_range=src_range, interpolation=_SWS_FLAGS)


def decode_frames(path: Path, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]: the frames at `indices` (positions in decode order), in the order given.

    Decodes sequentially from the first frame up to the largest index (no seeking: time stamps of real videos
    can mislead a seek, decode order cannot) and converts only the frames asked for. `size` = (height, width)
    the frames must have. Raises VideoDecodeError (or FileNotFoundError) naming the file.
    """
    path = Path(path)
    if not indices:
        raise ValueError(f"decode_frames({path}): no frame indices given")
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    wanted = set(indices)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as err:
        raise VideoDecodeError(f"cannot open video {path}: {err}") from err
    try:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads; H.264 decoding is exact either way
        for frame in container.decode(stream):
            if decoded in wanted:
                if size is not None and (frame.height, frame.width) != size:
                    raise VideoDecodeError(
                        f"{path}: frame {decoded} is {frame.width}x{frame.height}, "
                        f"the manifest says {size[1]}x{size[0]}"
                    )
                got[decoded] = _to_rgb(frame)
            decoded += 1
            if decoded > last:
                break
    except av.FFmpegError as err:
        raise VideoDecodeError(f"decoding {path} failed after {decoded} frames: {err}") from err
    finally:
        container.close()
    if decoded <= last:
        raise VideoDecodeError(f"{path}: video ended after {decoded} frames, frame {last} is needed")
    return np.stack([got[i] for i in indices])


def _probe_video(path: Path, num_frames: int, width: int, height: int) -> str | None:
    """Why the video does not match its row (missing, unreadable, frame count, size), or None. Demuxes only."""
    if not path.is_file():
        return f"missing video {path}"
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                return f"no video stream in {path}"
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if (w, h) != (width, height):
                return f"{path} is {w}x{h}, the manifest says {width}x{height}"
            # Packets, not the header's frame count (0 or stale in some containers); the flush packet is empty.
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except (av.FFmpegError, OSError) as err:
        return f"cannot read {path}: {err}"
    if count != num_frames:
        return f"{path} has {count} frames, the manifest says {num_frames}"
    return None


def _probe_source(source: ClipSource) -> str | None:
    for path in (source.rgb_path, source.normal_path):
        if path is not None:
            problem = _probe_video(path, source.num_frames, source.width, source.height)
            if problem:
                return problem
    return None


# ---------------------------------------------------------------------------------------------- dataset
class ClipDataset(torch.utils.data.Dataset):
    """Clips (source, start) for start in range(0, T - frames + 1, stride) of every source.

    Item (T = config.frames, H x W = config.height x config.width, F = 1 + (T - 1) // 4, D = expression dim):
        video [3, T, H, W], normals [3, T, H, W] (all -1 = black "no surface" without a normal video),
        reference [3, 1, H, W] (all float32 in [-1, 1]); ray_features [1536, F, H/8, W/8] and reference_rays
        [1536, 1, H/8, W/8] (`camera_features` of the adjusted cameras, relative to the reference frame's camera);
        K [T, 3, 3] (adjusted to H x W), c2w [T, 4, 4], reference_K [3, 3], reference_c2w [4, 4]; expression [T, D];
        head_pose [T, 6]; with config.landmarks: landmarks [T, K, 2] (pixels of the H x W frame, cropped / resized
        like the frames) and landmark_visible [T, K] bool; dataset, sequence_id, reference_sequence_id (str);
        start, reference_frame, index (int).
    `__getitem__` returns None for a clip that cannot be loaded (see the module docstring).
    """

    def __init__(self, sources: Sequence[ClipSource], config: ClipDatasetConfig) -> None:
        self.config = config
        self.landmark_layout: tuple[str, int] | None = None  # (layout, K) of every source, with config.landmarks
        self.without_landmarks: list[str] = []  # sequence ids dropped because they have no landmarks (C3)
        if config.landmarks:
            sources = self._landmark_sources(sources)
        dims = {}
        for source in sources:
            dims.setdefault(source.expression.shape[1], source.sequence_id)
        if len(dims) > 1:
            # Stacking a batch would fail later, inside a worker: say which rows disagree now.
            examples = ", ".join(f"D={d} (e.g. {seq})" for d, seq in sorted(dims.items()))
            raise ValueError(f"ClipDataset: rows have different expression code sizes: {examples}")
        self.sources: list[ClipSource] = list(sources)
        self.broken = BrokenClips()
        self.removed: list[str] = []  # "<sequence_id>: <problem>" for the sources check_sources removed
        self._build()

    def _landmark_sources(self, sources: Sequence[ClipSource]) -> list[ClipSource]:
        """The sources that carry landmarks, all of one layout (else ValueError naming the layouts found)."""
        kept = [s for s in sources if s.landmarks is not None]
        self.without_landmarks = [s.sequence_id for s in sources if s.landmarks is None]
        if self.without_landmarks:
            log.warning(
                "landmark training: %d of %d sequences have no landmarks and are left out (e.g. %s)",
                len(self.without_landmarks),
                len(sources),
                self.without_landmarks[0],
            )
        if not kept:
            raise ValueError(
                "ClipDataset: landmarks are needed (expression_mode = 'landmarks') but no manifest row has any; "
                "render with a datagen that writes manifest schema 1.1 landmarks, or add them to the rows"
            )
        layouts: dict[tuple[str, int], str] = {}
        for source in kept:
            layouts.setdefault((source.landmark_layout, source.num_landmarks), source.sequence_id)
        if len(layouts) > 1:
            found = ", ".join(f"{name!r} with {k} points (e.g. {seq})" for (name, k), seq in sorted(layouts.items()))
            raise ValueError(f"ClipDataset: rows have different landmark layouts: {found}; train on one layout")
        self.landmark_layout = next(iter(layouts))
        return kept

    def _build(self) -> None:
        frames, stride = self.config.frames, self.config.stride
        self.clips: list[ClipRef] = []
        self.too_short = 0  # sources with fewer than `frames` frames: no clips, still reference candidates
        for source in self.sources:
            if source.num_frames < frames:
                self.too_short += 1
                continue
            self.clips.extend(ClipRef(source, start) for start in range(0, source.num_frames - frames + 1, stride))
        self._by_identity: dict[str, list[ClipSource]] = {}
        for source in self.sources:
            self._by_identity.setdefault(source.identity, []).append(source)

    def __len__(self) -> int:
        return len(self.clips)

    def check_sources(self, workers: int = 8) -> int:
        """Probe every source's videos (exists, size, packet count = num_frames) and drop the bad sources.

        Demuxes without decoding, in `workers` threads (the work is file IO). Logs the first few bad sources with
        their reasons, keeps all of them in `self.removed`, rebuilds the clip list (clip indices change: group
        clips for the sampler afterwards) and returns how many sources were removed.
        """
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            problems = list(pool.map(_probe_source, self.sources))
        bad = [f"{s.sequence_id}: {p}" for s, p in zip(self.sources, problems, strict=True) if p is not None]
        for message in bad[:_MAX_MESSAGES]:
            log.warning("removing broken sequence %s", message)
        if len(bad) > _MAX_MESSAGES:
            log.warning("removing %d more broken sequences", len(bad) - _MAX_MESSAGES)
        self.removed.extend(bad)
        self.sources = [s for s, p in zip(self.sources, problems, strict=True) if p is None]
        self._build()
        return len(bad)

    def reference_for(self, index: int) -> tuple[ClipSource, int]:
        """(source, frame) of clip `index`'s reference: a pure function of (config.seed, index)."""
        source, start = self.clips[index]
        rng = np.random.default_rng([self.config.seed, index])
        if self.config.reference == "other_sequence" and source.world_frame is not None:
            # Only rows in the clip's world frame: the clip's cameras are made relative to the reference's camera.
            others = [
                s
                for s in self._by_identity[source.identity]
                if s.sequence_id != source.sequence_id and s.world_frame == source.world_frame
            ]
            if others:
                other = others[int(rng.integers(len(others)))]
                return other, int(rng.integers(other.num_frames))
        # Same sequence: a frame outside the clip when there is one, so the reference is not a copy of a target.
        end = start + self.config.frames
        outside = np.concatenate([np.arange(0, start), np.arange(end, source.num_frames)])
        candidates = outside if outside.size else np.arange(source.num_frames)
        return source, int(candidates[int(rng.integers(candidates.size))])

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not -len(self.clips) <= index < len(self.clips):
            raise IndexError(f"clip index {index} out of range for {len(self.clips)} clips")
        index = index % len(self.clips)
        try:
            return self.load(index)
        except Exception as err:  # noqa: BLE001 - one bad row must not kill a worker (and with it the run)
            self.broken.record(self.clips[index].source.sequence_id, f"{type(err).__name__}: {err}")
            return None

    def conditions(self, index: int) -> dict[str, Any]:
        """Everything of item `index` but its pixels: cameras, ray features, codes, landmarks, ids (no decoding)."""
        cfg = self.config
        source, start = self.clips[index]
        ref_source, ref_frame = self.reference_for(index)
        window = slice(start, start + cfg.frames)
        size = (source.height, source.width)
        K = torch.from_numpy(adjust_intrinsics(source.K[window], *size, cfg.height, cfg.width))
        c2w = viewmat_to_c2w(torch.from_numpy(np.ascontiguousarray(source.viewmat[window])))
        # The reference frame's own recorded camera and intrinsics (its row may have another image size).
        ref_size = (ref_source.height, ref_source.width)
        reference_K = torch.from_numpy(adjust_intrinsics(ref_source.K[ref_frame], *ref_size, cfg.height, cfg.width))
        reference_c2w = viewmat_to_c2w(torch.from_numpy(np.ascontiguousarray(ref_source.viewmat[ref_frame])))
        item: dict[str, Any] = {}
        if cfg.ray_features:
            item["ray_features"], item["reference_rays"] = camera_features(  # [1536, F, H/8, W/8], [1536, 1, ...]
                K, c2w, cfg.height, cfg.width, reference_c2w=reference_c2w, reference_K=reference_K
            )
        item |= {
            "K": K,  # [T, 3, 3]
            "c2w": c2w,  # [T, 4, 4]
            "reference_K": reference_K,  # [3, 3]
            "reference_c2w": reference_c2w,  # [4, 4]
            "expression": torch.from_numpy(np.ascontiguousarray(source.expression[window])),
            "head_pose": torch.from_numpy(np.ascontiguousarray(source.head_pose[window])),
        }
        if cfg.landmarks:
            points = adjust_points(source.landmarks[window], *size, cfg.height, cfg.width)
            item["landmarks"] = torch.from_numpy(points)  # [T, K, 2] pixels of the H x W frame
            item["landmark_visible"] = torch.from_numpy(np.ascontiguousarray(source.landmark_visible[window]))
        item.update(
            dataset=source.dataset,
            sequence_id=source.sequence_id,
            reference_sequence_id=ref_source.sequence_id,
            start=start,
            reference_frame=ref_frame,
            index=index,
        )
        return item

    def load(self, index: int) -> dict[str, Any]:
        """Item `index`; raises on broken data (what `__getitem__` turns into None)."""
        cfg = self.config
        source, start = self.clips[index]
        ref_source, ref_frame = self.reference_for(index)
        size = (source.height, source.width)
        clip = list(range(start, start + cfg.frames))
        same = ref_source is source
        rgb = decode_frames(source.rgb_path, clip + [ref_frame] if same else clip, size)  # [T(+1), h, w, 3]
        video = resize_crop_frames(rgb, cfg.height, cfg.width)  # [3, T(+1), H, W]
        if same:
            video, reference = video[:, : cfg.frames], video[:, cfg.frames :]
        else:
            ref = decode_frames(ref_source.rgb_path, [ref_frame], (ref_source.height, ref_source.width))
            reference = resize_crop_frames(ref, cfg.height, cfg.width)  # [3, 1, H, W]
        if source.normal_path is not None:
            normals = resize_crop_frames(decode_frames(source.normal_path, clip, size), cfg.height, cfg.width)
        else:  # no normal video: "no surface" everywhere (black), not n = 0 (mid-grey)
            normals = no_surface_normals(3, cfg.frames, height=cfg.height, width=cfg.width)
        return {
            "video": video.contiguous(),  # [3, T, H, W]
            "normals": normals.contiguous(),  # [3, T, H, W]
            "reference": reference.contiguous(),  # [3, 1, H, W]
            **self.conditions(index),
        }


def collate_clips(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Batch items, dropping the Nones of broken clips: tensors stacked, ints as an int64 tensor, strings listed.

    "skipped" = how many items were dropped (the main process's count of broken samples, since the BrokenClips
    counters live in the workers). Returns None when every item was broken.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    out: dict[str, Any] = {}
    for key, first in kept[0].items():
        values = [item[key] for item in kept]
        if isinstance(first, Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, int) and not isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    out["skipped"] = len(batch) - len(kept)
    return out


def group_by_dataset(clips: ClipDataset | Sequence[ClipRef]) -> dict[str, list[int]]:
    """Clip indices per manifest `dataset` name (what MixtureSampler takes), from a ClipDataset or its .clips."""
    refs = clips.clips if isinstance(clips, ClipDataset) else clips
    groups: dict[str, list[int]] = {}
    for index, ref in enumerate(refs):
        groups.setdefault(ref.source.dataset, []).append(index)
    return groups
