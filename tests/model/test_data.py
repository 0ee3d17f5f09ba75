"""Training data: manifest reader, clip dataset (decode, resize / crop, cameras, references, broken rows), mixture."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from factorportrait.conditions import camera_features
from factorportrait.data import (
    ClipDataset,
    ClipDatasetConfig,
    ManifestReadError,
    MixtureSampler,
    collate_clips,
    group_by_dataset,
    read_manifest_rows,
)
from factorportrait.data.clips import cover_crop
from factorportrait.data.mixture import INFINITE_LENGTH

SEQUENCES = [
    "demo-000/dynamicsweep/0000",
    "demo-000/dynamicsweep/0001",
    "demo-000/viewsweep/0000",
    "demo-001/dynamicsweep/0000",
    "demo-001/dynamicsweep/0001",
    "demo-001/viewsweep/0000",
]
DELETED = "demo-000/dynamicsweep/0001"  # its RGB video is removed in `broken_root`
TRUNCATED = "demo-001/viewsweep/0000"  # its RGB video is rewritten with 8 of its 17 frames
# The loader resamples in uint8 (fast path) and so rounds to the 8-bit grid: one level of [0, 255] in [-1, 1].
PIXEL_ATOL = 1.01 / 127.5


def _config(**overrides) -> ClipDatasetConfig:
    return ClipDatasetConfig(**{"frames": 5, "stride": 4, "height": 32, "width": 32, **overrides})


def _decoded(path: Path, start: int, count: int) -> torch.Tensor:  # -> [count, 3, h, w] float in [0, 255]
    from datagen.video import read_video

    return torch.from_numpy(read_video(path, start, count)).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------------------------- manifest
def test_reads_every_row(tiny_dataset):
    rows = read_manifest_rows(tiny_dataset)
    assert [r.sequence_id for r in rows] == SEQUENCES
    assert Counter(r.dataset for r in rows) == {"DynamicSweep": 4, "ViewSweep": 2}
    assert Counter(r.identity for r in rows) == {"demo-000": 3, "demo-001": 3}
    table = pq.read_table(tiny_dataset / "manifest" / "manifest.parquet")
    for i, row in enumerate(rows):
        assert (row.num_frames, row.width, row.height, row.fps, row.camera_id) == (17, 64, 64, 25.0, "virtual")
        assert row.rgb_path.is_absolute() and row.rgb_path.is_file() and row.normal_path.is_file()
        assert row.K.shape == (17, 3, 3) and row.viewmat.shape == (17, 4, 4) and row.head_pose.shape == (17, 6)
        assert row.expression.shape == (17, table.column("expression_dim")[i].as_py())
        assert all(a.dtype == np.float32 for a in (row.K, row.viewmat, row.expression, row.head_pose))
        plain = table.slice(i, 1).to_pylist()[0]
        np.testing.assert_array_equal(row.K, np.asarray(plain["K"], np.float32).reshape(-1, 3, 3))
        np.testing.assert_array_equal(row.viewmat, np.asarray(plain["viewmat"], np.float32).reshape(-1, 4, 4))
        np.testing.assert_array_equal(row.expression, np.asarray(plain["expression"], np.float32))
        np.testing.assert_array_equal(row.head_pose, np.asarray(plain["head_pose"], np.float32))


def test_reads_parts_when_there_is_no_consolidated_manifest(tiny_dataset, tmp_path):
    shutil.copytree(tiny_dataset / "manifest", tmp_path / "manifest")
    (tmp_path / "manifest" / "manifest.parquet").unlink()
    (tmp_path / "manifest" / "parts" / ".half-written.tmp.parquet").write_bytes(b"garbage")  # hidden: skipped
    rows = read_manifest_rows(tmp_path)
    assert sorted(r.sequence_id for r in rows) == SEQUENCES
    assert all(r.rgb_path.is_relative_to(tmp_path.resolve()) for r in rows)
    with pytest.raises(ManifestReadError, match="no manifest under"):
        read_manifest_rows(tmp_path / "nowhere")


def _rewrite(tiny_dataset: Path, out: Path, edit) -> Path:
    table = edit(pq.read_table(tiny_dataset / "manifest" / "manifest.parquet"))
    path = out / "manifest" / "manifest.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def _with_version(table: pa.Table, version: str | None) -> pa.Table:
    index = table.column_names.index("schema_version")
    if version is None:
        return table.remove_column(index).replace_schema_metadata(None)
    column = pa.array([version] * table.num_rows, pa.string())
    table = table.set_column(index, table.schema.field(index), column)
    return table.replace_schema_metadata({"factorportrait.manifest_version": version})


def test_rejects_a_newer_major_version_and_a_missing_version(tiny_dataset, tmp_path):
    path = _rewrite(tiny_dataset, tmp_path / "v2", lambda t: _with_version(t, "2.0"))
    with pytest.raises(ManifestReadError, match="upgrade") as err:
        read_manifest_rows(tmp_path / "v2")
    assert str(path) in str(err.value) and "2.0" in str(err.value)
    # Metadata alone saying 2.0 (the column still 1.0) is rejected too.
    _rewrite(
        tiny_dataset,
        tmp_path / "meta",
        lambda t: t.replace_schema_metadata({"factorportrait.manifest_version": "2.0"}),
    )
    with pytest.raises(ManifestReadError, match="2.0"):
        read_manifest_rows(tmp_path / "meta")
    path = _rewrite(tiny_dataset, tmp_path / "none", lambda t: _with_version(t, None))
    with pytest.raises(ManifestReadError, match="no manifest schema version") as err:
        read_manifest_rows(tmp_path / "none")
    assert str(path) in str(err.value)
    # A newer minor version reads.
    _rewrite(tiny_dataset, tmp_path / "v1_3", lambda t: _with_version(t, "1.3"))
    assert len(read_manifest_rows(tmp_path / "v1_3")) == 6


def test_rows_with_wrong_frame_counts_are_skipped_and_reported(tiny_dataset, tmp_path):
    def edit(table: pa.Table) -> pa.Table:
        index = table.column_names.index("num_frames")
        num_frames = pa.array([16] + [17] * (table.num_rows - 1), pa.int32())
        return table.set_column(index, table.schema.field(index), num_frames)

    _rewrite(tiny_dataset, tmp_path, edit)
    problems: list[str] = []
    rows = read_manifest_rows(tmp_path, problems=problems)
    assert [r.sequence_id for r in rows] == SEQUENCES[1:]
    assert len(problems) == 1 and problems[0].startswith(SEQUENCES[0]) and "num_frames says 16" in problems[0]


# ---------------------------------------------------------------------------------------------- clips
@pytest.mark.parametrize(
    ("frames", "stride", "starts"),
    [(5, 4, [0, 4, 8, 12]), (5, 3, [0, 3, 6, 9, 12]), (13, 4, [0, 4]), (17, 4, [0]), (21, 4, [])],
)
def test_clip_enumeration(tiny_dataset, frames, stride, starts):
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), _config(frames=frames, stride=stride))
    assert len(dataset) == 6 * len(starts)
    assert [c.start for c in dataset.clips if c.source.sequence_id == SEQUENCES[0]] == starts
    assert dataset.too_short == (6 if not starts else 0)
    groups = group_by_dataset(dataset.clips)
    assert {k: len(v) for k, v in groups.items()} == (
        {"DynamicSweep": 4 * len(starts), "ViewSweep": 2 * len(starts)} if starts else {}
    )
    assert all(dataset.clips[i].source.dataset == name for name, idx in groups.items() for i in idx)


def test_config_is_checked():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        _config(frames=6)
    with pytest.raises(ValueError, match="multiple of 16"):
        _config(width=40)
    with pytest.raises(ValueError, match="reference"):
        _config(reference="anything")


@pytest.mark.parametrize("frames", [5, 13])
def test_item_shapes_and_values(tiny_dataset, frames):
    rows = read_manifest_rows(tiny_dataset)
    dataset = ClipDataset(rows, _config(frames=frames))
    item = dataset[1]
    source, start = dataset.clips[1]
    latent = 1 + (frames - 1) // 4
    assert item["video"].shape == item["normals"].shape == (3, frames, 32, 32)
    assert item["reference"].shape == (3, 1, 32, 32)
    assert item["ray_features"].shape == (1536, latent, 4, 4)
    assert item["reference_rays"].shape == (1536, 1, 4, 4)
    assert item["expression"].shape == (frames, source.expression.shape[1])
    assert all(item[k].dtype == torch.float32 for k in ("video", "normals", "reference", "ray_features"))
    for key in ("video", "normals", "reference"):
        assert -1.0 <= float(item[key].min()) < float(item[key].max()) <= 1.0
    torch.testing.assert_close(item["expression"], torch.from_numpy(source.expression[start : start + frames]))
    assert (item["dataset"], item["sequence_id"], item["start"], item["index"]) == (
        source.dataset,
        source.sequence_id,
        start,
        1,
    )
    # The video is the decoded clip, resized 64 -> 32 (antialiased bilinear) and mapped to [-1, 1].
    expected = F.interpolate(_decoded(source.rgb_path, start, frames), size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(item["video"], (expected / 127.5 - 1).permute(1, 0, 2, 3), atol=PIXEL_ATOL, rtol=0)


def test_resize_crop_moves_image_and_intrinsics_together(tiny_dataset):
    """64x64 frames at a 32 (H) x 48 (W) training size: scale 0.75 to 48x48, crop rows 8..39."""
    assert cover_crop(64, 64, 32, 48) == (48, 48, 8, 0)
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), _config(height=32, width=48))
    offsets = []
    for index in (1, 6, 14):
        item = dataset[index]
        source, start = dataset.clips[index]
        assert item["video"].shape == (3, 5, 32, 48) and item["ray_features"].shape == (1536, 2, 4, 6)
        # Pixels: resize by hand, crop by hand.
        resized = F.interpolate(_decoded(source.rgb_path, start, 5), size=(48, 48), mode="bilinear", antialias=True)
        expected = (resized[:, :, 8:40, :] / 127.5 - 1).permute(1, 0, 2, 3)
        torch.testing.assert_close(item["video"], expected, atol=PIXEL_ATOL, rtol=0)
        # Cameras: the world origin (head centre) projected with the original K, then scaled and shifted by hand,
        # lands where the adjusted K projects it.
        origin = source.viewmat[start : start + 5, :3, 3].astype(np.float64)  # [5, 3] camera-frame origin
        K0 = source.K[start : start + 5].astype(np.float64)
        u = K0[:, 0, 0] * origin[:, 0] / origin[:, 2] + K0[:, 0, 2]
        v = K0[:, 1, 1] * origin[:, 1] / origin[:, 2] + K0[:, 1, 2]
        by_hand = np.stack([0.75 * u - 0, 0.75 * v - 8], axis=-1)  # [5, 2]
        K = item["K"].numpy().astype(np.float64)
        projected = np.einsum("tij,tj->ti", K, origin)
        np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], by_hand, atol=1e-4)
        # And the head is there in the image: the non-background centroid sits near the projected head centre
        # (a missed crop offset would put it 8 px away).
        foreground = item["video"].mean(0) < 0.9  # [5, 32, 48], white background
        for t in range(5):
            ys, xs = torch.nonzero(foreground[t], as_tuple=True)
            offsets.append(
                [float(xs.float().mean()) + 0.5 - by_hand[t, 0], float(ys.float().mean()) + 0.5 - by_hand[t, 1]]
            )
    assert np.all(np.abs(np.mean(offsets, axis=0)) < 4.0), np.mean(offsets, axis=0)


def test_ray_features_are_camera_features_of_the_adjusted_cameras(tiny_dataset):
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), _config(frames=9, height=32, width=48))
    item = dataset[3]
    source, start = dataset.clips[3]
    K = source.K[start : start + 9].astype(np.float64)
    K[:, :2] *= 0.75
    K[:, 1, 2] -= 8
    c2w = torch.linalg.inv(torch.from_numpy(source.viewmat[start : start + 9]).double()).float()
    rays, reference_rays = camera_features(torch.from_numpy(K).float(), c2w, 32, 48)
    torch.testing.assert_close(item["ray_features"], rays, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["reference_rays"], reference_rays, atol=1e-5, rtol=1e-5)


def test_reference_frames(tiny_dataset):
    rows = read_manifest_rows(tiny_dataset)
    by_id = {r.sequence_id: r for r in rows}
    same = ClipDataset(rows, _config(reference="same_sequence"))
    for index, (source, start) in enumerate(same.clips):
        ref, frame = same.reference_for(index)
        assert ref is source and not start <= frame < start + 5 and 0 <= frame < 17
    other = ClipDataset(rows, _config(reference="other_sequence"))
    picks = [(ref.sequence_id, frame) for ref, frame in map(other.reference_for, range(len(other)))]
    for (source, _), (ref_id, _) in zip(other.clips, picks, strict=True):
        assert ref_id != source.sequence_id and by_id[ref_id].identity == source.identity
    assert len(set(picks)) > len(picks) // 2  # not one fixed choice
    # Deterministic per (seed, index): a fresh dataset repeats the picks, another seed changes them.
    again = ClipDataset(rows, _config(reference="other_sequence"))
    assert [(r.sequence_id, f) for r, f in map(again.reference_for, range(len(again)))] == picks
    reseeded = ClipDataset(rows, _config(reference="other_sequence", seed=1))
    assert [(r.sequence_id, f) for r, f in map(reseeded.reference_for, range(len(reseeded)))] != picks
    # The item's reference image is that frame, resized like the clip.
    item = other[5]
    assert (item["reference_sequence_id"], item["reference_frame"]) == picks[5]
    decoded = F.interpolate(
        _decoded(by_id[picks[5][0]].rgb_path, picks[5][1], 1), size=(32, 32), antialias=True, mode="bilinear"
    )
    torch.testing.assert_close(item["reference"], (decoded / 127.5 - 1).permute(1, 0, 2, 3), atol=PIXEL_ATOL, rtol=0)
    torch.testing.assert_close(other[5]["reference"], item["reference"], atol=0, rtol=0)
    # One sequence per identity: other_sequence falls back to the same sequence.
    alone = ClipDataset([r for r in rows if r.sequence_id.endswith("viewsweep/0000")], _config())
    for index, (source, start) in enumerate(alone.clips):
        ref, frame = alone.reference_for(index)
        assert ref is source and not start <= frame < start + 5


# ---------------------------------------------------------------------------------------------- broken rows
@pytest.fixture
def broken_root(tiny_dataset, tmp_path) -> Path:
    from datagen.video import read_video, write_video

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    rows = {r.sequence_id: r for r in read_manifest_rows(root)}
    rows[DELETED].rgb_path.unlink()
    truncated = rows[TRUNCATED].rgb_path
    write_video(read_video(truncated)[:8], truncated, fps=25.0)
    return root


def test_check_sources_removes_broken_sequences(broken_root, caplog):
    dataset = ClipDataset(read_manifest_rows(broken_root), _config())
    assert len(dataset) == 24
    with caplog.at_level("WARNING"):
        assert dataset.check_sources() == 2
    assert len(dataset) == 16
    assert {c.source.sequence_id for c in dataset.clips} == set(SEQUENCES) - {DELETED, TRUNCATED}
    assert len(dataset.removed) == 2
    assert any(DELETED in m and "missing video" in m for m in dataset.removed)
    assert any(TRUNCATED in m and "has 8 frames, the manifest says 17" in m for m in dataset.removed)
    assert sum("removing broken sequence" in r.getMessage() for r in caplog.records) == 2
    # Removed sequences are no reference candidates either.
    assert all(dataset.reference_for(i)[0].sequence_id not in (DELETED, TRUNCATED) for i in range(len(dataset)))


def test_broken_clip_gives_none_and_collate_drops_it(broken_root):
    dataset = ClipDataset(read_manifest_rows(broken_root), _config(reference="same_sequence"))
    deleted = next(i for i, c in enumerate(dataset.clips) if c.source.sequence_id == DELETED)
    assert dataset[deleted] is None
    assert dataset.broken.count == 1
    assert dataset.broken.messages[0].startswith(DELETED) and "not found" in dataset.broken.messages[0]
    late = next(i for i, c in enumerate(dataset.clips) if c.source.sequence_id == TRUNCATED and c.start == 12)
    assert dataset[late] is None
    assert dataset.broken.count == 2 and "ended after 8 frames" in dataset.broken.messages[1]

    good = dataset[0]
    batch = collate_clips([good, None])
    assert batch["skipped"] == 1 and batch["video"].shape == (1, 3, 5, 32, 32)
    assert batch["sequence_id"] == [good["sequence_id"]] and batch["start"].tolist() == [good["start"]]
    assert collate_clips([None, None]) is None
    # Garbage bytes instead of a video: also None, not an exception.
    dataset.clips[0].source.normal_path.write_bytes(b"\x00not a video" * 100)
    assert dataset[0] is None and dataset.broken.count == 3


def test_dataloader_workers_skip_broken_clips(broken_root):
    dataset = ClipDataset(read_manifest_rows(broken_root), _config(reference="same_sequence"))
    broken = sum(dataset[i] is None for i in range(len(dataset)))  # in this process, deterministic
    assert broken >= 4 + 3  # every clip of DELETED; the clips of TRUNCATED that need frames >= 8
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_clips, timeout=120)
    samples, skipped, seen = 0, 0, set()
    for batch in loader:
        if batch is None:
            skipped += 4
            continue
        samples += batch["video"].shape[0]
        skipped += batch["skipped"]
        seen |= set(batch["sequence_id"])
    assert (samples, skipped) == (len(dataset) - broken, broken)
    assert DELETED not in seen


# ---------------------------------------------------------------------------------------------- mixture
GROUPS = {"ViewSweep": list(range(0, 30)), "DynamicSweep": list(range(30, 100)), "PhoneCapture": [100, 101]}
RATIOS = {"ViewSweep": 0.3, "DynamicSweep": 0.7}


def _take(sampler: MixtureSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_mixture_ratios_and_uniform_clips():
    samples = np.array(_take(MixtureSampler(GROUPS, RATIOS, seed=0), 20_000))
    assert abs(np.mean(samples < 30) - 0.3) < 0.015
    assert abs(np.mean((samples >= 30) & (samples < 100)) - 0.7) < 0.015
    assert samples.max() < 100  # PhoneCapture has no ratio
    per_clip = np.bincount(samples, minlength=100)
    assert per_clip[:30].min() > 120 and per_clip[:30].max() < 290  # expected 200 each
    assert per_clip[30:100].min() > 120 and per_clip[30:100].max() < 290  # expected 200 each
    # Ratios are normalised, a ratio of 0 is ignored, the order of names does not matter.
    reference = _take(MixtureSampler(GROUPS, RATIOS), 300)
    assert _take(MixtureSampler(GROUPS, {"DynamicSweep": 7, "ViewSweep": 3, "PhoneCapture": 0}), 300) == reference


def test_mixture_is_deterministic():
    first = _take(MixtureSampler(GROUPS, RATIOS, seed=0), 500)
    assert _take(MixtureSampler(GROUPS, RATIOS, seed=0), 500) == first
    other = _take(MixtureSampler(GROUPS, RATIOS, seed=1), 500)
    assert other != first
    assert len(set(first)) > 90  # seed 0 is an ordinary seed
    sampler = MixtureSampler(GROUPS, RATIOS, seed=0)
    assert [sampler.sample(i) for i in range(500)] == first
    assert len(sampler) == INFINITE_LENGTH and len(MixtureSampler(GROUPS, RATIOS, num_samples=10)) == 10
    assert len(list(MixtureSampler(GROUPS, RATIOS, num_samples=10))) == 10


def test_mixture_resumes_mid_stream():
    uninterrupted = _take(MixtureSampler(GROUPS, RATIOS, seed=3), 87)
    sampler = MixtureSampler(GROUPS, RATIOS, seed=3)
    iterator = iter(sampler)
    taken = [next(iterator) for _ in range(37)]
    sampler.advance(37)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state == {"position": 37, "seed": 3}
    resumed = MixtureSampler(GROUPS, RATIOS, seed=3)
    resumed.load_state_dict(state)
    assert taken + _take(resumed, 50) == uninterrupted


class _Echo(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 102

    def __getitem__(self, index: int) -> int:
        return index


def test_mixture_resume_is_exact_with_prefetching_workers():
    """Workers prefetch indices ahead of the trainer; the trainer's advance() is what counts."""

    def loader(sampler):
        return torch.utils.data.DataLoader(_Echo(), batch_size=4, sampler=sampler, num_workers=2, prefetch_factor=4)

    uninterrupted = [b.tolist() for b in itertools.islice(loader(MixtureSampler(GROUPS, RATIOS)), 6)]
    sampler = MixtureSampler(GROUPS, RATIOS)
    first = []
    for batch in itertools.islice(loader(sampler), 3):
        first.append(batch.tolist())
        sampler.advance(4)
    resumed = MixtureSampler(GROUPS, RATIOS)
    resumed.load_state_dict(sampler.state_dict())
    rest = [b.tolist() for b in itertools.islice(loader(resumed), 3)]
    assert first + rest == uninterrupted


