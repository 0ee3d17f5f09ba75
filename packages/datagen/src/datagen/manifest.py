"""The sequence manifest: a versioned Parquet schema, one row per sequence (one camera's video).

This schema is the contract between datagen and the model package, and the format real
captures (phone videos, multi-view studio rigs) are converted into; docs/manifest_schema.md
documents it for users. Layout of a dataset root ROOT:

    ROOT/<videos, anywhere>                   rgb_path / normal_path are relative to ROOT
    ROOT/manifest/parts/<id with / -> __>.parquet   one file per completed sequence
    ROOT/manifest/manifest.parquet            all rows sorted by sequence_id (`consolidate`)
    ROOT/manifest/info.json                   schema version, counts (`consolidate`)

Every file is written under a hidden temporary name and moved into place with os.replace, so
readers and resumed runs only ever see complete files.

Conventions (CONVENTIONS.md section 1): metres; K in pixels, row-major 3x3; viewmat is
world-to-camera, row-major 4x4, OpenCV camera axes (x right, y down, z forward); head_pose is
axis-angle (rad) + translation (m) in the avatar's canonical frame (+Y up, face looks down +Z).
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datagen.storage import Storage, open_storage
from datagen.video import VideoError, probe_video

__all__ = [
    "INFO_NAME",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "MODES",
    "PARTS_DIR",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_KEY",
    "TRAJECTORIES",
    "ManifestError",
    "ManifestRow",
    "ValidationReport",
    "completed_sequence_ids",
    "consolidate",
    "frame_timestamps",
    "RECORD_KEY",
    "part_keys",
    "part_name",
    "part_path",
    "read_part",
    "read_manifest",
    "read_rows",
    "rows_to_table",
    "table_to_rows",
    "validate_dataset",
    "video_problems",
    "write_part",
]

SCHEMA_VERSION = "1.1"
SCHEMA_VERSION_KEY = "factorportrait.manifest_version"
MANIFEST_DIR = "manifest"
PARTS_DIR = "manifest/parts"
MANIFEST_NAME = "manifest/manifest.parquet"
INFO_NAME = "manifest/info.json"

MODES = ("viewsweep", "dynamicsweep", "capture")
TRAJECTORIES = ("spin", "spiral", "static", "tracked")

# Segments start and end with a letter or digit and no id holds "__": then "/" <-> "__" is a
# one-to-one mapping between sequence ids and part file names, and no part file is hidden.
_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SEQUENCE_ID = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")

_TIMESTAMP_TOL = 1e-9
_ROTATION_TOL = 1e-4  # float32 rotations drift from orthonormal by ~1e-7; 1e-4 catches real mistakes


class ManifestError(ValueError):
    """A manifest row, table or dataset breaks the schema; the message says where and what."""


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.string(), nullable=False),
        pa.field("sequence_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("trajectory", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("sequence_index", pa.int32(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("rgb_path", pa.string(), nullable=False),
        pa.field("normal_path", pa.string(), nullable=True),
        pa.field("frame_index", pa.list_(pa.int32()), nullable=False),
        pa.field("timestamp", pa.list_(pa.float64()), nullable=False),
        pa.field("K", pa.list_(pa.list_(pa.float32(), 9)), nullable=False),
        pa.field("viewmat", pa.list_(pa.list_(pa.float32(), 16)), nullable=False),
        pa.field("expression_dim", pa.int32(), nullable=False),
        pa.field("expression", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("head_pose", pa.list_(pa.list_(pa.float32(), 6)), nullable=False),
        pa.field("plan", pa.string(), nullable=False),
        pa.field("created_by", pa.string(), nullable=False),
        # 1.1: the world frame the cameras live in, and per-frame 2D landmarks
        pa.field("world_frame", pa.string(), nullable=True),
        pa.field("num_landmarks", pa.int32(), nullable=False),
        pa.field("landmark_layout", pa.string(), nullable=True),
        pa.field("landmarks", pa.list_(pa.list_(pa.float32())), nullable=True),
        pa.field("landmark_visible", pa.list_(pa.list_(pa.bool_())), nullable=True),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION},
)


def frame_timestamps(frame_index: np.ndarray, fps: float) -> np.ndarray:
    """[T] int -> [T] float64 seconds, frame_index / fps: the one formula every producer uses."""
    return np.asarray(frame_index, np.float64) / float(fps)


def _parse_version(version: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", version.strip())
    if match is None:
        raise ManifestError(f"manifest schema version {version!r} is not of the form MAJOR.MINOR")
    return int(match.group(1)), int(match.group(2))


_MAJOR = _parse_version(SCHEMA_VERSION)[0]


def _version_problem(version: str) -> str | None:
    """Why this reader cannot read `version`, or None when it can."""
    try:
        major, _ = _parse_version(version)
    except ManifestError as e:
        return str(e)
    if major > _MAJOR:
        return (
            f"manifest schema version {version} is newer than this reader ({SCHEMA_VERSION}); "
            f"a new major version breaks compatibility: upgrade datagen/factorportrait to read it"
        )
    if major < _MAJOR:
        return f"manifest schema version {version} is an older major version than {SCHEMA_VERSION}; convert it first"
    return None


@dataclass(eq=False, kw_only=True)
class ManifestRow:
    """One sequence: one camera's video of one identity, with per-frame cameras and face codes.

    Per-frame arrays have T = num_frames rows. `expression_dim` is taken from `expression` when
    left as None. `normal_path` is None for captures without rendered normal maps.
    """

    sequence_id: str  # unique, "/"-separated, e.g. "demo-003/dynamicsweep/0007"
    dataset: str  # ViewSweep | DynamicSweep | PhoneCapture | StudioCapture | any name
    source: str  # synthetic | phone | studio | other
    identity: str
    camera_id: str  # "virtual" for synthetic renders
    mode: str  # one of MODES
    trajectory: str  # one of TRAJECTORIES
    sequence_index: int
    num_frames: int
    width: int
    height: int
    fps: float
    rgb_path: str  # relative to the dataset root, "/"-separated
    frame_index: np.ndarray  # [T] int32, 0..T-1: frame t of the videos
    timestamp: np.ndarray  # [T] float64 seconds, frame_index / fps
    K: np.ndarray  # [T, 3, 3] float32 pixels, row-major
    viewmat: np.ndarray  # [T, 4, 4] float32 world-to-camera, OpenCV axes
    expression: np.ndarray  # [T, D] float32 expression codes (D may be 0: none)
    head_pose: np.ndarray  # [T, 6] float32 axis-angle rad + translation m, canonical avatar frame
    created_by: str  # tool + version, e.g. "datagen 0.1.0"
    normal_path: str | None = None  # relative to the dataset root; None when there are no normal maps
    seed: int = -1  # -1 when no seed applies (captures)
    plan: str = "{}"  # JSON of the generating parameters
    expression_dim: int | None = None  # D; None -> expression.shape[1]
    schema_version: str = SCHEMA_VERSION
    # Rows of one identity with equal non-null world_frame share a world frame (their cameras are comparable);
    # None: the row's world frame is its own. Synthetic renders use the identity (the avatar's canonical frame).
    world_frame: str | None = None
    num_landmarks: int = 0  # K; 0: no landmarks (landmark_layout, landmarks, landmark_visible are None)
    landmark_layout: str | None = None  # e.g. "ibug68"
    landmarks: np.ndarray | None = None  # [T, 2K] float32 pixels (u0, v0, u1, v1, ...) in the video's pixel grid
    landmark_visible: np.ndarray | None = None  # [T, K] bool

    def __post_init__(self) -> None:
        if self.expression_dim is None:
            expr = np.asarray(self.expression)
            self.expression_dim = int(expr.shape[1]) if expr.ndim == 2 else -1
        if self.landmarks is not None:
            marks = np.asarray(self.landmarks)
            if marks.ndim == 3 and marks.shape[-1] == 2:  # [T, K, 2] -> the stored [T, 2K] (u0, v0, u1, v1, ...)
                self.landmarks = marks.reshape(marks.shape[0], -1)

    def problems(self) -> list[str]:
        """Every way this row breaks the schema, each as "field: what is wrong"."""
        out: list[str] = []
        T = self.num_frames

        if not isinstance(self.sequence_id, str) or not _SEQUENCE_ID.fullmatch(self.sequence_id):
            out.append(
                f"sequence_id: {self.sequence_id!r} must be '/'-separated segments of letters, digits, '.', '_', '-', "
                "each starting and ending with a letter or digit"
            )
        elif "__" in self.sequence_id:
            out.append(f"sequence_id: {self.sequence_id!r} must not contain '__' (it encodes '/' in part file names)")
        version_problem = _version_problem(str(self.schema_version))
        if version_problem:
            out.append(f"schema_version: {version_problem}")
        for name in ("dataset", "source", "identity", "camera_id", "created_by"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                out.append(f"{name}: must be a non-empty string, got {value!r}")
        if self.mode not in MODES:
            out.append(f"mode: {self.mode!r} is not one of {list(MODES)}")
        if self.trajectory not in TRAJECTORIES:
            out.append(f"trajectory: {self.trajectory!r} is not one of {list(TRAJECTORIES)}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < -1:
            out.append(f"seed: must be an integer >= -1 (-1: none), got {self.seed!r}")
        if not isinstance(self.sequence_index, (int, np.integer)) or self.sequence_index < 0:
            out.append(f"sequence_index: must be an integer >= 0, got {self.sequence_index!r}")
        for name in ("num_frames", "width", "height"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                out.append(f"{name}: must be an integer >= 1, got {value!r}")
        if not (isinstance(self.fps, (int, float, np.floating)) and math.isfinite(self.fps) and self.fps > 0):
            out.append(f"fps: must be finite and > 0, got {self.fps!r}")
        out += _path_problems("rgb_path", self.rgb_path, required=True)
        out += _path_problems("normal_path", self.normal_path, required=False)
        try:
            json.loads(self.plan)
        except (TypeError, ValueError) as e:
            out.append(f"plan: not valid JSON ({e})")
        if self.world_frame is not None and (not isinstance(self.world_frame, str) or not self.world_frame.strip()):
            out.append(f"world_frame: must be None or a non-empty string, got {self.world_frame!r}")
        out += self._landmark_problems()
        if any(p.startswith(("num_frames:", "fps:")) for p in out):
            return out  # the per-frame checks need a sane T and fps

        # Per-frame arrays: shape first, then values.
        expected = {
            "frame_index": (T,),
            "timestamp": (T,),
            "K": (T, 3, 3),
            "viewmat": (T, 4, 4),
            "expression": (T, self.expression_dim),
            "head_pose": (T, 6),
        }
        arrays: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            value = np.asarray(getattr(self, name))
            if value.shape != shape:
                out.append(f"{name}: shape {list(value.shape)}, expected {list(shape)} (num_frames={T})")
            elif not np.issubdtype(value.dtype, np.number):
                out.append(f"{name}: dtype {value.dtype} is not numeric")
            elif not np.isfinite(value).all():
                bad = np.argwhere(~np.isfinite(value))[0]
                out.append(f"{name}: non-finite value {value[tuple(bad)]} at index {bad.tolist()}")
            else:
                arrays[name] = value
        if "frame_index" in arrays:
            fi = arrays["frame_index"]
            if not np.array_equal(fi, np.arange(T)):
                first = int(np.argmax(fi != np.arange(T)))
                out.append(f"frame_index: must be 0..{T - 1}, got {fi[first]} at position {first}")
        if "timestamp" in arrays and "frame_index" in arrays:
            want = frame_timestamps(arrays["frame_index"], self.fps)
            err = np.abs(arrays["timestamp"].astype(np.float64) - want)
            if (err > _TIMESTAMP_TOL).any():
                i = int(np.argmax(err > _TIMESTAMP_TOL))  # the first bad frame
                out.append(
                    f"timestamp: {float(arrays['timestamp'][i])!r} at frame {i} != frame_index / fps = "
                    f"{float(want[i])!r} (fps={self.fps}, {int((err > _TIMESTAMP_TOL).sum())} frames off)"
                )
        if "K" in arrays:
            K = arrays["K"].astype(np.float64)
            bottom = np.abs(K[:, 2] - [0.0, 0.0, 1.0]).max(axis=1)
            if (bottom > 0).any() or (np.abs(K[:, 1, 0]) > 0).any():
                i = int(np.argmax((bottom > 0) | (np.abs(K[:, 1, 0]) > 0)))
                out.append(f"K: frame {i} is not upper-triangular with last row [0, 0, 1]: {K[i].tolist()}")
            elif (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
                i = int(np.argmax((K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0)))
                out.append(f"K: frame {i} has non-positive focal lengths fx={K[i, 0, 0]}, fy={K[i, 1, 1]}")
        if "viewmat" in arrays:
            V = arrays["viewmat"].astype(np.float64)
            R = V[:, :3, :3]
            ortho = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
            det = np.linalg.det(R)
            bottom = np.abs(V[:, 3] - [0.0, 0.0, 0.0, 1.0]).max(axis=1)
            bad = (bottom > 0) | (ortho > _ROTATION_TOL) | (np.abs(det - 1) > _ROTATION_TOL)
            if bad.any():
                i = int(np.argmax(bad))
                out.append(
                    f"viewmat: frame {i} is not a rigid world-to-camera transform (last row [0, 0, 0, 1], "
                    f"rotation with det +1): {np.round(V[i], 6).tolist()}"
                )
        return out

    def _landmark_problems(self) -> list[str]:
        K = self.num_landmarks
        if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 0:
            return [f"num_landmarks: must be an integer >= 0, got {K!r}"]
        if K == 0:
            return [
                f"{name}: must be None when num_landmarks is 0, got {type(getattr(self, name)).__name__}"
                for name in ("landmark_layout", "landmarks", "landmark_visible")
                if getattr(self, name) is not None
            ]
        out = []
        if not isinstance(self.landmark_layout, str) or not self.landmark_layout.strip():
            out.append(f"landmark_layout: must name the layout when num_landmarks = {K}, got {self.landmark_layout!r}")
        T = self.num_frames if isinstance(self.num_frames, (int, np.integer)) else -1
        for name, shape in (("landmarks", (T, 2 * K)), ("landmark_visible", (T, K))):
            value = getattr(self, name)
            if value is None:
                out.append(f"{name}: required when num_landmarks = {K}, got None")
                continue
            value = np.asarray(value)
            if value.shape != shape:
                out.append(f"{name}: shape {list(value.shape)}, expected {list(shape)} (num_frames={T}, K={K})")
            elif name == "landmarks":
                if not np.issubdtype(value.dtype, np.number):
                    out.append(f"landmarks: dtype {value.dtype} is not numeric")
                elif not np.isfinite(value).all():
                    bad = np.argwhere(~np.isfinite(value))[0]
                    out.append(f"landmarks: non-finite value {value[tuple(bad)]} at index {bad.tolist()}")
            elif value.dtype != np.bool_:
                out.append(f"landmark_visible: dtype {value.dtype}, expected bool")
        return out

    def validate(self, source: str) -> None:
        """Raises ManifestError naming `source`, the sequence and every problem found."""
        problems = self.problems()
        if problems:
            lines = "\n  ".join(problems)
            raise ManifestError(f"{source}: sequence {self.sequence_id!r} breaks the manifest schema:\n  {lines}")


def _path_problems(name: str, value: str | None, required: bool) -> list[str]:
    if value is None:
        return [f"{name}: required, got None"] if required else []
    if not isinstance(value, str) or not value:
        return [f"{name}: must be a non-empty string, got {value!r}"]
    posix = PurePosixPath(value)
    if "\\" in value or posix.is_absolute() or ".." in posix.parts or Path(value).is_absolute():
        return [f"{name}: {value!r} must be a relative '/'-separated path inside the dataset root"]
    return []


# --- Arrow conversion -------------------------------------------------------------------------

_SCALAR_COLUMNS = (
    "schema_version",
    "sequence_id",
    "dataset",
    "source",
    "identity",
    "camera_id",
    "mode",
    "trajectory",
    "seed",
    "sequence_index",
    "num_frames",
    "width",
    "height",
    "fps",
    "rgb_path",
    "normal_path",
    "expression_dim",
    "plan",
    "created_by",
    "world_frame",
    "num_landmarks",
    "landmark_layout",
)
# Nullable per-frame columns (1.1): name -> (numpy dtype, arrow value type); stored as list<list<value>>.
_OPTIONAL_FRAME_COLUMNS: dict[str, tuple[type, pa.DataType]] = {
    "landmarks": (np.float32, pa.float32()),
    "landmark_visible": (np.bool_, pa.bool_()),
}
# Per-frame columns: (numpy dtype, values per frame: None for a plain list, n for fixed_size_list<n>).
_FRAME_COLUMNS: dict[str, tuple[type, int | None]] = {
    "frame_index": (np.int32, None),
    "timestamp": (np.float64, None),
    "K": (np.float32, 9),
    "viewmat": (np.float32, 16),
    "expression": (np.float32, None),
    "head_pose": (np.float32, 6),
}
_FRAME_SHAPES = {"K": (3, 3), "viewmat": (4, 4), "head_pose": (6,)}


def _frame_column(rows: list[ManifestRow], name: str) -> pa.Array:
    """Concatenates one per-frame field of all rows into the column's list array."""
    dtype, size = _FRAME_COLUMNS[name]
    pa_type = MANIFEST_SCHEMA.field(name).type
    lengths, chunks, inner_lengths = [], [], []
    for row in rows:
        value = np.asarray(getattr(row, name), dtype=dtype)
        if name in ("frame_index", "timestamp"):
            value = value.reshape(-1)
        elif name == "expression":
            if value.ndim != 2:
                raise ManifestError(f"sequence {row.sequence_id!r}: expression must be [T, D], got {list(value.shape)}")
            inner_lengths.append(np.full(value.shape[0], value.shape[1], np.int32))
        else:
            if value.size % size:
                raise ManifestError(
                    f"sequence {row.sequence_id!r}: {name} of shape {list(value.shape)} is not [T, {size}] values"
                )
            value = value.reshape(-1, size)
        lengths.append(value.shape[0])
        chunks.append(value.reshape(-1))
    values = pa.array(np.concatenate(chunks) if chunks else np.zeros(0, dtype))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    if name == "expression":
        inner = np.concatenate(inner_lengths) if inner_lengths else np.zeros(0, np.int32)
        inner_offsets = pa.array(np.concatenate([[0], np.cumsum(inner)]).astype(np.int32))
        values = pa.ListArray.from_arrays(inner_offsets, values, type=pa_type.value_type)
    elif size is not None:
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return pa.ListArray.from_arrays(offsets, values, type=pa_type)


