"""Read the sequence manifest of a dataset root with pyarrow alone (packages/datagen/docs/manifest_schema.md).

The Parquet manifest is the only contract between the data generator and training: this module never imports
`datagen`. Layout: ROOT/manifest/manifest.parquet (all rows), else ROOT/manifest/parts/*.parquet (one row per
finished sequence, before consolidation; hidden temporary files are skipped). Paths in rows are relative to ROOT.

Versioning: the version MAJOR.MINOR sits in the schema metadata (key `factorportrait.manifest_version`) and in the
`schema_version` column. This reader reads major version 1 (any minor: minors only add columns) and rejects a
missing version or any other major, naming the file and the version, rather than guess.

Schema 1.1 adds `world_frame` (rows of one identity with equal non-null values share a world frame, so a training
reference may come from another of those rows) and landmarks (`num_landmarks`, `landmark_layout`, `landmarks`
[T][2K] pixels, `landmark_visible` [T][K]). A 1.0 file reads as 1.1 does in datagen: `world_frame` = identity for
`source == "synthetic"` rows (the generator always rendered an identity in its avatar's canonical frame), else
null; no landmarks.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["SUPPORTED_MAJOR", "VERSION_KEY", "ClipSource", "ManifestReadError", "read_manifest_rows"]

log = logging.getLogger(__name__)

VERSION_KEY = "factorportrait.manifest_version"
SUPPORTED_MAJOR = 1
MANIFEST_FILE = Path("manifest") / "manifest.parquet"
PARTS_DIR = Path("manifest") / "parts"

# Columns this reader needs; other columns (e.g. added by a newer minor version) are ignored.
_SCALAR_COLUMNS = (
    "sequence_id",
    "dataset",
    "identity",
    "camera_id",
    "num_frames",
    "width",
    "height",
    "fps",
    "rgb_path",
    "normal_path",
    "expression_dim",
)
_COLUMNS = (*_SCALAR_COLUMNS, "K", "viewmat", "expression", "head_pose")
# Columns read when present: `source` (1.0 and 1.1, used for the 1.0 world_frame default) and the 1.1 additions.
_OPTIONAL_SCALARS = ("source", "world_frame", "num_landmarks", "landmark_layout")
_OPTIONAL_COLUMNS = (*_OPTIONAL_SCALARS, "landmarks", "landmark_visible")
_MAX_LOGGED = 5


class ManifestReadError(ValueError):
    """The manifest cannot be read: missing, unreadable, of an unsupported schema version or missing columns."""


@dataclass(eq=False)
class ClipSource:
    """One manifest row (one camera's video of one identity), with its per-frame arrays as numpy."""

    root: Path  # absolute dataset root
    sequence_id: str
    dataset: str
    identity: str
    camera_id: str
    num_frames: int  # T
    width: int  # of the stored video frames (K refers to this size)
    height: int
    fps: float
    rgb_path: Path  # absolute
    normal_path: Path | None  # absolute; None when the row has no normal-map video
    K: np.ndarray  # [T, 3, 3] float32, pixels
    viewmat: np.ndarray  # [T, 4, 4] float32, world-to-camera, OpenCV axes
    expression: np.ndarray  # [T, D] float32
    head_pose: np.ndarray  # [T, 6] float32, axis-angle (rad) + translation (m)
    world_frame: str | None = None  # rows of one identity with equal non-null world_frame share a world frame
    landmark_layout: str | None = None  # e.g. "ibug68"; None when the row has no landmarks
    landmarks: np.ndarray | None = None  # [T, K, 2] float32 pixels (u, v) in the stored frames' grid
    landmark_visible: np.ndarray | None = None  # [T, K] bool

    @property
    def num_landmarks(self) -> int:
        return 0 if self.landmarks is None else int(self.landmarks.shape[1])

    def __repr__(self) -> str:  # the default repr would print every per-frame array
        return (
            f"ClipSource({self.sequence_id!r}, dataset={self.dataset!r}, identity={self.identity!r}, "
            f"T={self.num_frames}, {self.width}x{self.height})"
        )


def _check_version(table: pa.Table, path: Path) -> str:
    """The table's schema version (metadata and column must agree on a supported major), else ManifestReadError."""
    versions: set[str] = set()
    metadata = table.schema.metadata or {}
    if VERSION_KEY.encode() in metadata:
        versions.add(metadata[VERSION_KEY.encode()].decode("utf-8", "replace"))
    if "schema_version" in table.column_names:
        # pandas / duckdb drop the schema metadata on a rewrite: the column still carries the version.
        versions |= {v for v in pc.unique(table.column("schema_version")).to_pylist() if v is not None}
    if not versions:
        raise ManifestReadError(
            f"{path}: no manifest schema version (neither the {VERSION_KEY!r} schema metadata nor a schema_version "
            "column); is this a FactorPortrait manifest?"
        )
    parsed: dict[str, tuple[int, int]] = {}
    for version in sorted(versions):
        match = re.fullmatch(r"(\d+)\.(\d+)", version.strip())
        if match is None:
            raise ManifestReadError(f"{path}: manifest schema version {version!r} is not of the form MAJOR.MINOR")
        major = int(match.group(1))
        parsed[version] = (major, int(match.group(2)))
        if major > SUPPORTED_MAJOR:
            raise ManifestReadError(
                f"{path}: manifest schema version {version} is newer than this reader (major {SUPPORTED_MAJOR}); "
                "a new major version breaks compatibility: upgrade factorportrait to read it"
            )
        if major < SUPPORTED_MAJOR:
            raise ManifestReadError(
                f"{path}: manifest schema version {version} is an older major version than this reader "
                f"(major {SUPPORTED_MAJOR}); convert the manifest first"
            )
    return max(parsed, key=parsed.__getitem__)


def _read_table(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ManifestReadError(f"cannot read manifest file {path}: {err}") from err
    _check_version(table, path)
    missing = [name for name in _COLUMNS if name not in table.column_names]
    if missing:
        raise ManifestReadError(f"{path}: missing columns {missing}")
    return table.select([*_COLUMNS, *(name for name in _OPTIONAL_COLUMNS if name in table.column_names)])


def _manifest_tables(root: Path) -> list[tuple[Path, pa.Table]]:
    manifest = root / MANIFEST_FILE
    if manifest.is_file():
        return [(manifest, _read_table(manifest))]
    parts_dir = root / PARTS_DIR
    # Writers publish parts by renaming hidden temporary files: those are never read.
    parts = sorted(p for p in parts_dir.glob("*.parquet") if not p.name.startswith(".")) if parts_dir.is_dir() else []
    if not parts:
        raise ManifestReadError(f"no manifest under {root}: neither {MANIFEST_FILE} nor part files in {PARTS_DIR}/")
    return [(p, _read_table(p)) for p in parts]


def _split_per_frame(column: pa.ChunkedArray, width: np.ndarray) -> list[np.ndarray | str]:
    """Per row: [n_frames, width_row] float32, or a string saying why the row's column is malformed.

    `column` is list<list or fixed_size_list<float>> (one entry per frame); width [rows] is the expected inner
    length per row. Vectorised over the whole column: converting 10^5 frames through Python lists takes minutes.
    """
    outer = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n_frames = pc.fill_null(pc.list_value_length(outer), 0).to_numpy(zero_copy_only=False).astype(np.int64)  # [rows]
    outer_nulls = outer.is_null().to_numpy(zero_copy_only=False)
    inner = outer.flatten()  # one entry per frame of every row, nulls' contents excluded
    inner_len = pc.list_value_length(inner)  # [frames], null for a null frame
    inner_null = inner_len.is_null().to_numpy(zero_copy_only=False)
    inner_len = pc.fill_null(inner_len, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    values = inner.flatten().cast(pa.float32())
    values_np = values.to_numpy(zero_copy_only=False)  # nulls come out as NaN
    value_nulls = values.null_count > 0
    frame_start = np.concatenate([[0], np.cumsum(n_frames)])  # [rows + 1]
    value_start = np.concatenate([[0], np.cumsum(np.maximum(inner_len, 0))])  # [frames + 1]
    out: list[np.ndarray | str] = []
    for row in range(len(n_frames)):
        if outer_nulls[row]:
            out.append("is null")
            continue
        lo, hi = frame_start[row], frame_start[row + 1]
        lengths = inner_len[lo:hi]
        if inner_null[lo:hi].any():
            out.append(f"has a null entry at frame {int(np.flatnonzero(inner_null[lo:hi])[0])}")
            continue
        bad = np.flatnonzero(lengths != width[row])
        if bad.size:
            out.append(f"frame {int(bad[0])} has {int(lengths[bad[0]])} values, expected {int(width[row])}")
            continue
        chunk = values_np[value_start[lo] : value_start[hi]]
        if value_nulls and np.isnan(chunk).any():
            out.append("holds null or NaN values")
            continue
        # A copy: writable (torch.from_numpy warns on read-only views) and free of the whole column's buffer.
        out.append(np.array(chunk, np.float32).reshape(hi - lo, int(width[row])))
    return out


def read_manifest_rows(
    root: str | os.PathLike[str], problems: list[str] | None = None, datasets: list[str] | None = None
) -> list[ClipSource]:
    """The rows of dataset root `root` as ClipSources, in manifest order (sorted by sequence_id when consolidated).

    Raises ManifestReadError when there is no manifest, when it cannot be read, when its schema version is missing
    or of another major version, or when required columns are missing. Rows whose per-frame arrays do not hold
    `num_frames` well-formed entries are skipped, not raised: the first few are logged, and every one is
    appended to `problems` (when given) as "<sequence_id>: <what>". `datasets` keeps only rows of those datasets.
    """
    root = Path(root).resolve()
    sources: list[ClipSource] = []
    skipped: list[str] = []
    for path, table in _manifest_tables(root):
        if datasets is not None:
            table = table.filter(pc.is_in(table.column("dataset"), pa.array(datasets, pa.string())))
        if table.num_rows == 0:
            continue
        plain = {name: table.column(name).to_pylist() for name in _SCALAR_COLUMNS}
        rows = table.num_rows
        for name in _OPTIONAL_SCALARS:
            plain[name] = table.column(name).to_pylist() if name in table.column_names else [None] * rows
        if "world_frame" not in table.column_names:  # schema 1.0: one world frame per synthetic identity
            plain["world_frame"] = [
                ident if src == "synthetic" else None
                for ident, src in zip(plain["identity"], plain["source"], strict=True)
            ]
        marks = _landmark_arrays(table, plain["num_landmarks"])
        dims = np.array([d if d is not None else -1 for d in plain["expression_dim"]], np.int64)
        per_frame = {
            "K": _split_per_frame(table.column("K"), np.full(rows, 9)),
            "viewmat": _split_per_frame(table.column("viewmat"), np.full(rows, 16)),
            "expression": _split_per_frame(table.column("expression"), dims),
            "head_pose": _split_per_frame(table.column("head_pose"), np.full(rows, 6)),
        }
        for i in range(rows):
            seq = plain["sequence_id"][i]
            why = _row_problem(plain, per_frame, i) or marks[i][3]
            if why is None and marks[i][1] is not None and marks[i][1].shape[0] != plain["num_frames"][i]:
                why = f"column 'landmarks' has {marks[i][1].shape[0]} frames, num_frames says {plain['num_frames'][i]}"
            if why is not None:
                skipped.append(f"{seq}: {why} ({path.name})")
                continue
            normal = plain["normal_path"][i]
            sources.append(
                ClipSource(
                    root=root,
                    sequence_id=seq,
                    dataset=plain["dataset"][i],
                    identity=plain["identity"][i],
                    camera_id=plain["camera_id"][i],
                    num_frames=int(plain["num_frames"][i]),
                    width=int(plain["width"][i]),
                    height=int(plain["height"][i]),
                    fps=float(plain["fps"][i]),
                    rgb_path=root / plain["rgb_path"][i],
                    normal_path=root / normal if normal else None,
                    K=per_frame["K"][i].reshape(-1, 3, 3),
                    viewmat=per_frame["viewmat"][i].reshape(-1, 4, 4),
                    expression=per_frame["expression"][i],
                    head_pose=per_frame["head_pose"][i],
                    world_frame=plain["world_frame"][i],
                    landmark_layout=marks[i][0],
                    landmarks=marks[i][1],
                    landmark_visible=marks[i][2],
                )
            )
    for message in skipped[:_MAX_LOGGED]:
        log.warning("manifest %s: skipped row %s", root, message)
    if len(skipped) > _MAX_LOGGED:
        log.warning("manifest %s: skipped %d more malformed rows", root, len(skipped) - _MAX_LOGGED)
    if problems is not None:
        problems.extend(skipped)
    return sources


def _row_problem(plain: dict[str, list], per_frame: dict[str, list], i: int) -> str | None:
    """Why row i cannot be used (missing scalars, per-frame arrays of the wrong length or shape), or None."""
    for name in ("sequence_id", "dataset", "identity", "num_frames", "width", "height", "fps", "rgb_path"):
        if plain[name][i] is None:
            return f"column {name!r} is null"
    if plain["expression_dim"][i] is None or plain["expression_dim"][i] < 0:
        return f"expression_dim is {plain['expression_dim'][i]!r}"
    num_frames = plain["num_frames"][i]
    if num_frames < 1:
        return f"num_frames is {num_frames}"
    for name, arrays in per_frame.items():
        value = arrays[i]
        if isinstance(value, str):
            return f"column {name!r} {value}"
        if value.shape[0] != num_frames:
            return f"column {name!r} has {value.shape[0]} frames, num_frames says {num_frames}"
    return None


_Landmarks = tuple[str | None, np.ndarray | None, np.ndarray | None, str | None]
_NO_LANDMARKS: _Landmarks = (None, None, None, None)


def _landmark_arrays(table: pa.Table, num_landmarks: list[int | None]) -> list[_Landmarks]:
    """Per row: (layout, landmarks [T, K, 2], visible [T, K] bool, problem or None); all None without landmarks."""
    rows = table.num_rows
    counts = np.array([k if k is not None else 0 for k in num_landmarks], np.int64)
    if "landmarks" not in table.column_names or not counts.any():
        return [_NO_LANDMARKS] * rows
    layouts = table.column("landmark_layout").to_pylist() if "landmark_layout" in table.column_names else [None] * rows
    points = _split_per_frame(table.column("landmarks"), 2 * counts)
    if "landmark_visible" in table.column_names:
        flags = _split_per_frame(table.column("landmark_visible").cast(pa.list_(pa.list_(pa.float32()))), counts)
    else:
        flags = ["is null"] * rows

    def one(i: int) -> _Landmarks:
        k = int(counts[i])
        if k == 0:
            return _NO_LANDMARKS
        if k < 0:
            return None, None, None, f"num_landmarks is {k}"
        if not layouts[i]:
            return None, None, None, f"num_landmarks is {k} but landmark_layout is null"
        if isinstance(points[i], str):
            return None, None, None, f"column 'landmarks' {points[i]}"
        xy = points[i].reshape(-1, k, 2)
        if isinstance(flags[i], str):
            if flags[i] != "is null":
                return None, None, None, f"column 'landmark_visible' {flags[i]}"
            return layouts[i], xy, np.ones(xy.shape[:2], bool), None  # no flags: every point counts as visible
        if flags[i].shape[0] != xy.shape[0]:
            return None, None, None, f"'landmark_visible' has {flags[i].shape[0]} frames, 'landmarks' {xy.shape[0]}"
        return layouts[i], xy, flags[i] > 0.5, None

    return [one(i) for i in range(rows)]
