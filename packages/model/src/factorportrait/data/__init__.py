"""Training data: manifest reading (pyarrow only, never `datagen`), clip loading and the dataset mixture."""

from .clips import BrokenClips, ClipDataset, ClipDatasetConfig, ClipRef, collate_clips, group_by_dataset
from .manifest import ClipSource, ManifestReadError, read_manifest_rows
from .mixture import MixtureSampler

__all__ = [
    "BrokenClips",
    "ClipDataset",
    "ClipDatasetConfig",
    "ClipRef",
    "ClipSource",
    "ManifestReadError",
    "MixtureSampler",
    "collate_clips",
    "group_by_dataset",
    "read_manifest_rows",
]