def _optional_frame_column(rows: list[ManifestRow], name: str) -> pa.Array:
    """A nullable [T][n] per-frame column: rows with None become nulls."""
    dtype, value_type = _OPTIONAL_FRAME_COLUMNS[name]
    outer, inner, chunks, valid = [0], [0], [], []
    for row in rows:
        value = getattr(row, name)
        valid.append(value is not None)
        if value is None:
            outer.append(outer[-1])
            continue
        value = np.asarray(value, dtype=dtype)
        if value.ndim != 2:
            raise ManifestError(f"sequence {row.sequence_id!r}: {name} must be [T, n], got {list(value.shape)}")
        outer.append(outer[-1] + value.shape[0])
        inner.extend(inner[-1] + value.shape[1] * np.arange(1, value.shape[0] + 1))
        chunks.append(value.reshape(-1))
    values = pa.array(np.concatenate(chunks) if chunks else np.zeros(0, dtype), type=value_type)
    frames = pa.ListArray.from_arrays(pa.array(np.asarray(inner, np.int32)), values)
    mask = pa.array([not v for v in valid], type=pa.bool_())
    return pa.ListArray.from_arrays(
        pa.array(np.asarray(outer, np.int32)), frames, type=pa.list_(pa.list_(value_type)), mask=mask
    )


