"""Exponential moving average of a module's trainable parameters, kept in (at least) float32.

Typical use::

    ema = EMA(model, decay=0.999)
    ...  # after every optimizer step
    ema.update(model)
    ...  # validation with the averaged weights
    with ema.swapped(model):  # == store + copy_to ... restore
        run_validation(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def unwrap_module(module: nn.Module) -> nn.Module:
    """The bare module under DDP / FSDP-style `.module` wrappers and torch.compile's `._orig_mod`.

    Unwrapping keeps parameter names free of "module." / "_orig_mod." prefixes, so an EMA made on the bare
    model works on the wrapped one and its state dict loads into either.
    """
    while True:
        inner = getattr(module, "module", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        return module


class EMA:
    """Shadow copy of the parameters that require grad at construction time.

    decay_t = min(decay, (1 + t) / (10 + t)) with t the number of updates done so far when `warmup`
    (early weights are mostly noise and should be forgotten fast), else decay.
    """

    def __init__(
        self,
        module: nn.Module,
        decay: float = 0.999,
        warmup: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        # float32 at least: a bf16 shadow could not absorb updates of (1 - 0.999) * param.
        self.shadow: dict[str, Tensor] = {
            name: p.detach().to(device=device or p.device, dtype=torch.promote_types(p.dtype, torch.float32)).clone()
            for name, p in unwrap_module(module).named_parameters()
            if p.requires_grad
        }
        self._backup: dict[str, Tensor] | None = None

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def _params(self, module: nn.Module, fn: str) -> dict[str, nn.Parameter]:
        """The module's parameters named by the shadow; KeyError naming any that are missing."""
        params = dict(unwrap_module(module).named_parameters())
        missing = [name for name in self.shadow if name not in params]
        if missing:
            raise KeyError(f"EMA.{fn}: module has no parameter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return params

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow <- d shadow + (1 - d) param, d = `current_decay()`; call after each optimizer step."""
        d = self.current_decay()
        params = self._params(module, "update")
        for name, s in self.shadow.items():
            s.lerp_(params[name].detach().to(device=s.device, dtype=s.dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into the module (cast to each parameter's dtype and device)."""
        params = self._params(module, "copy_to")
        for name, s in self.shadow.items():
            params[name].copy_(s)

    @torch.no_grad()
    def store(self, module: nn.Module) -> None:
        """Keep a copy of the module's current (trained) weights, to be put back by `restore`."""
        params = self._params(module, "store")
        self._backup = {name: params[name].detach().clone() for name in self.shadow}

    @torch.no_grad()
    def restore(self, module: nn.Module) -> None:
        """Put back the weights saved by `store` (and drop the copy)."""
        if self._backup is None:
            raise RuntimeError("EMA.restore: nothing stored; call store(module) first")
        params = self._params(module, "restore")
        for name, b in self._backup.items():
            params[name].copy_(b)
        self._backup = None

    @contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """Within the block the module holds the EMA weights; the trained weights come back on exit."""
        self.store(module)
        try:
            self.copy_to(module)
            yield module
        finally:
            self.restore(module)

    def state_dict(self) -> dict[str, Any]:
        """{"decay", "warmup", "num_updates", "shadow": {name: tensor}} (tensors shared, not copied)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a `state_dict()`; the parameter names must match exactly (tensors keep this EMA's device/dtype)."""
        shadow = state["shadow"]
        missing = sorted(set(self.shadow) - set(shadow))
        unexpected = sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA.load_state_dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, s in self.shadow.items():
            if tuple(shadow[name].shape) != tuple(s.shape):
                raise ValueError(
                    f"EMA.load_state_dict: {name} has shape {tuple(shadow[name].shape)}, expected {tuple(s.shape)}"
                )
            s.copy_(shadow[name])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
