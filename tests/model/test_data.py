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


@pytest.mark.parametrize(
    ("height", "width", "crop_x", "crop_y"),
    [(32, 48, 0, 8), (48, 32, 8, 0)],  # scale 0.75 to 48x48, then crop rows 8..39 / columns 8..39
)
def test_resize_crop_moves_image_and_intrinsics_together(tiny_dataset, height, width, crop_x, crop_y):
    """64x64 frames at a 32 x 48 (or 48 x 32) training size: scale 0.75 to 48x48, crop 8 px off both sides."""
    assert cover_crop(64, 64, height, width) == (48, 48, crop_y, crop_x)
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), _config(height=height, width=width))
    offsets = []
    for index in (1, 6, 14):
        item = dataset[index]
        source, start = dataset.clips[index]
        assert item["video"].shape == (3, 5, height, width)
        assert item["ray_features"].shape == (1536, 2, height // 8, width // 8)
        # Pixels: resize by hand, crop by hand.
        resized = F.interpolate(_decoded(source.rgb_path, start, 5), size=(48, 48), mode="bilinear", antialias=True)
        expected = (resized[:, :, crop_y : crop_y + height, crop_x : crop_x + width] / 127.5 - 1).permute(1, 0, 2, 3)
        torch.testing.assert_close(item["video"], expected, atol=PIXEL_ATOL, rtol=0)
        # Cameras: the world origin (head centre) projected with the original K, then scaled and shifted by hand,
        # lands where the adjusted K projects it.
        origin = source.viewmat[start : start + 5, :3, 3].astype(np.float64)  # [5, 3] camera-frame origin
        K0 = source.K[start : start + 5].astype(np.float64)
        u = K0[:, 0, 0] * origin[:, 0] / origin[:, 2] + K0[:, 0, 2]
        v = K0[:, 1, 1] * origin[:, 1] / origin[:, 2] + K0[:, 1, 2]
        by_hand = np.stack([0.75 * u - crop_x, 0.75 * v - crop_y], axis=-1)  # [5, 2]
        K = item["K"].numpy().astype(np.float64)
        projected = np.einsum("tij,tj->ti", K, origin)
        np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], by_hand, atol=1e-4)
        # And the head is there in the image: the silhouette's horizontal centroid sits near the projected head
        # centre (a missed crop offset would put it 8 px away in the column crop). Only x: the neck and shoulders
        # below the head pull the vertical centroid down, while the bust is symmetric left to right.
        foreground = item["video"].mean(0) < 0.9  # [5, H, W], white background
        for t in range(5):
            _, xs = torch.nonzero(foreground[t], as_tuple=True)
            offsets.append(float(xs.float().mean()) + 0.5 - by_hand[t, 0])
    assert abs(float(np.mean(offsets))) < 3.0, np.mean(offsets)


def _plucker_by_hand(K: np.ndarray, c2w: np.ndarray, H: int, W: int) -> np.ndarray:  # [6, H, W]
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_c = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1)
    d = (d_c / np.linalg.norm(d_c, axis=-1, keepdims=True)) @ c2w[:3, :3].T
    return np.concatenate([np.cross(c2w[:3, 3], d), d], -1).transpose(2, 0, 1)


def test_rays_are_relative_to_the_reference_frames_own_camera(tiny_dataset):
    """64x64 rows at 32 (H) x 48 (W): K scaled by 0.75, cy shifted by 8; reference from another sequence."""
    rows = read_manifest_rows(tiny_dataset)
    dataset = ClipDataset(rows, _config(frames=9, height=32, width=48, reference="other_sequence"))
    index = 3
    item = dataset[index]
    source, start = dataset.clips[index]
    ref_source, ref_frame = dataset.reference_for(index)
    assert ref_source.sequence_id != source.sequence_id and item["reference_sequence_id"] == ref_source.sequence_id

    def adjusted(K: np.ndarray) -> np.ndarray:
        K = K.astype(np.float64).copy()
        K[..., :2, :] *= 0.75
        K[..., 1, 2] -= 8
        return K

    # First generated frame: the Plücker map of w2c_ref c2w_0, everything by hand (general inverses, float64).
    c2w_0 = np.linalg.inv(source.viewmat[start].astype(np.float64))
    w2c_ref = ref_source.viewmat[ref_frame].astype(np.float64)
    relative = w2c_ref @ c2w_0
    angle = np.degrees(np.arccos(np.clip((np.trace(relative[:3, :3]) - 1) / 2, -1, 1)))
    assert angle > 5.0  # the two cameras differ: the identity would be wrong here
    expected = _plucker_by_hand(adjusted(source.K[start]), relative, 32, 48)
    rays_0 = F.pixel_shuffle(item["ray_features"][:384, 0][None], 8)[0]  # frame 0 of latent frame 0, [6, 32, 48]
    np.testing.assert_allclose(rays_0.numpy(), expected, atol=2e-5)
    # A later frame too (frame 5 = latent frame 2, position 0), and the reference frame's identity rays.
    c2w_5 = np.linalg.inv(source.viewmat[start + 5].astype(np.float64))
    rays_5 = F.pixel_shuffle(item["ray_features"][:384, 2][None], 8)[0]
    np.testing.assert_allclose(
        rays_5.numpy(), _plucker_by_hand(adjusted(source.K[start + 5]), w2c_ref @ c2w_5, 32, 48), atol=2e-5
    )
    reference = F.pixel_shuffle(item["reference_rays"][:384, 0][None], 8)[0]
    np.testing.assert_allclose(
        reference.numpy(), _plucker_by_hand(adjusted(ref_source.K[ref_frame]), np.eye(4), 32, 48), atol=1e-6
    )
    np.testing.assert_allclose(item["reference_c2w"].numpy(), np.linalg.inv(w2c_ref), atol=1e-6)


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