def _split_optional_frames(column: pa.ChunkedArray, name: str, sequence_ids: list[str]) -> list[np.ndarray | None]:
    """A nullable [T][n] per-frame column -> one [T, n] array (or None) per row."""
    dtype, value_type = _OPTIONAL_FRAME_COLUMNS[name]
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.list_(pa.list_(value_type)))
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    out: list[np.ndarray | None] = []
    for i in range(len(array)):
        if nulls[i]:
            out.append(None)
            continue
        frames = array[i].values  # list<value> of this row, one entry per frame
        lengths = frames.value_lengths().to_numpy(zero_copy_only=False)
        values = frames.flatten().to_numpy(zero_copy_only=False).astype(dtype)
        if len(lengths) and (lengths != lengths[0]).any():
            sizes = sorted(set(lengths.tolist()))
            raise ManifestError(f"sequence {sequence_ids[i]!r}: {name} differs in length between frames ({sizes})")
        width = int(lengths[0]) if len(lengths) else 0
        out.append(values.reshape(len(lengths), width).copy())
    return out


def rows_to_table(rows: list[ManifestRow]) -> pa.Table:
    """Rows -> a table of MANIFEST_SCHEMA (with its version metadata), in the given order."""
    columns: dict[str, pa.Array] = {}
    for name in MANIFEST_SCHEMA.names:
        if name in _OPTIONAL_FRAME_COLUMNS:
            columns[name] = _optional_frame_column(rows, name)
        elif name in _FRAME_COLUMNS:
            columns[name] = _frame_column(rows, name)
        else:
            f = MANIFEST_SCHEMA.field(name)
            values = [getattr(row, name) for row in rows]
            for row, value in zip(rows, values, strict=True):
                if value is None and not f.nullable:
                    raise ManifestError(f"sequence {row.sequence_id!r}: {name} is None but the column is required")
            try:
                columns[name] = pa.array(values, type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
                raise ManifestError(f"column {name}: cannot store {values[:5]} as {f.type}: {e}") from e
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def _split_frames(column: pa.ChunkedArray, name: str, sequence_ids: list[str]) -> list[np.ndarray]:
    """A per-frame list column -> one numpy array per row, with the frame shape restored."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    try:
        # Plain Parquet writers (duckdb, pandas) store fixed-size lists as lists: restore the type.
        array = array.cast(MANIFEST_SCHEMA.field(name).type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ManifestError(f"column {name} of type {array.type} is not {MANIFEST_SCHEMA.field(name).type}: {e}") from e
    if array.null_count:
        i = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ManifestError(f"sequence {sequence_ids[i]!r}: {name} is null")
    lengths = array.value_lengths().to_numpy(zero_copy_only=False)
    flat = array.flatten()  # respects slicing, unlike .values
    dtype, size = _FRAME_COLUMNS[name]
    out: list[np.ndarray] = []
    if name == "expression":
        inner_lengths = flat.value_lengths().to_numpy(zero_copy_only=False)
        values = flat.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        frame_start, value_start = 0, 0
        for i, n in enumerate(lengths):
            per_frame = inner_lengths[frame_start : frame_start + n]
            total = int(per_frame.sum())
            chunk = values[value_start : value_start + total]
            if n and (per_frame != per_frame[0]).any():
                raise ManifestError(
                    f"sequence {sequence_ids[i]!r}: expression codes differ in length between frames "
                    f"({sorted(set(per_frame.tolist()))})"
                )
            dim = int(per_frame[0]) if n else 0
            out.append(chunk.reshape(n, dim).copy())
            frame_start += n
            value_start += total
        return out
    if size is not None:
        flat = flat.flatten()
    values = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    shape = _FRAME_SHAPES.get(name, ())
    per_row = size or 1
    start = 0
    for n in lengths:
        out.append(values[start * per_row : (start + n) * per_row].reshape((n, *shape)).copy())
        start += n
    return out


def table_to_rows(table: pa.Table) -> list[ManifestRow]:
    """A manifest table -> rows (exact for the float32 columns); the table must have every column."""
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ManifestError(f"manifest table lacks the columns {missing}")
    sequence_ids = table.column("sequence_id").to_pylist()
    scalars = {name: table.column(name).to_pylist() for name in _SCALAR_COLUMNS}
    frames = {name: _split_frames(table.column(name), name, sequence_ids) for name in _FRAME_COLUMNS}
    frames.update(
        {name: _split_optional_frames(table.column(name), name, sequence_ids) for name in _OPTIONAL_FRAME_COLUMNS}
    )
    rows = []
    for i in range(table.num_rows):
        kwargs = {name: scalars[name][i] for name in _SCALAR_COLUMNS}
        kwargs.update({name: frames[name][i] for name in frames})
        rows.append(ManifestRow(**kwargs))
    return rows


# --- Files --------------------------------------------------------------------------------------

#: Part files carry what their writer recorded (the job's settings, the plan key, each video's size, frame count
#: and sha256) in this schema-metadata key; resume checks a part against it. The manifest never holds it.
RECORD_KEY = "factorportrait.datagen.record"


def _write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Calls write(tmp_path) for a hidden temporary file beside `path`, then renames it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def part_name(sequence_id: str) -> str:
    """manifest/parts/<sequence_id with '/' replaced by '__'>.parquet, relative to the root."""
    return f"{PARTS_DIR}/{sequence_id.replace('/', '__')}.parquet"


def part_path(root: str | os.PathLike[str], sequence_id: str) -> Path:
    """ROOT/manifest/parts/<sequence_id with '/' replaced by '__'>.parquet"""
    return Path(root) / part_name(sequence_id)


def write_part(
    root: str | os.PathLike[str] | Storage, row: ManifestRow, record: dict[str, Any] | None = None
) -> Path | str:
    """Validates `row` and writes it as its sequence's part file (atomically); returns its path (or URI).

    `record` (JSON-serialisable) is stored in the part's schema metadata under RECORD_KEY."""
    store = open_storage(root)
    row.validate(source=f"write_part({store})")
    table = rows_to_table([row])
    if record is not None:
        metadata = {**(table.schema.metadata or {}), RECORD_KEY.encode(): json.dumps(record, sort_keys=True).encode()}
        table = table.replace_schema_metadata(metadata)
    if not store.remote:
        return _write_atomic(part_path(store.local_root, row.sequence_id), lambda tmp: pq.write_table(table, tmp))
    store.write_table(part_name(row.sequence_id), table)
    return store.url(part_name(row.sequence_id))


def _is_part_name(name: str) -> bool:
    # Temporary files are hidden (".name.xxx.tmp"); skip anything else that looks unfinished too.
    return name.endswith(".parquet") and not name.startswith(".") and ".tmp" not in name


def _part_files(root: str | os.PathLike[str]) -> list[Path]:
    parts = Path(root) / PARTS_DIR
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir() if _is_part_name(p.name))


