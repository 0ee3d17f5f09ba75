"""Precomputed VAE latents of clips (`model-cache-latents`): shards of safetensors plus an index.

Encoding RGB, normal and reference frames with the Wan VAE dominates a training step's data cost; a cache
computed once per (dataset, frames, resolution, seed) lets training read latents instead of decoding videos.
Layout: CACHE/index.json ({"format": ..., "entries": {key: [shard file, slot]}, "config": ...}) and
CACHE/shard-00000.safetensors with tensors "<slot>.latents", "<slot>.normal_latents", "<slot>.reference_latent".
A clip's key names everything its latents depend on (sequence, start, reference frame, frames, size), so a
cache is never used for a different clip; training leaves out clips the cache lacks (`CachedClipDataset`).
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

# 2: rows without a normal video are encoded as black "no surface" frames (1 encoded mid-grey ones).
log = logging.getLogger(__name__)

FORMAT = "factorportrait-latent-cache/2"
LATENT_KEYS = ("latents", "normal_latents", "reference_latent")


def clip_key(
    sequence_id: str, start: int, reference_sequence_id: str, reference_frame: int, frames: int, height: int, width: int
) -> str:
    return f"{sequence_id}|{start}|{reference_sequence_id}|{reference_frame}|{frames}|{height}x{width}"


class LatentCache:
    """Read side: `get(key)` -> {latents [16,F,h,w], normal_latents [16,F,h,w], reference_latent [16,1,h,w]}."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.exists():
            raise FileNotFoundError(
                f"no latent cache at '{self.root}': expected {index_path} (run model-cache-latents)"
            )
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(
                f"{index_path}: format {index.get('format')!r}, expected {FORMAT!r}; rebuild the cache with "
                "model-cache-latents into a new folder"
            )
        self.entries: dict[str, list] = index["entries"]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        shard, slot = entry
        return {name: _open(str(self.root / shard)).get_tensor(f"{slot}.{name}") for name in LATENT_KEYS}


@lru_cache(maxsize=16)
def _open(path: str):
    from safetensors import safe_open

    return safe_open(path, framework="pt")


def build_latent_cache(
    dataset, vae, out: str | Path, shard_size: int = 64, device: str | torch.device = "cpu", progress: bool = True
) -> dict[str, Any]:
    """Encode every clip of `dataset` (a ClipDataset) with `vae` into shards under `out`; returns a summary.

    Shards and the index are written under temporary names and renamed; an existing index is extended, so an
    interrupted run resumes where it stopped.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"format": FORMAT, "entries": {}}
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path}: format {index.get('format')!r}, expected {FORMAT!r}; use a new folder")
    entries: dict[str, list] = index["entries"]
    shard_id = len({shard for shard, _ in entries.values()})
    pending: dict[str, torch.Tensor] = {}
    pending_keys: list[str] = []
    skipped = encoded = 0

    def flush() -> None:
        nonlocal shard_id, pending, pending_keys
        if not pending_keys:
            return
        name = f"shard-{shard_id:05d}.safetensors"
        tmp = out / f".{name}.tmp"
        save_file(pending, str(tmp))
        os.replace(tmp, out / name)
        for slot, key in enumerate(pending_keys):
            entries[key] = [name, slot]
        tmp_index = out / ".index.json.tmp"
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)
        shard_id += 1
        pending, pending_keys = {}, []

    cfg = dataset.config
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc="caching latents", disable=not progress):
            item = dataset[i]
            if item is None:
                skipped += 1
                continue
            key = clip_key(
                item["sequence_id"],
                item["start"],
                item["reference_sequence_id"],
                item["reference_frame"],
                cfg.frames,
                cfg.height,
                cfg.width,
            )
            if key in entries:
                continue
            slot = len(pending_keys)
            pending[f"{slot}.latents"] = vae.encode_video(item["video"][None].to(device))[0].cpu().contiguous()
            pending[f"{slot}.normal_latents"] = vae.encode_video(item["normals"][None].to(device))[0].cpu().contiguous()
            pending[f"{slot}.reference_latent"] = (
                vae.encode_video(item["reference"][None].to(device))[0].cpu().contiguous()
            )
            pending_keys.append(key)
            encoded += 1
            if len(pending_keys) >= shard_size:
                flush()
    flush()
    index["config"] = {
        "frames": cfg.frames,
        "height": cfg.height,
        "width": cfg.width,
        "seed": cfg.seed,
        "reference": cfg.reference,
    }
    tmp_index = out / ".index.json.tmp"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, index_path)
    return {"encoded": encoded, "skipped_broken": skipped, "cached_total": len(entries)}


class CachedClipDataset(torch.utils.data.Dataset):
    """The clips of a ClipDataset that the cache holds, served as cached latents instead of decoded videos.

    Items carry "latents", "normal_latents", "reference_latent" in place of "video", "normals", "reference".
    Clips missing from the cache are left out (logged): a batch never mixes cached and decoded items, which
    collate could not stack and the trainer would encode differently. ValueError when the cache holds none.
    """

    def __init__(self, dataset, cache: LatentCache) -> None:
        self.dataset, self.cache = dataset, cache
        self.config = dataset.config
        self._keys = [self._key(i) for i in range(len(dataset))]
        self.indices = [i for i, key in enumerate(self._keys) if key in cache]  # into `dataset`
        missing = len(dataset) - len(self.indices)
        if not self.indices:
            raise ValueError(
                f"latent cache '{cache.root}' holds none of the {len(dataset)} training clips (another frame count, "
                "size, seed or data?): rebuild it with model-cache-latents for these settings"
            )
        if missing:
            log.warning(
                "latent cache '%s' lacks %d of %d clips: training on the %d cached ones (rebuild the cache to use all)",
                cache.root,
                missing,
                len(dataset),
                len(self.indices),
            )

    def _key(self, index: int) -> str:
        cfg = self.config
        source, start = self.dataset.clips[index]
        ref_source, ref_frame = self.dataset.reference_for(index)
        return clip_key(source.sequence_id, start, ref_source.sequence_id, ref_frame, cfg.frames, cfg.height, cfg.width)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def clips(self):
        return [self.dataset.clips[i] for i in self.indices]

    @property
    def broken(self):
        return self.dataset.broken

    @property
    def landmark_layout(self):
        return self.dataset.landmark_layout

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        inner = self.indices[index]
        latents = self.cache.get(self._keys[inner])
        return {**latents, **self.dataset.conditions(inner)}
