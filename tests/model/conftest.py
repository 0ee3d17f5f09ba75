"""Fixtures of the model tests: a tiny dataset rendered once per session by datagen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A dataset root with 2 demo avatars x (DynamicSweep: 2 sequences, ViewSweep: 1 sequence) x 17 frames, 64 px.

    Two run() calls into the same folder: the manifest then holds both modes (6 rows, sorted by sequence id).
    """
    from datagen.config import RenderConfig
    from datagen.runner import run

    root = tmp_path_factory.mktemp("tiny_dataset")
    threads = torch.get_num_threads()
    try:
        for mode, sequences in (("dynamicsweep", 2), ("viewsweep", 1)):
            # torch_threads: the CPU splatter is the cost here; workers=0 renders in this process.
            config = RenderConfig.for_mode(
                mode, sequences=sequences, frames=17, resolution=64, workers=0, backend="cpu", torch_threads=2
            )
            summary = run(config, ["demo-000", "demo-001"], root, progress=False)
            assert summary.failed == 0, summary.format()
    finally:
        torch.set_num_threads(threads)  # render_one sets the thread count of this process
    return root