def part_keys(root: str | os.PathLike[str] | Storage) -> dict[str, str]:
    """{sequence id: part key relative to the root} of every part file."""
    store = open_storage(root)
    if not store.remote:
        return {p.name[: -len(".parquet")].replace("__", "/"): f"{PARTS_DIR}/{p.name}" for p in _part_files(store.uri)}
    out = {}
    for key in sorted(store.list_files(PARTS_DIR)):
        name = key.rsplit("/", 1)[-1]
        if _is_part_name(name):
            out[name[: -len(".parquet")].replace("__", "/")] = key
    return out


def completed_sequence_ids(root: str | os.PathLike[str] | Storage) -> set[str]:
    """Ids of the sequences that have a part file (the unit a resumed run checks and skips)."""
    return set(part_keys(root))


def read_part(root: str | os.PathLike[str] | Storage, key: str) -> tuple[pa.Table, dict[str, Any] | None]:
    """A part file's table (as written) and its writer's record (None for parts written before records)."""
    store = open_storage(root)
    try:
        table = store.read_table(key)
    except (OSError, pa.ArrowInvalid) as e:
        raise ManifestError(f"cannot read manifest part {store.url(key)}: {e}") from e
    raw = (table.schema.metadata or {}).get(RECORD_KEY.encode())
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        record = None  # an unreadable record proves nothing: treated like a part without one
    return table, record


