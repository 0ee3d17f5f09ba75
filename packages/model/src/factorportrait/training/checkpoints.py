"""Atomic training-state checkpoints (independent of accelerate).

Layout of one checkpoint, DIR/checkpoint-<step:08d>/:

* ``<part>.safetensors`` for a part whose state dict is a flat {str: Tensor} (the model weights), else
  ``<part>.pt`` (torch.save; optimizer / scheduler / EMA state dicts); a part given as None is not written.
* ``state.json``: {"format_version", "step", "parts": {part: file name or null}, "extra": extra}.

Atomicity: everything is written (and fsync'ed) into a hidden sibling ``.tmp-checkpoint-<step>-<random>`` that
is renamed to its final name only when complete, so a visible ``checkpoint-*`` folder is always whole. A crash
mid-write leaves only the ``.tmp-*`` folder: `latest_checkpoint` ignores it and `cleanup_partial` removes it.
Old checkpoints are pruned by first renaming them to a hidden name, so pruning is atomic too.

In multi-process training only the main process should save, prune or clean up; RNG states are per process.

Typical use::

    save_checkpoint(out / "checkpoints", step,
                    {"model": model_sd, "optimizer": opt_sd, "scheduler": sched_sd, "ema": ema_sd or None},
                    {"sampler": {...}, "rng": capture_rng_state(), "config": {...}}, keep_last=3)
    path = latest_checkpoint(out / "checkpoints")
    tensors, extra = load_checkpoint(path)
    restore_rng_state(extra["rng"])

`extra` is stored as JSON: tuples come back as lists, dict keys as strings; `pathlib.Path` and numpy scalars /
arrays are converted to str / numbers / lists, anything else that JSON cannot hold is a TypeError.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors
from torch import Tensor

#: Bumped when the layout changes incompatibly.
FORMAT_VERSION = 1
STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
_DELETING_PREFIX = ".tmp-deleting-checkpoint-"

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Part names become file names: no path separators, no hidden files, and not the state file itself.
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------------------------- RNG states
def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().contiguous().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """JSON-serialisable RNG states of python `random`, numpy's global RNG, torch CPU and (if available) CUDA."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    return {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {
            "kind": str(np_kind),
            "keys": [int(k) for k in np_keys],
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (also after a JSON round trip); CUDA states only where CUDA is available."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        # A resumed job may see fewer devices than the one that saved: restore those it has.
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda[: torch.cuda.device_count()]])


# ------------------------------------------------------------------------------------------------- helpers
def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(
        f"save_checkpoint: extra holds a {type(obj).__name__}, which JSON cannot store"
        + ("; put tensors in `tensors` instead" if isinstance(obj, Tensor) else "")
    )


def _is_flat_tensor_dict(sd: Any) -> bool:
    return (
        isinstance(sd, dict)
        and len(sd) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items())
    )


def _for_safetensors(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, no shared storage (safetensors refuses tied weights: each gets its own copy)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in sd.items():
        v = v.detach().to("cpu")
        ptr = v.untyped_storage().data_ptr()
        if not v.is_contiguous() or (v.numel() > 0 and ptr in seen):
            v = v.contiguous().clone()
        if v.numel() > 0:
            seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def _fsync_path(path: Path) -> None:
    """Flush a file or directory to disk, so a renamed checkpoint survives a power loss, not only a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _step_of(path: Path) -> int:
    m = _CHECKPOINT_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not named checkpoint-<step>")
    return int(m.group(1))


def _remove_atomically(path: Path) -> None:
    """Hide a checkpoint with one rename, then delete it: a crash mid-delete leaves only a hidden folder."""
    hidden = path.with_name(f"{_DELETING_PREFIX}{path.name[len(CHECKPOINT_PREFIX) :]}-{secrets.token_hex(4)}")
    os.rename(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ public API
def list_checkpoints(directory: Path | str) -> list[Path]:
    """Complete checkpoints (checkpoint-<step>/ holding state.json) in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if _CHECKPOINT_RE.match(p.name) and p.is_dir() and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=_step_of)


