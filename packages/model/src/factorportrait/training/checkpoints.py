"""Training-state checkpoints through accelerate: `save_state` / `load_state`, made atomic and pruned.

Layout: RUN/checkpoints/checkpoint-<step:08d>/ is one `accelerator.save_state` folder (the model and optimiser
sharded under FSDP (`fsdp_state_dict_type: SHARDED_STATE_DICT`), full under DDP / one process; the objects given
to `register_for_checkpointing` (LR scheduler, mixture sampler); every rank's RNG states), plus
``ema-rank<r>.pt`` (this rank's EMA shadow: its FSDP shards, or the whole EMA) and ``step.json``.

Atomicity: every rank writes into the hidden sibling ``.tmp-checkpoint-<step>``; after a barrier the main
process writes ``step.json`` last and renames the folder, so a visible ``checkpoint-*`` with step.json is whole.
A kill mid-write leaves only the ``.tmp-*`` folder: `latest_checkpoint` ignores it and `cleanup_partial`
removes it. Old checkpoints are pruned by first renaming them to a hidden name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

STEP_FILE = "step.json"
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
_DELETING_PREFIX = ".tmp-deleting-checkpoint-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _step_of(path: Path) -> int:
    m = _CHECKPOINT_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not named checkpoint-<step>")
    return int(m.group(1))


def list_checkpoints(directory: Path | str) -> list[Path]:
    """Complete checkpoints (checkpoint-<step>/ holding step.json) in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if _CHECKPOINT_RE.match(p.name) and p.is_dir() and (p / STEP_FILE).is_file()
    ]
    return sorted(found, key=_step_of)


def latest_checkpoint(directory: Path | str) -> Path | None:
    """The complete checkpoint with the highest step, or None; hidden .tmp-* folders never count."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def checkpoint_step(path: Path | str) -> int:
    return int(json.loads((Path(path) / STEP_FILE).read_text())["step"])


def cleanup_partial(directory: Path | str) -> list[Path]:
    """Remove the hidden folders left by interrupted saves or prunes (main process, before training starts)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if p.name.startswith((TMP_PREFIX, _DELETING_PREFIX)):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


def _remove_atomically(path: Path) -> None:
    hidden = path.with_name(f"{_DELETING_PREFIX}{path.name[len(CHECKPOINT_PREFIX) :]}")
    os.rename(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly FSDP-sharded DTensor) tensor, on the CPU."""
    return (t.to_local() if hasattr(t, "to_local") else t).detach().cpu()


def save_checkpoint(accelerator, directory: Path, step: int, ema=None, keep_last: int = 3) -> Path:
    """Collective: every rank calls it. Writes checkpoint-<step:08d>/ atomically and keeps the `keep_last` newest."""
    directory = Path(directory)
    final = directory / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = directory / f"{TMP_PREFIX}{step:08d}"  # the same name on every rank: they write into one folder
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if ema is not None:
        state = ema.state_dict()
        state["shadow_params"] = [_local(p) for p in state["shadow_params"]]
        torch.save(state, tmp / f"ema-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STEP_FILE).write_text(json.dumps({"step": step, "world_size": accelerator.num_processes}))
        if final.exists():
            _remove_atomically(final)
        os.rename(tmp, final)
        for old in list_checkpoints(directory)[:-keep_last]:
            try:
                _remove_atomically(old)
            except OSError as e:  # the new checkpoint is safe; a failed prune must not fail the save
                warnings.warn(f"could not remove {old}: {e}", stacklevel=2)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, ema=None) -> dict[str, Any]:
    """Collective: restores model, optimiser, registered objects, RNG (accelerate) and the EMA; returns step.json."""
    path = Path(path)
    info = json.loads((path / STEP_FILE).read_text())
    accelerator.load_state(str(path))
    if ema is not None:
        file = path / f"ema-rank{accelerator.process_index}.pt"
        if not file.exists():
            raise FileNotFoundError(f"{path}: no EMA state {file.name} (saved with EMA off, or by fewer processes)")
        state = torch.load(file, map_location="cpu", weights_only=True)
        shards = state.pop("shadow_params")
        current = [_local(p).shape for p in ema.shadow_params]
        if [s.shape for s in shards] != current:
            raise ValueError(f"{file}: EMA shards do not match this run (saved by {info.get('world_size')} processes)")
        for p, saved in zip(ema.shadow_params, shards, strict=True):
            (p.to_local() if hasattr(p, "to_local") else p).copy_(saved)
        ema.load_state_dict(state)  # counters and decay; the shadow was copied in place above
    return info