def _table_version(table: pa.Table, source: str) -> str:
    """The one schema version of a table: from its metadata, else from the schema_version column."""
    metadata = table.schema.metadata or {}
    versions: set[str] = set()
    if SCHEMA_VERSION_KEY.encode() in metadata:
        versions.add(metadata[SCHEMA_VERSION_KEY.encode()].decode())
    if "schema_version" in table.column_names:
        versions |= {v for v in table.column("schema_version").unique().to_pylist() if v is not None}
    if not versions:
        raise ManifestError(
            f"{source}: no manifest schema version (neither the {SCHEMA_VERSION_KEY!r} schema metadata nor a "
            "schema_version column); is this a FactorPortrait manifest?"
        )
    for version in sorted(versions):
        problem = _version_problem(version)
        if problem:
            raise ManifestError(f"{source}: {problem}")
    return max(versions, key=_parse_version)


def _normalise(table: pa.Table, source: str) -> pa.Table:
    """Checks the version and required columns and casts known columns to MANIFEST_SCHEMA's types.

    Extra columns (added by a newer minor version, or by the user) are kept after the known ones.
    Tables written by other tools (pandas, duckdb) lose nullability flags and metadata: both
    are restored here.
    """
    version = _table_version(table, source)
    if _parse_version(version) < (1, 1):
        table = _upgrade_1_0(table)
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ManifestError(f"{source}: missing columns {missing}")
    columns, fields = [], []
    for f in MANIFEST_SCHEMA:
        column = table.column(f.name)
        if not f.nullable and column.null_count:
            raise ManifestError(f"{source}: column {f.name!r} has {column.null_count} null values")
        try:
            columns.append(column.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ManifestError(f"{source}: column {f.name!r} of type {column.type} is not {f.type}: {e}") from e
        fields.append(f)
    for name in table.column_names:
        if name not in MANIFEST_SCHEMA.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=MANIFEST_SCHEMA.metadata))


