"""A deterministic, resumable, rank-aware sampler that mixes datasets by fixed ratios (CONVENTIONS 8).

The stream. There is one global, infinite stream of samples; sample i (i = 0, 1, 2, ...) is a pure function of
(seed, i): rng = np.random.default_rng([seed, i]) picks a dataset with probability = its ratio, then a clip of that
dataset uniformly. Nothing depends on earlier samples, so any position can be reached without replaying.

Ranks. `position` counts GLOBAL samples consumed by all ranks together. Rank r of W yields the global samples
    position + k * W + r,   k = 0, 1, 2, ...
i.e. at training step s with per-rank batch size B, rank r's j-th sample is global sample (s * B + j) * W + r.
All ranks together consume exactly the samples a single process (W = 1) would, interleaved, none twice.

Position contract (exact with DataLoader prefetching). The sampler never moves its own position while yielding:
a DataLoader with workers pulls indices ahead of what the trainer has consumed, and the sampler cannot know how
many of those batches were actually used. The consumer owns the position: after each consumed batch the trainer
calls `advance(batch_size)` (per-rank count; the sampler multiplies by world_size), checkpoints `state_dict()`,
and on resume calls `load_state_dict()` BEFORE creating the DataLoader iterator, whose `iter(sampler)` then
starts exactly at the first unconsumed sample. Because `position` is global, a run may resume on a different
number of ranks and still continue the same stream.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from itertools import count

import numpy as np
import torch

__all__ = ["INFINITE_LENGTH", "MixtureSampler"]

log = logging.getLogger(__name__)

#: What len() reports for an infinite sampler: DataLoader and loggers call len(), and "infinite" must be an int.
INFINITE_LENGTH = 2**62


class MixtureSampler(torch.utils.data.Sampler[int]):
    """Clip indices drawn from `groups` (dataset name -> clip indices) with the dataset probabilities `ratios`.

    ratios: dataset name -> weight > 0 (normalised to sum 1; a weight of 0 leaves that dataset out). Every named
    dataset with a positive weight must be in `groups` with at least one clip.
    num_samples: None -> `iter()` never ends (len() is INFINITE_LENGTH); an int -> each `iter()` yields that many
    samples (per rank) from the current position, an "epoch" of the same infinite stream.
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[int]],
        ratios: Mapping[str, float],
        seed: int = 0,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"MixtureSampler: seed must be an integer >= 0, got {seed!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"MixtureSampler: world_size must be an integer >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"MixtureSampler: rank must be in [0, {world_size}), got {rank!r}")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
            raise ValueError(f"MixtureSampler: num_samples must be an integer or None, got {num_samples!r}")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"MixtureSampler: num_samples must be >= 0, got {num_samples}")
        for name, ratio in ratios.items():
            if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not math.isfinite(ratio) or ratio < 0:
                raise ValueError(f"MixtureSampler: ratio of {name!r} must be a finite number >= 0, got {ratio!r}")
        used = {name: float(r) for name, r in ratios.items() if r > 0}
        missing = sorted(name for name in used if not groups.get(name))
        if missing:
            available = ", ".join(f"{n} ({len(c)} clips)" for n, c in sorted(groups.items()) if len(c)) or "none"
            raise ValueError(f"MixtureSampler: ratios name datasets with no clips: {missing}; available: {available}")
        if not used:
            raise ValueError(f"MixtureSampler: no dataset has a ratio > 0: {dict(ratios)}")

        # Sorted names: the stream must not depend on the order a config file listed the datasets in.
        self.names = sorted(used)
        total = sum(used.values())
        self.ratios = {name: used[name] / total for name in self.names}
        self._cumulative = np.cumsum([self.ratios[n] for n in self.names])  # [datasets]
        self._cumulative[-1] = 1.0  # round-off must not leave a sliver above the last dataset
        self._groups = [np.asarray(groups[n], np.int64) for n in self.names]
        self.seed = seed
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.position = 0  # global samples consumed by all ranks (see the module docstring)

    def sample(self, i: int) -> int:
        """Clip index of global sample i: a pure function of (seed, i)."""
        rng = np.random.default_rng([self.seed, i])
        which = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        group = self._groups[min(which, len(self._groups) - 1)]
        return int(group[rng.integers(group.size)])

    def __iter__(self) -> Iterator[int]:
        start = self.position + self.rank  # snapshot: advancing during iteration must not shift this iterator
        steps = count() if self.num_samples is None else range(self.num_samples)
        for k in steps:
            yield self.sample(start + k * self.world_size)

    def __len__(self) -> int:
        return INFINITE_LENGTH if self.num_samples is None else self.num_samples

    def advance(self, n: int) -> None:
        """Mark n more samples PER RANK as consumed (the trainer calls this with its batch size after each batch)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"MixtureSampler.advance: n must be an integer >= 0, got {n!r}")
        self.position += n * self.world_size

    def state_dict(self) -> dict[str, int]:
        """{"position": global samples consumed, "seed": int} (JSON-serialisable; the same on every rank)."""
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue the saved stream: its position and its seed (overrides this sampler's seed, with a warning)."""
        position, seed = int(state["position"]), int(state["seed"])
        if position < 0 or seed < 0:
            raise ValueError(f"MixtureSampler.load_state_dict: position and seed must be >= 0, got {dict(state)}")
        if seed != self.seed:
            log.warning(
                "MixtureSampler: resuming the saved stream of seed %d (this sampler was built with %d)", seed, self.seed
            )
        self.seed = seed
        self.position = position
