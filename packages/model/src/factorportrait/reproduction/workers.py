"""Steps side by side: independent steps (VAE / instruments, latent caches, fine-tuning chains, evaluations) run in
`parallel` worker processes, each with threads // parallel torch intra-op threads.

Why processes: the reproduction's models are small (width 128), and a 2-core CPU does little more work per
second with two intra-op threads than with one (40 iterations of a fine-tuning stage: 19.0 s with 2 threads,
18.8 s with 1), while two one-thread processes side by side do 1.69x the DiT steps and 1.24x the VAE steps of
one two-thread process (`benchmarks/parallel_steps.py`, results in benchmarks/results/parallel_steps.md).
Python threads in one process would share the GIL between the steps' Python-heavy small ops, so each worker is
its own (spawned) process. On a GPU (parallel = 1) every step
runs in the calling process as before.

Workers are spawned at the start of the run and import the chain's modules then, so a long run uses the code as it
was at its start even if the working tree changes while it runs. Steps stay deterministic: a step's result depends
on its seed and inputs, not on which worker ran it or when (only the intra-op thread count, fixed per preset,
changes float summation order).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def _init_worker(threads: int, log_level: int, modules: Sequence[str]) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [worker] %(message)s")
    for name in modules:
        importlib.import_module(name)


def _ready() -> bool:
    return True


class Workers:
    """`call(fn, ...)` runs fn in a worker process (or inline when parallel = 1); `side_by_side(groups)` runs
    groups of steps (callables that call `call`) up to `parallel` at a time, in the given order."""

    def __init__(self, parallel: int, threads: int, modules: Sequence[str] = ()) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.parallel = parallel
        self.pool: ProcessPoolExecutor | None = None
        if parallel > 1:
            self.pool = ProcessPoolExecutor(
                max_workers=parallel,
                mp_context=multiprocessing.get_context("spawn"),  # fork after torch's thread pool is unsafe
                initializer=_init_worker,
                initargs=(max(1, threads // parallel), logging.getLogger().getEffectiveLevel(), tuple(modules)),
            )
            # spawn every worker now (the pool starts them on demand), so they import today's code
            for future in [self.pool.submit(_ready) for _ in range(parallel)]:
                future.result()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) in a worker (fn and its arguments must pickle: module-level functions)."""
        if self.pool is None:
            return fn(*args, **kwargs)
        return self.pool.submit(fn, *args, **kwargs).result()

    def side_by_side(self, groups: Sequence[Callable[[], None]]) -> None:
        """Run each group (a callable running its steps in order) with up to `parallel` groups at once, started
        in list order (put the longest first); re-raises the first group's error after all have stopped."""
        if self.pool is None:
            for group in groups:
                group()
            return
        with ThreadPoolExecutor(max_workers=self.parallel) as threads:
            futures = [threads.submit(group) for group in groups]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