def _upgrade_1_0(table: pa.Table) -> pa.Table:
    """A 1.0 table as 1.1 reads it: world_frame = identity for synthetic rows (a demo avatar renders all its
    sequences in its canonical frame) and null otherwise; no landmarks. The rows then say schema_version 1.1."""
    n = table.num_rows
    if "world_frame" not in table.column_names and {"identity", "source"} <= set(table.column_names):
        identity = table.column("identity").to_pylist()
        source = table.column("source").to_pylist()
        world = [i if s == "synthetic" else None for i, s in zip(identity, source, strict=True)]
        table = table.append_column("world_frame", pa.array(world, pa.string()))
    defaults = {
        "num_landmarks": pa.array(np.zeros(n, np.int32)),
        "landmark_layout": pa.nulls(n, pa.string()),
        "landmarks": pa.nulls(n, pa.list_(pa.list_(pa.float32()))),
        "landmark_visible": pa.nulls(n, pa.list_(pa.list_(pa.bool_()))),
    }
    for name, column in defaults.items():
        if name not in table.column_names:
            table = table.append_column(name, column)
    if "schema_version" in table.column_names:
        index = table.column_names.index("schema_version")
        table = table.set_column(index, "schema_version", pa.array([SCHEMA_VERSION] * n, pa.string()))
    return table


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ManifestError(f"cannot read manifest file {path}: {e}") from e


