"""Honest resume and errors that say why: reruns over other settings, broken videos, refused jobs, failed jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from datagen.cli import main
from datagen.config import RenderConfig
from datagen.manifest import RECORD_KEY, read_rows, validate_dataset
from datagen.resume import ResumeConflict
from datagen.runner import run
from datagen.video import ThreadedVideoWriter, VideoWriter, probe_video

TINY = {"sequences": 1, "frames": 2, "resolution": 64, "workers": 0, "backend": "cpu"}
SEQ = "demo-004/dynamicsweep/0000"


def _config(**overrides) -> RenderConfig:
    return RenderConfig.for_mode("dynamicsweep", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "data"
    summary = run(_config(), ["demo-004"], out, progress=False)
    assert summary.done == 1
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_part_records_what_was_written(rendered):
    table = pq.read_table(rendered / "manifest/parts/demo-004__dynamicsweep__0000.parquet")
    record = json.loads(table.schema.metadata[RECORD_KEY.encode()])
    assert record["config"]["frames"] == 2 and record["plan_key"]["avatar_id"] == "demo-004"
    for rel, written in record["videos"].items():
        path = rendered / rel
        assert written["bytes"] == path.stat().st_size
        assert written["frames"] == probe_video(path, decode=True).num_frames == 2
        import hashlib

        assert written["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the consolidated manifest keeps the schema's columns only, and info.json describes exactly its rows
    info = json.loads((rendered / "manifest/info.json").read_text())
    assert info["avatars"] == ["demo-004"] and info["render_config"]["frames"] == 2
    assert RECORD_KEY.encode() not in (pq.read_table(rendered / "manifest/manifest.parquet").schema.metadata or {})


def test_rerun_over_other_settings_refuses_then_force_redoes(rendered, tmp_path, capsys):
    out = _copy(rendered, tmp_path / "data")
    ids = tmp_path / "ids.txt"
    ids.write_text("demo-004\n")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    args = ["render", "--avatars", str(ids), "--out", str(out), "--mode", "dynamicsweep", "--sequences", "1"]
    args += ["--frames", "3", "--resolution", "64", "--workers", "0", "--backend", "cpu", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rendered with other settings" in err and "frames: 2 -> 3" in err and "--force" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # a refused job writes nothing
    # execution settings (workers, threads, backend, ...) are no mismatch
    assert run(_config(torch_threads=2), ["demo-004"], out, progress=False).skipped == 1
    with pytest.raises(ResumeConflict, match="fov_deg: 53.1 -> 60.0"):
        run(_config(fov_deg=60.0), ["demo-004"], out, progress=False)
    assert main([*args, "--force"]) == 0
    assert "1 done (1 of them redone)" in capsys.readouterr().out
    (row,) = read_rows(out)
    assert row.num_frames == 3 and probe_video(out / row.rgb_path, decode=True).num_frames == 3
    info = json.loads((out / "manifest/info.json").read_text())
    assert info["render_config"]["frames"] == 3 and info["total_frames"] == 3  # no stale description
    assert validate_dataset(out).ok


def test_rerun_over_a_truncated_video_redoes_it(rendered, tmp_path):
    out = _copy(rendered, tmp_path / "data")
    video = out / "videos" / f"{SEQ}_normal.mp4"
    good = video.read_bytes()
    video.write_bytes(good[: len(good) // 2])
    assert not validate_dataset(out).ok  # what a resume must not call complete
    summary = run(_config(), ["demo-004"], out, progress=False)
    assert (summary.done, summary.skipped, summary.redone) == (1, 0, 1)
    assert "bytes" in summary.redo_reasons[0] and SEQ in summary.redo_reasons[0]
    assert validate_dataset(out).ok and video.read_bytes() == good  # deterministic: the same file again

    # same size, other bytes: only the checksum can tell
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    video.write_bytes(bytes(flipped))
    assert run(_config(), ["demo-004"], out, progress=False, verify="size").skipped == 1  # the fast check trusts it
    summary = run(_config(), ["demo-004"], out, progress=False)
    assert summary.redone == 1 and "checksum" in summary.redo_reasons[0]
    assert video.read_bytes() == good


def test_missing_video_is_redone(rendered, tmp_path):
    out = _copy(rendered, tmp_path / "data")
    (out / "videos" / f"{SEQ}_rgb.mp4").unlink()
    summary = run(_config(), ["demo-004"], out, progress=False)
    assert summary.redone == 1 and "missing" in summary.redo_reasons[0]
    assert validate_dataset(out).ok


def test_overlapped_encoding_is_byte_identical_to_serial(rendered, tmp_path):
    serial = tmp_path / "serial"
    config = _config()
    config.video.overlap = False
    assert run(config, ["demo-004"], serial, progress=False).done == 1
    for suffix in ("rgb", "normal"):
        a = (rendered / "videos" / f"{SEQ}_{suffix}.mp4").read_bytes()
        assert a == (serial / "videos" / f"{SEQ}_{suffix}.mp4").read_bytes()


def test_threaded_writer_matches_serial_writer_with_work_in_between(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    frames[:, 16:48, 16:48] = 200  # some structure for the motion search
    with VideoWriter(tmp_path / "a.mp4", 64, 64, 25) as serial:
        for frame in frames:
            serial.write(frame)
    with ThreadedVideoWriter(VideoWriter(tmp_path / "b.mp4", 64, 64, 25), depth=2) as threaded:
        for frame in frames:
            torch.randn(256, 256) @ torch.randn(256, 256)  # the render loop keeps working meanwhile
            threaded.write(frame.copy())
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert threaded.encode_s > 0
    # an encoder error surfaces in the producer, and no file is left behind
    writer = ThreadedVideoWriter(VideoWriter(tmp_path / "c.mp4", 64, 64, 25))
    writer.write(frames[0])
    with pytest.raises(ValueError, match="expected uint8"):
        writer.write(np.zeros((32, 32, 3), np.uint8))
        writer.close()
    assert not (tmp_path / "c.mp4").exists() and not list(tmp_path.glob(".c.*"))


def test_impossible_resolution_is_refused_up_front(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("demo-000\n")
    out = tmp_path / "nested" / "out"
    assert main(["render", "--avatars", str(ids), "--out", str(out), "--resolution", "100000", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--resolution 100000" in err and "TiB of memory" in err and "this machine has" in err
    assert not (tmp_path / "nested").exists()  # no empty folder tree


def test_when_every_sequence_fails_the_reasons_come_first(tmp_path, capsys, monkeypatch):
    ids = tmp_path / "ids.txt"
    ids.write_text("demo-000\n")
    out = tmp_path / "out"
    import datagen.render_sequence as rs

    def broken(*args, **kwargs):
        raise RuntimeError("splatting exploded")

    monkeypatch.setattr(rs, "render_sequence", broken)
    args = ["render", "--avatars", str(ids), "--out", str(out), "--mode", "dynamicsweep", "--sequences", "2"]
    args += ["--frames", "2", "--resolution", "64", "--workers", "0", "--backend", "cpu", "--quiet"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out.count("FAILED demo-000/dynamicsweep/000") == 2 and "splatting exploded" in captured.out
    assert "manifest: not written (no sequence is complete)" in captured.out
    assert "error" not in captured.err  # no consolidation error after (or instead of) the summary
    assert not out.exists()  # nothing was made: no empty folder tree either


def test_legacy_parts_without_records_are_checked_against_the_row(rendered, tmp_path):
    out = _copy(rendered, tmp_path / "data")
    part = out / "manifest/parts/demo-004__dynamicsweep__0000.parquet"
    table = pq.read_table(part)
    metadata = {k: v for k, v in table.schema.metadata.items() if k != RECORD_KEY.encode()}
    pq.write_table(table.replace_schema_metadata(metadata), part)
    assert run(_config(), ["demo-004"], out, progress=False).skipped == 1
    with pytest.raises(ResumeConflict, match="frames: 2 -> 4"):
        run(_config(frames=4), ["demo-004"], out, progress=False)
    os.truncate(out / "videos" / f"{SEQ}_rgb.mp4", 100)
    assert run(_config(), ["demo-004"], out, progress=False).redone == 1


def test_plan_sizes_a_paper_scale_job(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(f"demo-{i:04d}" if i >= 16 else f"demo-{i:03d}" for i in range(802)) + "\n")
    rates = tmp_path / "rates.json"
    profile = {"resolution": 512, "render_fps": 100.0, "encode_fps": 20.0, "end_to_end_fps": 16.0}
    rates.write_text(json.dumps({"test": {**profile, "rgb_bytes_per_pixel_frame": 0.05}}))
    assert (
        main(["plan", "--avatars", str(ids), "--mode", "both", "--rates", str(rates), "--tasks-per-machine", "8"]) == 0
    )
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    # paper: 802 x (128 x 100 + 32 x 128) frames = 13,550,592; at 1024 px, 4x the pixels of the 512 px rates
    assert lines["total"][3] == "13,550,592" and lines["viewsweep"][2] == str(802 * 128)
    hours = 13_550_592 * 4 / 16.0 / 3600
    assert float(lines["total"][-2]) == pytest.approx(hours, abs=0.1)  # task-hours at the end-to-end rate
    assert float(lines["total"][-1]) == pytest.approx(hours / 8, abs=0.1)  # machine-hours with 8 tasks each
    gigabytes = 13_550_592 * 1024 * 1024 * 0.05 / 1e9
    assert lines["total"][4:6] == [f"{gigabytes:.1f}", "GB"]
    assert main(["plan", "--avatars", str(ids), "--mode", "viewsweep", "--rates", str(tmp_path / "none.json")]) == 2
