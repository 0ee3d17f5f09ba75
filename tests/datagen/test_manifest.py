"""datagen.manifest: the Parquet schema round trip, versioning, the folder layout and dataset validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.manifest import (
    MANIFEST_SCHEMA,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    ManifestError,
    ManifestRow,
    completed_sequence_ids,
    consolidate,
    part_path,
    read_manifest,
    read_rows,
    rows_to_table,
    table_to_rows,
    validate_dataset,
    write_part,
)
from datagen.video import write_video

T, SIZE, FPS, D = 8, 64, 30.0, 5

# The documented columns (docs/manifest_schema.md), in order.
DOCUMENTED_COLUMNS = [
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
    "frame_index",
    "timestamp",
    "K",
    "viewmat",
    "expression_dim",
    "expression",
    "head_pose",
    "plan",
    "created_by",
    "world_frame",
    "num_landmarks",
    "landmark_layout",
    "landmarks",
    "landmark_visible",
]


def rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def make_row(
    index: int = 0,
    identity: str = "demo-003",
    dataset: str = "DynamicSweep",
    num_frames: int = T,
    with_normals: bool = True,
) -> ManifestRow:
    """A valid synthetic row: a camera spinning around the head at 0.3 m, random float32 codes."""
    rng = np.random.default_rng(index)
    viewmat = np.zeros((num_frames, 4, 4))
    for t in range(num_frames):
        R = rotation_y(0.1 * t)  # world-to-camera rotation
        viewmat[t, :3, :3] = R
        viewmat[t, :3, 3] = [0.0, 0.0, 0.3]
        viewmat[t, 3, 3] = 1.0
    K = np.array([[66.7, 0, SIZE / 2], [0, 66.7, SIZE / 2], [0, 0, 1]], np.float32)
    frame_index = np.arange(num_frames, dtype=np.int32)
    mode = dataset.lower()
    base = f"videos/{identity}/{mode}/{index:04d}"
    return ManifestRow(
        sequence_id=f"{identity}/{mode}/{index:04d}",
        dataset=dataset,
        source="synthetic",
        identity=identity,
        camera_id="virtual",
        mode=mode,
        trajectory="spin",
        seed=1234 + index,
        sequence_index=index,
        num_frames=num_frames,
        width=SIZE,
        height=SIZE,
        fps=FPS,
        rgb_path=f"{base}_rgb.mp4",
        normal_path=f"{base}_normal.mp4" if with_normals else None,
        frame_index=frame_index,
        timestamp=frame_index / FPS,
        K=np.repeat(K[None], num_frames, 0),
        viewmat=viewmat.astype(np.float32),
        expression=rng.standard_normal((num_frames, D)).astype(np.float32),
        head_pose=(0.1 * rng.standard_normal((num_frames, 6))).astype(np.float32),
        plan=json.dumps({"trajectory": "spin", "distance_m": 0.3}),
        created_by="datagen-tests 0",
    )


def write_videos(root: Path, row: ManifestRow, num_frames: int | None = None, size: int | None = None) -> None:
    """Writes the row's videos: flat grey frames, num_frames and size defaulting to the row's."""
    n = row.num_frames if num_frames is None else num_frames
    s = row.width if size is None else size
    for relative in (row.rgb_path, row.normal_path):
        if relative is not None:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            write_video(np.full((n, s, s, 3), 128, np.uint8), root / relative, fps=row.fps, preset="ultrafast")


def assert_rows_equal(a: ManifestRow, b: ManifestRow) -> None:
    for name in MANIFEST_SCHEMA.names:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            x, y = np.asarray(x), np.asarray(y)
            assert x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)  # exact, not approximate
        else:
            assert x == y, name


# --- Rows and tables ------------------------------------------------------------------------


def test_valid_row_has_no_problems() -> None:
    row = make_row()
    assert row.problems() == []
    assert row.expression_dim == D
    row.validate(source="test")


def test_rows_round_trip_through_parquet_exactly(tmp_path: Path) -> None:
    rows = [make_row(0), make_row(1, with_normals=False), make_row(2, dataset="ViewSweep", num_frames=3)]
    # Values float32 stores exactly but float16 or decimal rounding would not.
    rows[0].K[0, 0, 0] = np.float32(1 / 3)
    pq.write_table(rows_to_table(rows), tmp_path / "m.parquet")
    back = table_to_rows(pq.read_table(tmp_path / "m.parquet"))
    assert len(back) == 3
    for a, b in zip(rows, back, strict=True):
        assert_rows_equal(a, b)
    assert back[1].normal_path is None
    assert back[0].K.dtype == np.float32 and back[0].K.shape == (T, 3, 3)
    assert back[0].viewmat.shape == (T, 4, 4) and back[0].head_pose.shape == (T, 6)
    assert back[0].expression.shape == (T, D) and back[0].timestamp.dtype == np.float64


def test_rows_with_different_expression_dims_share_a_table() -> None:
    a = make_row(0)
    b = make_row(1)
    b.expression = np.ones((T, 3), np.float32)
    b.expression_dim = 3
    back = table_to_rows(rows_to_table([a, b]))
    assert back[0].expression.shape == (T, D) and back[1].expression.shape == (T, 3)
    assert back[1].expression_dim == 3


def test_schema_carries_the_version() -> None:
    table = rows_to_table([make_row()])
    assert table.schema.metadata[SCHEMA_VERSION_KEY.encode()] == SCHEMA_VERSION.encode()
    assert table.column("schema_version").to_pylist() == [SCHEMA_VERSION]
    assert MANIFEST_SCHEMA.names == DOCUMENTED_COLUMNS
    assert MANIFEST_SCHEMA.field("K").type == pa.list_(pa.list_(pa.float32(), 9))
    assert MANIFEST_SCHEMA.field("normal_path").nullable and not MANIFEST_SCHEMA.field("rgb_path").nullable


def test_every_column_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "packages" / "datagen" / "docs" / "manifest_schema.md").read_text()
    columns = doc[doc.index("## Columns") : doc.index("### What validation checks")]
    assert [name for name in MANIFEST_SCHEMA.names if f"`{name}`" not in columns] == []
    assert f"(schema version {SCHEMA_VERSION})" in doc


def test_pyarrow_alone_reads_the_documented_columns(tmp_path: Path) -> None:
    row = make_row()
    write_part(tmp_path, row)
    consolidate(tmp_path)
    records = pq.read_table(tmp_path / "manifest" / "manifest.parquet").to_pylist()
    assert len(records) == 1
    record = records[0]
    assert list(record) == DOCUMENTED_COLUMNS
    assert record["sequence_id"] == "demo-003/dynamicsweep/0000"
    assert record["num_frames"] == T and record["fps"] == FPS
    # Row-major 3x3 and 4x4, as the docs say: reshaping the plain lists gives back the matrices.
    np.testing.assert_array_equal(np.array(record["K"], np.float32).reshape(T, 3, 3), row.K)
    np.testing.assert_array_equal(np.array(record["viewmat"], np.float32).reshape(T, 4, 4), row.viewmat)
    assert record["timestamp"] == [i / FPS for i in range(T)]
    assert len(record["expression"]) == T and len(record["expression"][0]) == record["expression_dim"] == D
    assert json.loads(record["plan"])["distance_m"] == 0.3


def test_newer_major_version_is_rejected(tmp_path: Path) -> None:
    table = rows_to_table([make_row()])
    newer = table.set_column(0, "schema_version", pa.array(["2.0"])).replace_schema_metadata(
        {SCHEMA_VERSION_KEY: "2.0"}
    )
    (tmp_path / "manifest").mkdir()
    pq.write_table(newer, tmp_path / "manifest" / "manifest.parquet")
    with pytest.raises(ManifestError, match=r"version 2\.0 is newer than this reader \(1\.1\).*upgrade"):
        read_manifest(tmp_path)


def test_newer_minor_version_with_extra_columns_is_read(tmp_path: Path) -> None:
    table = rows_to_table([make_row()])
    newer = (
        table.set_column(0, "schema_version", pa.array(["1.7"]))
        .append_column("future_column", pa.array([42]))
        .replace_schema_metadata({SCHEMA_VERSION_KEY: "1.7"})
    )
    pq.write_table(newer, tmp_path / "m.parquet")
    read = read_manifest(tmp_path / "m.parquet")
    assert read.column_names == [*DOCUMENTED_COLUMNS, "future_column"]


def test_missing_version_is_rejected(tmp_path: Path) -> None:
    table = rows_to_table([make_row()]).drop_columns(["schema_version"]).replace_schema_metadata(None)
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="no manifest schema version"):
        read_manifest(tmp_path / "m.parquet")


def test_files_from_other_writers_are_read_through_the_column_version(tmp_path: Path) -> None:
    # duckdb or pandas write plain Parquet: no Arrow schema metadata, no fixed-size lists, wider
    # integer and string types, everything nullable. The schema_version column still says 1.0.
    table = rows_to_table([make_row()])
    fields = []
    for f in table.schema:
        kind = f.type
        if pa.types.is_list(kind) and pa.types.is_fixed_size_list(kind.value_type):
            kind = pa.list_(pa.list_(kind.value_type.value_type))
        kind = {pa.string(): pa.large_string(), pa.int32(): pa.int64()}.get(kind, kind)
        fields.append(pa.field(f.name, kind))
    plain = table.replace_schema_metadata(None).cast(pa.schema(fields))
    pq.write_table(plain, tmp_path / "m.parquet", store_schema=False)
    assert pq.read_table(tmp_path / "m.parquet").schema.metadata is None

    read = read_manifest(tmp_path / "m.parquet")
    assert read.schema.equals(MANIFEST_SCHEMA, check_metadata=True)
    assert_rows_equal(table_to_rows(read)[0], make_row())


def test_validate_names_source_sequence_field_and_value() -> None:
    row = make_row()
    row.timestamp = row.timestamp.copy()
    row.timestamp[3] += 1e-6
    with pytest.raises(ManifestError) as info:
        row.validate(source="phone-import")
    message = str(info.value)
    assert "phone-import" in message and "demo-003/dynamicsweep/0000" in message
    assert "timestamp" in message and "frame 3" in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r, "K", r.K[:-1]), "K: shape [7, 3, 3], expected [8, 3, 3]"),
        (lambda r: setattr(r, "viewmat", r.viewmat.transpose(0, 2, 1)), "viewmat: frame 0 is not a rigid"),
        (lambda r: setattr(r, "head_pose", np.zeros((T, 7), np.float32)), "head_pose: shape [8, 7]"),
        (lambda r: setattr(r, "expression_dim", 4), "expression: shape [8, 5], expected [8, 4]"),
        (lambda r: r.expression.__setitem__((2, 1), np.nan), "expression: non-finite value nan at index [2, 1]"),
        (lambda r: setattr(r, "frame_index", r.frame_index + 1), "frame_index: must be 0..7"),
        (lambda r: setattr(r, "mode", "Spin"), "mode: 'Spin' is not one of"),
        (lambda r: setattr(r, "sequence_id", "a__b/c"), "sequence_id: 'a__b/c' must not contain '__'"),
        (lambda r: setattr(r, "rgb_path", "/abs/rgb.mp4"), "rgb_path: '/abs/rgb.mp4' must be a relative"),
        (lambda r: setattr(r, "plan", "{not json"), "plan: not valid JSON"),
        (lambda r: setattr(r, "fps", 0.0), "fps: must be finite and > 0"),
        (lambda r: setattr(r, "schema_version", "2.1"), "schema_version: manifest schema version 2.1 is newer"),
    ],
)
def test_row_problems_name_the_field(change, field: str) -> None:
    row = make_row()
    change(row)
    assert any(field in p for p in row.problems()), row.problems()
    with pytest.raises(ManifestError, match=f"test: sequence '{row.sequence_id}'"):
        row.validate(source="test")


# --- Folder layout --------------------------------------------------------------------------


def test_write_part_path_and_completed_ids_ignore_temporaries(tmp_path: Path) -> None:
    path = write_part(tmp_path, make_row(3))
    assert path == tmp_path / "manifest" / "parts" / "demo-003__dynamicsweep__0003.parquet"
    assert path == part_path(tmp_path, "demo-003/dynamicsweep/0003")
    # What a killed writer leaves behind: a hidden temporary file. It is not a completed sequence.
    (path.parent / ".demo-003__dynamicsweep__0004.parquet.0123abcd.tmp").write_bytes(b"partial")
    (path.parent / ".demo-003__dynamicsweep__0005.tmp.parquet").write_bytes(b"partial")
    assert completed_sequence_ids(tmp_path) == {"demo-003/dynamicsweep/0003"}
    assert completed_sequence_ids(tmp_path / "empty") == set()
    # Plain pyarrow reads the parts folder as one table and skips the hidden temporaries too.
    assert pq.read_table(path.parent).column("sequence_id").to_pylist() == ["demo-003/dynamicsweep/0003"]
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == [path.name]


def test_write_part_refuses_an_invalid_row(tmp_path: Path) -> None:
    row = make_row()
    row.K = row.K[:3]
    with pytest.raises(ManifestError, match="K: shape"):
        write_part(tmp_path, row)
    assert completed_sequence_ids(tmp_path) == set()


def test_consolidate_sorts_counts_and_writes_info(tmp_path: Path) -> None:
    rows = [
        make_row(2, identity="b-id"),
        make_row(0, identity="a-id", dataset="ViewSweep", num_frames=4),
        make_row(1, identity="a-id"),
    ]
    for row in rows:
        write_part(tmp_path, row)
    (tmp_path / "manifest" / "parts" / ".a-id__x.parquet.ffff.tmp").write_bytes(b"partial")
    # Before consolidation the parts are the manifest.
    assert read_manifest(tmp_path).column("sequence_id").to_pylist() == [
        "a-id/dynamicsweep/0001",
        "a-id/viewsweep/0000",
        "b-id/dynamicsweep/0002",
    ]

    manifest = consolidate(tmp_path, extra_info={"generator": "tests", "global_seed": 7})
    assert manifest == tmp_path / "manifest" / "manifest.parquet"
    table = pq.read_table(manifest)
    assert table.column("sequence_id").to_pylist() == sorted(r.sequence_id for r in rows)
    assert table.schema.metadata[SCHEMA_VERSION_KEY.encode()] == b"1.1"

    info = json.loads((tmp_path / "manifest" / "info.json").read_text())
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["num_rows"] == 3
    assert info["total_frames"] == T + 4 + T
    assert info["datasets"] == {
        "DynamicSweep": {"num_rows": 2, "total_frames": 2 * T},
        "ViewSweep": {"num_rows": 1, "total_frames": 4},
    }
    assert info["generator"] == "tests" and info["global_seed"] == 7
    assert sorted(p.name for p in (tmp_path / "manifest").iterdir()) == ["info.json", "manifest.parquet", "parts"]

    by_id = {r.sequence_id: r for r in rows}
    for row in read_rows(tmp_path):
        assert_rows_equal(row, by_id[row.sequence_id])


def test_consolidate_refuses_to_overwrite_computed_info(tmp_path: Path) -> None:
    write_part(tmp_path, make_row())
    with pytest.raises(ValueError, match="num_rows"):
        consolidate(tmp_path, extra_info={"num_rows": 0})


def test_no_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest under"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no part files"):
        consolidate(tmp_path)


# --- validate_dataset -----------------------------------------------------------------------


def good_dataset(root: Path, rows: list[ManifestRow] | None = None) -> list[ManifestRow]:
    rows = rows or [make_row(0), make_row(1, with_normals=False)]
    for row in rows:
        write_videos(root, row)
        write_part(root, row)
    consolidate(root)
    return rows


def write_manifest_unchecked(root: Path, rows: list[ManifestRow]) -> None:
    """Writes rows straight to manifest.parquet, as a buggy producer could (write_part would refuse)."""
    (root / "manifest").mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), root / "manifest" / "manifest.parquet")


@pytest.mark.parametrize("decode", [True, False])
def test_validate_dataset_ok_on_a_good_dataset(tmp_path: Path, decode: bool) -> None:
    good_dataset(tmp_path)
    report = validate_dataset(tmp_path, decode=decode)
    assert report.ok, report.format()
    assert report.rows_checked == 2
    assert "2 sequences checked, no problems" in report.format()


def test_validate_dataset_catches_a_missing_video(tmp_path: Path) -> None:
    rows = good_dataset(tmp_path)
    (tmp_path / rows[0].normal_path).unlink()
    report = validate_dataset(tmp_path)
    assert not report.ok
    assert report.errors == [
        f"{rows[0].sequence_id}: normal_path: video {rows[0].normal_path!r} does not exist under {tmp_path}"
    ]
    assert rows[0].sequence_id in report.format()


@pytest.mark.parametrize("decode", [True, False])
def test_validate_dataset_catches_a_truncated_video(tmp_path: Path, decode: bool) -> None:
    row = make_row(num_frames=12)
    write_videos(tmp_path, row, num_frames=10)  # 10 frames written, 12 declared
    write_part(tmp_path, row)
    report = validate_dataset(tmp_path, decode=decode)
    assert len(report.errors) == 2  # rgb and normal
    assert all(row.sequence_id in e and "has 10 frames, num_frames is 12" in e for e in report.errors)


def test_validate_dataset_catches_a_video_cut_short_on_disk(tmp_path: Path) -> None:
    rows = good_dataset(tmp_path, [make_row(0, with_normals=False)])
    path = tmp_path / rows[0].rgb_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = validate_dataset(tmp_path, decode=True)
    assert not report.ok and rows[0].sequence_id in report.errors[0] and "rgb_path" in report.errors[0]


def test_validate_dataset_catches_a_wrong_size(tmp_path: Path) -> None:
    row = make_row(with_normals=False)
    write_videos(tmp_path, row, size=32)
    write_part(tmp_path, row)
    report = validate_dataset(tmp_path)
    assert report.errors == [f"{row.sequence_id}: rgb_path: video {row.rgb_path!r} is 32x32, the row says 64x64"]


def test_validate_dataset_catches_per_frame_length_mismatch(tmp_path: Path) -> None:
    row = make_row()
    write_videos(tmp_path, row)
    row.viewmat = row.viewmat[:5]
    row.expression = row.expression[:7]
    write_manifest_unchecked(tmp_path, [row])
    report = validate_dataset(tmp_path)
    assert report.errors == [
        f"{row.sequence_id}: viewmat: shape [5, 4, 4], expected [8, 4, 4] (num_frames=8)",
        f"{row.sequence_id}: expression: shape [7, 5], expected [8, 5] (num_frames=8)",
    ]


def test_validate_dataset_catches_bad_timestamps(tmp_path: Path) -> None:
    row = make_row(with_normals=False)
    write_videos(tmp_path, row)
    row.timestamp = np.arange(T) / 25.0  # written at another frame rate than the row's 30 fps
    write_manifest_unchecked(tmp_path, [row])
    report = validate_dataset(tmp_path)
    assert len(report.errors) == 1
    assert report.errors[0].startswith(f"{row.sequence_id}: timestamp: 0.04 at frame 1 != frame_index / fps")


def test_validate_dataset_catches_duplicate_ids_and_a_newer_version(tmp_path: Path) -> None:
    row = make_row(with_normals=False)
    write_videos(tmp_path, row)
    write_manifest_unchecked(tmp_path, [row, make_row(with_normals=False)])
    assert validate_dataset(tmp_path).errors == [f"{row.sequence_id}: sequence_id appears 2 times"]

    table = rows_to_table([row]).replace_schema_metadata({SCHEMA_VERSION_KEY: "2.0"})
    pq.write_table(table, tmp_path / "manifest" / "manifest.parquet")
    report = validate_dataset(tmp_path)
    assert not report.ok and "newer than this reader" in report.errors[0]