def _read_parts_with_records(root: str | os.PathLike[str] | Storage) -> tuple[pa.Table | None, list[dict | None]]:
    store = open_storage(root)
    keys = part_keys(store)
    if not keys:
        return None, []
    tables, records = [], []
    for key in keys.values():
        table, record = read_part(store, key)
        tables.append(_normalise(table, store.url(key)))
        records.append(record)
    return pa.concat_tables(tables, promote_options="default"), records


def _read_parts(root: str | os.PathLike[str] | Storage) -> pa.Table | None:
    return _read_parts_with_records(root)[0]


def _describe_records(records: list[dict | None], modes: list[str]) -> dict[str, Any]:
    """info.json's account of the settings behind the rows: one entry per distinct job config."""
    groups: dict[str, dict[str, Any]] = {}
    legacy = 0
    for record, mode in zip(records, modes, strict=True):
        config = (record or {}).get("config")
        if config is None:
            legacy += 1
            continue
        key = json.dumps(config, sort_keys=True)
        entry = groups.setdefault(key, {"config": config, "num_rows": 0, "modes": set()})
        entry["num_rows"] += 1
        entry["modes"].add(mode)
    described = [{**g, "modes": sorted(g["modes"])} for g in groups.values()]
    out: dict[str, Any] = {}
    if len(described) == 1 and not legacy:
        out["render_config"] = described[0]["config"]  # every row was rendered with these settings
    else:
        out["render_configs"] = described  # each distinct settings, with how many rows of which modes
    if legacy:
        out["rows_without_render_record"] = legacy
    return out


def consolidate(root: str | os.PathLike[str] | Storage, extra_info: dict[str, Any] | None = None) -> Path | str:
    """Merges all parts into ROOT/manifest/manifest.parquet (sorted by sequence_id) and writes info.json.

    info.json holds the schema version, row and frame counts per dataset and in total, the identities and
    the render settings the rows were made with (from the parts' records), plus the keys of `extra_info`
    (which may not replace those). Each file is written once, as a new file (object) moved onto its final
    name. Returns the manifest's path (or URI).
    """
    store = open_storage(root)
    table, records = _read_parts_with_records(store)
    if table is None:
        raise ManifestError(f"consolidate({store}): no part files under {store.url(PARTS_DIR)}")
    order = pc.sort_indices(table, sort_keys=[("sequence_id", "ascending")]).to_pylist()
    table = table.take(order)
    records = [records[i] for i in order]
    ids = table.column("sequence_id").to_pylist()
    duplicates = sorted(k for k, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ManifestError(f"consolidate({store}): duplicate sequence ids {duplicates[:10]}")

    num_frames = table.column("num_frames").to_pylist()
    datasets: dict[str, dict[str, int]] = {}
    for name, n in zip(table.column("dataset").to_pylist(), num_frames, strict=True):
        entry = datasets.setdefault(name, {"num_rows": 0, "total_frames": 0})
        entry["num_rows"] += 1
        entry["total_frames"] += n
    info: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "num_rows": table.num_rows,
        "total_frames": int(sum(num_frames)),
        "datasets": dict(sorted(datasets.items())),
        "manifest": "manifest.parquet",
    }
    if any(r is not None for r in records):
        info["avatars"] = sorted(set(table.column("identity").to_pylist()))
        info.update(_describe_records(records, table.column("mode").to_pylist()))
    clash = sorted(set(extra_info or {}) & set(info))
    if clash:
        raise ValueError(f"consolidate({store}): extra_info may not replace the computed keys {clash}")
    info.update(extra_info or {})
    info_text = json.dumps(info, indent=2, sort_keys=False) + "\n"

    if not store.remote:
        manifest = _write_atomic(store.local(MANIFEST_NAME), lambda tmp: pq.write_table(table, tmp))
        _write_atomic(store.local(INFO_NAME), lambda tmp: tmp.write_text(info_text, "utf-8"))
        return manifest
    store.write_table(MANIFEST_NAME, table, via_temporary=True)
    store.write_bytes(INFO_NAME, info_text.encode(), via_temporary=True)
    return store.url(MANIFEST_NAME)


