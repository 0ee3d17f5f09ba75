"""Worker processes for side-by-side steps: results come back from another process equal to the inline result,
groups overlap in time, and a failing group's error surfaces after the others finish."""

from __future__ import annotations

import os
import time

import pytest

from factorportrait.reproduction.workers import Workers


def _seeded_sum(seed: int) -> tuple[int, float, int]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return os.getpid(), float(torch.randn(1000, generator=generator).sum()), torch.get_num_threads()


def _nap(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _fail(message: str) -> None:
    raise ValueError(message)


@pytest.fixture(scope="module")
def workers():
    with Workers(parallel=2, threads=2) as pool:
        yield pool


def test_a_worker_returns_what_the_step_computes_inline(workers):
    pid, value, threads = workers.call(_seeded_sum, 0)
    _, inline, _ = _seeded_sum(0)
    assert pid != os.getpid()
    assert value == inline  # seed 0, same stream in another process
    assert threads == 1  # threads // parallel


def test_groups_run_side_by_side_and_errors_surface_after_all_finish(workers):
    spans: list[tuple[float, float]] = []
    finished: list[str] = []

    def sleeper(name: str):
        def group() -> None:
            spans.append(workers.call(_nap, 1.0))
            finished.append(name)

        return group

    def failing() -> None:
        workers.call(_fail, "stage 3 broke")

    workers.side_by_side([sleeper("a"), sleeper("b")])
    (a0, a1), (b0, b1) = spans
    assert max(a0, b0) < min(a1, b1)  # the two naps overlapped
    with pytest.raises(ValueError, match="stage 3 broke"):
        workers.side_by_side([failing, sleeper("c")])
    assert "c" in finished


def test_one_worker_runs_inline():
    with Workers(parallel=1, threads=2) as inline:
        pid, _, _ = inline.call(_seeded_sum, 0)
    assert pid == os.getpid()
    with pytest.raises(ValueError, match="parallel"):
        Workers(parallel=0, threads=2)
