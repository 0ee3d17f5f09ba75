"""Manifest schema 1.1: world frames and per-frame landmarks; 1.0 manifests still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_manifest import T, make_row, write_videos

from datagen.manifest import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    read_manifest,
    read_rows,
    rows_to_table,
    table_to_rows,
    validate_dataset,
    write_part,
)

K_POINTS = 3
NEW_COLUMNS = ["world_frame", "num_landmarks", "landmark_layout", "landmarks", "landmark_visible"]


def with_landmarks(row, k: int = K_POINTS, seed: int = 0):
    rng = np.random.default_rng(seed)
    row.world_frame = row.identity
    row.num_landmarks = k
    row.landmark_layout = "test3"
    row.landmarks = rng.uniform(0, 64, (row.num_frames, k, 2)).astype(np.float32)  # [T, K, 2] is accepted
    row.__post_init__()
    row.landmark_visible = rng.random((row.num_frames, k)) > 0.3
    return row


def test_schema_version_is_1_1() -> None:
    assert SCHEMA_VERSION == "1.1"
    table = rows_to_table([make_row()])
    assert table.schema.metadata[SCHEMA_VERSION_KEY.encode()] == b"1.1"
    assert table.column_names[-5:] == NEW_COLUMNS


def test_landmarks_round_trip_next_to_rows_without_them(tmp_path: Path) -> None:
    marked = with_landmarks(make_row(0))
    plain = make_row(1, identity="phone-person")  # no landmarks, its own world frame
    assert marked.landmarks.shape == (T, 2 * K_POINTS)
    table = rows_to_table([marked, plain])
    record = table.slice(0, 1).to_pylist()[0]
    # the stored layout is (u0, v0, u1, v1, ...) per frame, as documented
    assert record["landmarks"][2][:2] == pytest.approx(marked.landmarks[2, :2].tolist())
    assert len(record["landmark_visible"]) == T and len(record["landmark_visible"][0]) == K_POINTS
    pq.write_table(table, tmp_path / "m.parquet")
    back = table_to_rows(read_manifest(tmp_path / "m.parquet"))
    np.testing.assert_array_equal(back[0].landmarks, marked.landmarks)
    np.testing.assert_array_equal(back[0].landmark_visible, marked.landmark_visible)
    assert back[0].landmark_visible.dtype == np.bool_
    assert (back[0].world_frame, back[0].num_landmarks, back[0].landmark_layout) == ("demo-003", 3, "test3")
    assert back[1].landmarks is None and back[1].landmark_visible is None and back[1].num_landmarks == 0
    assert back[1].world_frame is None and back[1].landmark_layout is None


def test_a_1_0_manifest_reads_with_the_defaults(tmp_path: Path) -> None:
    synthetic = make_row(0)
    phone = make_row(1, identity="id123", dataset="PhoneCapture")
    phone.source, phone.mode = "phone", "capture"
    # a 1.0 file: the old columns only, version 1.0 in the metadata and in every row
    table = rows_to_table([synthetic, phone]).drop_columns(NEW_COLUMNS)
    table = table.set_column(0, "schema_version", pa.array(["1.0", "1.0"])).replace_schema_metadata(
        {SCHEMA_VERSION_KEY: "1.0"}
    )
    assert len(table.column_names) == 25
    (tmp_path / "manifest").mkdir()
    pq.write_table(table, tmp_path / "manifest" / "manifest.parquet")
    rows = read_rows(tmp_path)
    assert [r.world_frame for r in rows] == ["demo-003", None]
    assert [r.num_landmarks for r in rows] == [0, 0]
    assert all(r.landmarks is None and r.landmark_visible is None and r.landmark_layout is None for r in rows)
    assert all(r.problems() == [] for r in rows)
    np.testing.assert_array_equal(rows[0].viewmat, synthetic.viewmat)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: setattr(r, "landmarks", r.landmarks[:, :-2]), r"landmarks: shape \[8, 4\], expected \[8, 6\]"),
        (lambda r: setattr(r, "landmarks", r.landmarks[:-1]), r"landmarks: shape \[7, 6\], expected \[8, 6\]"),
        (lambda r: setattr(r, "landmark_visible", r.landmark_visible[:, :2]), r"landmark_visible: shape \[8, 2\]"),
        (lambda r: r.landmarks.__setitem__((1, 0), np.nan), r"landmarks: non-finite value nan at index \[1, 0\]"),
        (lambda r: setattr(r, "landmark_layout", None), r"landmark_layout: must name the layout"),
        (lambda r: setattr(r, "num_landmarks", 0), r"landmark_layout: must be None when num_landmarks is 0"),
        (lambda r: setattr(r, "world_frame", " "), r"world_frame: must be None or a non-empty string"),
    ],
)
def test_row_checks_name_the_landmark_problem(change, message) -> None:
    row = with_landmarks(make_row())
    assert row.problems() == []
    change(row)
    assert any(__import__("re").search(message, p) for p in row.problems()), row.problems()


def test_validate_catches_a_wrong_landmark_shape_in_a_dataset(tmp_path: Path) -> None:
    good = with_landmarks(make_row(0))
    write_videos(tmp_path, good)
    write_part(tmp_path, good)
    assert validate_dataset(tmp_path, decode=False).ok
    # another writer stored one frame too few landmarks: the file is written without datagen's checks
    bad = with_landmarks(make_row(0))
    bad.landmarks = bad.landmarks[:-1]
    (tmp_path / "manifest").mkdir(exist_ok=True)
    pq.write_table(rows_to_table([bad]), tmp_path / "manifest" / "manifest.parquet")
    report = validate_dataset(tmp_path, decode=False)
    assert not report.ok
    assert any("demo-003/dynamicsweep/0000: landmarks: shape [7, 6], expected [8, 6]" in e for e in report.errors)