def read_manifest(root: str | os.PathLike[str] | Storage) -> pa.Table:
    """The manifest of a dataset root (manifest.parquet, else its parts) or of a .parquet file.

    Raises ManifestError when there is none, when its schema version is missing or of another
    major version, or when required columns are missing. `root` may be an s3:// or gs:// URI.
    """
    store = open_storage(root)
    if store.remote:
        if store.size(MANIFEST_NAME) is not None:
            return _normalise(store.read_table(MANIFEST_NAME), store.url(MANIFEST_NAME))
        table = _read_parts(store)
        if table is None:
            raise ManifestError(f"no manifest under {store}: neither {MANIFEST_NAME} nor part files in {PARTS_DIR}/")
        return table.sort_by("sequence_id")
    root = Path(store.uri)
    if root.is_file():
        return _normalise(_read_parquet(root), str(root))
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        return _normalise(_read_parquet(manifest), str(manifest))
    table = _read_parts(root)
    if table is None:
        raise ManifestError(f"no manifest under {root}: neither {MANIFEST_NAME} nor part files in {PARTS_DIR}/")
    return table.sort_by("sequence_id")


def read_rows(root: str | os.PathLike[str] | Storage) -> list[ManifestRow]:
    """read_manifest as ManifestRow objects."""
    return table_to_rows(read_manifest(root))


# --- Validation ---------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    """What validate_dataset found: one error string per problem, each naming its sequence."""

    root: str
    rows_checked: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = f"{self.root}: {self.rows_checked} sequence{'' if self.rows_checked == 1 else 's'} checked, "
        if self.ok:
            return head + "no problems"
        lines = "\n".join(f"  - {e}" for e in self.errors)
        return head + f"{len(self.errors)} problems:\n{lines}"


def validate_dataset(root: str | os.PathLike[str] | Storage, decode: bool = True) -> ValidationReport:
    """Checks every row of ROOT's manifest against the schema and its videos.

    Videos must exist, hold exactly num_frames frames of width x height at the row's fps.
    decode=True decodes every frame (catches truncated or corrupt data); decode=False only
    counts packets, which is much faster. On object storage each video is downloaded to a
    temporary file, checked and deleted.
    """
    store = open_storage(root)
    report = ValidationReport(root=str(store))
    try:
        rows = read_rows(store)
    except ManifestError as e:
        report.errors.append(f"<manifest>: {e}")
        return report

    counts = Counter(row.sequence_id for row in rows)
    for sequence_id, n in sorted(counts.items()):
        if n > 1:
            report.errors.append(f"{sequence_id}: sequence_id appears {n} times")

    for row in rows:
        report.rows_checked += 1
        report.errors += [f"{row.sequence_id}: {p}" for p in row.problems()]
        for name in ("rgb_path", "normal_path"):
            relative = getattr(row, name)
            if relative is None or _path_problems(name, relative, required=True):
                continue  # absent by design, or already reported
            report.errors += [f"{row.sequence_id}: {p}" for p in _video_problems(store, name, relative, row, decode)]
    return report


def _video_problems(store: Storage, name: str, relative: str, row: ManifestRow, decode: bool) -> list[str]:
    if store.remote:
        import tempfile

        if store.size(relative) is None:
            return [f"{name}: video {relative!r} does not exist under {store}"]
        with tempfile.TemporaryDirectory(prefix="datagen-validate-") as tmp:
            local = store.download(relative, Path(tmp) / PurePosixPath(relative).name)
            return video_problems(local, name, relative, row, decode, where=str(store))
    return video_problems(store.local(relative), name, relative, row, decode, where=str(store))


def video_problems(path: Path, name: str, relative: str, row: ManifestRow, decode: bool, where: str = "") -> list[str]:
    """What is wrong with the local video `path` as `row`'s `name` video (empty: nothing)."""
    if not path.is_file():
        return [f"{name}: video {relative!r} does not exist under {where or path.parent}"]
    try:
        info = probe_video(path, decode=decode)
    except (VideoError, OSError) as e:
        return [f"{name}: video {relative!r} cannot be read: {e}"]
    out = []
    if info.num_frames != row.num_frames:
        out.append(f"{name}: video {relative!r} has {info.num_frames} frames, num_frames is {row.num_frames}")
    if (info.width, info.height) != (row.width, row.height):
        out.append(f"{name}: video {relative!r} is {info.width}x{info.height}, the row says {row.width}x{row.height}")
    if not math.isclose(info.fps, float(row.fps), rel_tol=1e-3):
        out.append(f"{name}: video {relative!r} plays at {info.fps:.6g} fps, the row says {row.fps:.6g}")
    return out