def latest_checkpoint(directory: Path | str) -> Path | None:
    """The complete checkpoint with the highest step, or None; hidden .tmp-* folders never count."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def cleanup_partial(directory: Path | str) -> list[Path]:
    """Remove the hidden folders left by interrupted saves or prunes; returns what was removed.

    Call it from the main process before training resumes, never while another process may be saving.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if p.name.startswith((TMP_PREFIX, _DELETING_PREFIX)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def save_checkpoint(
    directory: Path | str,
    step: int,
    tensors: dict[str, dict[str, Any] | None],
    extra: dict[str, Any],
    keep_last: int | None = 3,
) -> Path:
    """Write DIR/checkpoint-<step:08d>/ atomically, then prune to the `keep_last` newest; returns its path.

    tensors: {part name: state dict or None}; flat {str: Tensor} dicts go to safetensors, others to torch.save.
    extra: JSON-serialisable metadata (sampler state, `capture_rng_state()`, config ...).
    keep_last: how many checkpoints to keep, the one just written always among them (None keeps all).
    A checkpoint of the same step that already exists is replaced.
    """
    directory = Path(directory)
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    step = int(step)
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"save_checkpoint: keep_last must be >= 1 or None, got {keep_last}")
    for name in tensors:
        if not isinstance(name, str) or not _PART_RE.match(name) or name == Path(STATE_FILE).stem:
            raise ValueError(f"save_checkpoint: part name {name!r} cannot be used as a file name")

    parts: dict[str, str | None] = {}
    for name, sd in tensors.items():
        if sd is None:
            parts[name] = None
        else:
            parts[name] = f"{name}.safetensors" if _is_flat_tensor_dict(sd) else f"{name}.pt"
    # Serialise the metadata first: a non-JSON `extra` fails here, before anything touches the disk.
    state_text = json.dumps(
        {"format_version": FORMAT_VERSION, "step": step, "parts": parts, "extra": extra},
        default=_json_default,
        indent=1,
    )

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = directory / f"{TMP_PREFIX}{step}-{secrets.token_hex(4)}"
    tmp.mkdir()
    replaced: Path | None = None
    try:
        for name, sd in tensors.items():
            fname = parts[name]
            if fname is None:
                continue
            if fname.endswith(".safetensors"):
                _save_safetensors(_for_safetensors(sd), tmp / fname, metadata={"format": "pt"})
            else:
                torch.save(sd, tmp / fname)
        (tmp / STATE_FILE).write_text(state_text, encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp)
        if final.exists():
            # A directory cannot be renamed over a non-empty one: hide the old one, put it back on failure.
            replaced = directory / f"{_DELETING_PREFIX}{step}-{secrets.token_hex(4)}"
            os.rename(final, replaced)
        try:
            os.rename(tmp, final)
        except BaseException:
            if replaced is not None:
                os.rename(replaced, final)
            raise
        _fsync_path(directory)
    except BaseException:
        # A Python-level failure cleans up after itself; only a hard kill leaves the .tmp folder behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)

    if keep_last is not None:
        others = [p for p in list_checkpoints(directory) if p != final]
        for old in sorted(others, key=_step_of, reverse=True)[keep_last - 1 :]:
            try:
                _remove_atomically(old)
            except OSError as e:  # the new checkpoint is safe; a failed prune must not fail the save
                warnings.warn(f"save_checkpoint: could not remove {old}: {e}", stacklevel=2)
    return final


def _read_state(path: Path, fn: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{fn}: checkpoint folder {path} does not exist")
    state_file = path / STATE_FILE
    if not state_file.is_file():
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"{fn}: {path} is missing {STATE_FILE} (it holds {present}); not a complete checkpoint written by "
            "save_checkpoint"
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{fn}: {state_file} is not valid JSON: {e}") from e
    missing_keys = [k for k in ("format_version", "step", "parts", "extra") if k not in state]
    if missing_keys:
        raise ValueError(f"{fn}: {state_file} lacks the key(s) {missing_keys}")
    if state["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{fn}: {path} has format {state['format_version']}, this code reads <= {FORMAT_VERSION}")
    return state


def checkpoint_step(path: Path | str) -> int:
    """The training step recorded in a checkpoint's state.json."""
    return int(_read_state(Path(path), "checkpoint_step")["step"])


def load_checkpoint(
    path: Path | str,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> tuple[dict[str, dict[str, Any] | None], dict[str, Any]]:
    """(tensors, extra) as given to `save_checkpoint` (parts saved as None come back as None).

    Raises FileNotFoundError naming state.json or the part files that are missing.
    weights_only=True refuses to unpickle arbitrary objects (state dicts of tensors and numbers load fine).
    """
    path = Path(path)
    state = _read_state(path, "load_checkpoint")
    parts: dict[str, str | None] = state["parts"]
    missing = {name: f for name, f in parts.items() if f is not None and not (path / f).is_file()}
    if missing:
        raise FileNotFoundError(f"load_checkpoint: {path} is missing the file(s) of part(s) {missing}")
    tensors: dict[str, dict[str, Any] | None] = {}
    for name, fname in parts.items():
        if fname is None:
            tensors[name] = None
        elif fname.endswith(".safetensors"):
            tensors[name] = _load_safetensors(path / fname, device=str(map_location))
        else:
            tensors[name] = torch.load(path / fname, map_location=map_location, weights_only=weights_only)
    return tensors, state["extra"]
