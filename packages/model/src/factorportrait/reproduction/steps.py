"""Resumable steps: a step is done when its outputs exist and its done-marker JSON says so.

Markers live in RUN/steps/<name>.done.json: {"name", "wall_s", "finished_utc", "outputs", "summary"}. Every file
is written under a temporary name and renamed, so a killed run leaves either a whole file or none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("factorportrait.reproduction")


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move a finished temporary folder into place (removing an older partial one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


class StepRunner:
    """Runs named steps once; a rerun skips a step whose marker and outputs exist and returns its summary."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.marker_dir = self.run_dir / "steps"
        self.summaries: dict[str, dict[str, Any]] = {}

    def marker(self, name: str) -> Path:
        return self.marker_dir / f"{name}.done.json"

    def is_done(self, name: str) -> bool:
        path = self.marker(name)
        if not path.is_file():
            return False
        data = json.loads(path.read_text())
        return all((self.run_dir / out).exists() for out in data.get("outputs", []))

    def run(self, name: str, fn: Callable[[], dict[str, Any]], outputs: list[str]) -> dict[str, Any]:
        """fn() -> summary dict; `outputs` are paths relative to the run folder that must exist afterwards."""
        if self.is_done(name):
            data = json.loads(self.marker(name).read_text())
            log.info("step %s: done already (%.0f s), skipped", name, data["wall_s"])
            self.summaries[name] = data
            return data
        log.info("step %s: running", name)
        tick = time.perf_counter()
        summary = fn()
        wall = time.perf_counter() - tick
        missing = [out for out in outputs if not (self.run_dir / out).exists()]
        if missing:
            raise RuntimeError(f"step {name} finished but did not write {missing}")
        data = {
            "name": name,
            "wall_s": wall,
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "outputs": outputs,
            "summary": summary,
        }
        write_json_atomic(self.marker(name), data)
        log.info("step %s: done in %.0f s", name, wall)
        self.summaries[name] = data
        return data


def warmup_cosine(optimizer, total: int, warmup_fraction: float = 0.05):
    """LambdaLR: linear warm-up over max(1, fraction x total) steps, then cosine decay to zero at `total`."""
    import math

    import torch

    warm = max(1, int(warmup_fraction * total))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