# ---------------------------------------------------------------------------------------------- schema 1.1
_V11 = ("world_frame", "num_landmarks", "landmark_layout", "landmarks", "landmark_visible")


def _set_column(table: pa.Table, name: str, values: list, type_: pa.DataType) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(index, pa.field(name, type_), pa.array(values, type_))


def test_schema_1_0_manifests_still_load(tiny_dataset, tmp_path):
    def to_1_0(table: pa.Table, source: str) -> pa.Table:
        table = _with_version(table.drop_columns(list(_V11)), "1.0")
        return _set_column(table, "source", [source] * table.num_rows, pa.string())

    _rewrite(tiny_dataset, tmp_path / "synthetic", lambda t: to_1_0(t, "synthetic"))
    rows = read_manifest_rows(tmp_path / "synthetic")
    assert [r.sequence_id for r in rows] == SEQUENCES
    # 1.0 synthetic rows: one world frame per identity (datagen always rendered an avatar in its canonical frame)
    assert all(r.world_frame == r.identity and r.landmarks is None and r.num_landmarks == 0 for r in rows)
    _rewrite(tiny_dataset, tmp_path / "phone", lambda t: to_1_0(t, "phone"))
    phone = read_manifest_rows(tmp_path / "phone")
    assert all(r.world_frame is None for r in phone)
    # No shared world frame: "other_sequence" falls back to the same sequence.
    dataset = ClipDataset(phone, _config(reference="other_sequence"))
    assert all(dataset.reference_for(i)[0] is dataset.clips[i].source for i in range(len(dataset)))


def test_schema_1_1_landmarks_and_world_frames_are_read(tiny_dataset, tmp_path):
    rows = read_manifest_rows(tiny_dataset)
    table = pq.read_table(tiny_dataset / "manifest" / "manifest.parquet")
    for i, row in enumerate(rows):
        plain = table.slice(i, 1).to_pylist()[0]
        assert row.world_frame == plain["world_frame"] == row.identity
        assert (row.landmark_layout, row.num_landmarks) == ("ibug68", 68)
        assert row.landmarks.shape == (17, 68, 2) and row.landmark_visible.shape == (17, 68)
        flat = np.asarray(plain["landmarks"], np.float32)  # [T, 2K] = (u0, v0, u1, v1, ...)
        np.testing.assert_array_equal(row.landmarks[:, 5], flat[:, 10:12])
        np.testing.assert_array_equal(row.landmark_visible, np.asarray(plain["landmark_visible"], bool))
    # Separate world frames inside one identity: references only come from rows of the same world frame.
    by_id = {r.sequence_id: r for r in rows}
    frames = [f"{seq.split('/')[0]}/{'a' if 'dynamic' in seq else 'b'}" for seq in SEQUENCES]
    _rewrite(tiny_dataset, tmp_path / "split", lambda t: _set_column(t, "world_frame", frames, pa.string()))
    split = ClipDataset(read_manifest_rows(tmp_path / "split"), _config())
    for index, (source, _) in enumerate(split.clips):
        ref, _ = split.reference_for(index)
        assert ref.world_frame == source.world_frame
        assert (ref is source) == ("viewsweep" in source.sequence_id)  # alone in its world frame
    _rewrite(tiny_dataset, tmp_path / "null", lambda t: _set_column(t, "world_frame", [None] * 6, pa.string()))
    alone = ClipDataset(read_manifest_rows(tmp_path / "null"), _config())
    assert all(alone.reference_for(i)[0] is alone.clips[i].source for i in range(len(alone)))
    assert by_id  # the unsplit rows above all shared one world frame per identity


def _draw_dots(points: np.ndarray, size: int) -> np.ndarray:  # [T, K, 2] -> uint8 [T, size, size, 3]
    """White 4x4 squares centred on integer (u, v) points on black: each dot's centroid is exactly (u, v)."""
    frames = np.zeros((points.shape[0], size, size, 3), np.uint8)
    for t, frame in enumerate(points):
        for u, v in frame.astype(int):
            frames[t, v - 2 : v + 2, u - 2 : u + 2] = 255
    return frames