def test_mixture_ranks_split_the_global_stream():
    """Rank r of W yields global samples position + k W + r: the ranks together are the single-process stream."""
    single = _take(MixtureSampler(GROUPS, RATIOS, seed=5), 200)
    ranks = [MixtureSampler(GROUPS, RATIOS, seed=5, rank=r, world_size=2) for r in range(2)]
    assert _take(ranks[0], 100) == single[0::2] and _take(ranks[1], 100) == single[1::2]
    for sampler in ranks:
        sampler.advance(10)  # ten steps of batch 1 on each rank = 20 global samples
    assert ranks[0].state_dict() == ranks[1].state_dict() == {"position": 20, "seed": 5}
    alone = MixtureSampler(GROUPS, RATIOS, seed=5)
    alone.load_state_dict(ranks[0].state_dict())  # resume on another world size
    assert _take(alone, 50) == single[20:70]
    with pytest.raises(ValueError, match="rank"):
        MixtureSampler(GROUPS, RATIOS, rank=2, world_size=2)


def test_mixture_rejects_unknown_datasets_and_bad_ratios():
    with pytest.raises(ValueError, match="StudioCapture") as err:
        MixtureSampler(GROUPS, {"ViewSweep": 0.5, "StudioCapture": 0.5})
    assert "ViewSweep (30 clips)" in str(err.value) and "PhoneCapture (2 clips)" in str(err.value)
    with pytest.raises(ValueError, match="Empty"):
        MixtureSampler({**GROUPS, "Empty": []}, {"Empty": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        MixtureSampler(GROUPS, {"ViewSweep": -1.0, "DynamicSweep": 1.0})
    with pytest.raises(ValueError, match="no dataset has a ratio"):
        MixtureSampler(GROUPS, {"ViewSweep": 0.0})


def test_mixture_over_the_tiny_dataset(tiny_dataset):
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), _config())
    sampler = MixtureSampler(group_by_dataset(dataset), {"ViewSweep": 0.5, "DynamicSweep": 0.5})
    datasets = Counter(dataset.clips[i].source.dataset for i in _take(sampler, 400))
    assert set(datasets) == {"ViewSweep", "DynamicSweep"} and min(datasets.values()) > 140