def test_landmarks_are_cropped_and_resized_like_the_frames(tiny_dataset, tmp_path):
    """A landmark drawn onto the 64x64 frames lands on the same spot of the 32 (H) x 48 (W) training frames."""
    from datagen.video import write_video

    root = tmp_path / "dots"
    shutil.copytree(tiny_dataset, root)
    rows = read_manifest_rows(root)
    T, K = 17, 68
    rng = np.random.default_rng(0)
    points = rng.integers(8, 56, size=(T, K, 2)).astype(np.float32)  # points 3.. are not drawn
    t = np.arange(T)
    # Points 0..2 move a pixel per frame and stay > 10 px apart, inside the crop (rows 11 ..< 53 of the 64 px frame).
    points[:, 0] = np.stack([12 + t, np.full(T, 20)], -1)
    points[:, 1] = np.stack([np.full(T, 46), 22 + t], -1)
    points[:, 2] = np.stack([30 - t // 2, np.full(T, 44)], -1)
    visible = rng.random((T, K)) > 0.3
    write_video(_draw_dots(points[:, :3], 64), rows[0].rgb_path, fps=25.0, crf=0)

    def edit(table: pa.Table) -> pa.Table:
        flat = [points.reshape(T, 2 * K).tolist()] + table.column("landmarks").to_pylist()[1:]
        flags = [visible.tolist()] + table.column("landmark_visible").to_pylist()[1:]
        table = _set_column(table, "landmarks", flat, pa.list_(pa.list_(pa.float32())))
        return _set_column(table, "landmark_visible", flags, pa.list_(pa.list_(pa.bool_())))

    (root / "manifest" / "manifest.parquet").unlink()
    shutil.rmtree(root / "manifest" / "parts")
    shutil.move(str(_rewrite(tiny_dataset, tmp_path / "m", edit)), root / "manifest" / "manifest.parquet")
    dataset = ClipDataset(read_manifest_rows(root), _config(height=32, width=48, landmarks=True))
    assert dataset.landmark_layout == ("ibug68", 68)
    index = next(i for i, c in enumerate(dataset.clips) if c.source.sequence_id == SEQUENCES[0] and c.start == 4)
    item = dataset[index]
    assert item["landmarks"].shape == (5, 68, 2) and item["landmark_visible"].dtype == torch.bool
    np.testing.assert_array_equal(item["landmark_visible"].numpy(), visible[4:9])
    brightness = (item["video"].mean(0) + 1) / 2  # [5, 32, 48] in [0, 1]
    for t in range(5):
        for k in range(3):
            u, v = item["landmarks"][t, k].tolist()
            # by hand: scale 0.75 (64 -> 48), crop 8 rows off the top
            assert (u, v) == pytest.approx((0.75 * points[4 + t, k, 0], 0.75 * points[4 + t, k, 1] - 8), abs=1e-5)
            window = brightness[t, int(v) - 3 : int(v) + 4, int(u) - 3 : int(u) + 4]
            ys, xs = torch.meshgrid(
                torch.arange(int(v) - 3, int(v) + 4), torch.arange(int(u) - 3, int(u) + 4), indexing="ij"
            )
            weight = window / window.sum()
            centroid = (float((weight * (xs + 0.5)).sum()), float((weight * (ys + 0.5)).sum()))
            assert centroid == pytest.approx((u, v), abs=0.2), (t, k)


def test_landmark_training_needs_one_layout(tiny_dataset, tmp_path):
    def relabel(table: pa.Table) -> pa.Table:
        return _set_column(table, "landmark_layout", ["ibug68"] * 5 + ["other"], pa.string())

    _rewrite(tiny_dataset, tmp_path / "mixed", relabel)
    with pytest.raises(ValueError, match="different landmark layouts.*'ibug68' with 68 points.*'other' with 68"):
        ClipDataset(read_manifest_rows(tmp_path / "mixed"), _config(landmarks=True))

    def drop_one(table: pa.Table) -> pa.Table:
        table = _set_column(table, "num_landmarks", [0] + [68] * 5, pa.int32())
        for name, type_ in (("landmark_layout", pa.string()), ("landmarks", pa.list_(pa.list_(pa.float32())))):
            table = _set_column(table, name, [None] + table.column(name).to_pylist()[1:], type_)
        return table

    _rewrite(tiny_dataset, tmp_path / "some", drop_one)
    dataset = ClipDataset(read_manifest_rows(tmp_path / "some"), _config(landmarks=True))
    assert dataset.without_landmarks == [SEQUENCES[0]] and {c.source.sequence_id for c in dataset.clips} == set(
        SEQUENCES[1:]
    )


def test_a_row_without_normal_video_gets_black_no_surface_normals(tiny_dataset, tmp_path):
    def no_normals(table: pa.Table) -> pa.Table:
        return _set_column(table, "normal_path", [None] * table.num_rows, pa.string())

    _rewrite(tiny_dataset, tmp_path, no_normals)
    for path in (tiny_dataset / "videos").rglob("*"):
        if path.is_file() and "_normal" not in path.name:
            (tmp_path / path.relative_to(tiny_dataset)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / path.relative_to(tiny_dataset))
    item = ClipDataset(read_manifest_rows(tmp_path), _config())[0]
    # black = (0, 0, 0) in the video encoding = -1 after normalisation, the background of a rendered normal map
    assert torch.equal(item["normals"], torch.full((3, 5, 32, 32), -1.0))
