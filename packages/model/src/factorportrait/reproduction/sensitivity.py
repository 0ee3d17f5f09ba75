"""Does a model use a control, and use it correctly? One-step velocity predictions with each control swapped.

The swap tests judge whole sampled videos through metrics; this looks one level below, at the model's velocity
prediction for fixed noise at a few noise levels, on the held-out clips of every control mode:
  - change = RMS of (prediction with the control swapped - prediction with the true control): zero means the
    model ignores that input;
  - error = RMS of (prediction - true velocity) with the true and with the swapped control: a control is used
    correctly when swapping it makes the error larger, not just different.
Swaps and donors are those of the swap tests (`evaluate.donor_indices`). Latent units: the flow target has RMS
about 1.4 here (unit-variance noise minus a latent of RMS ~1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ReproConfig

SIGMAS = (0.3, 0.7)


@torch.no_grad()
def condition_sensitivity(
    config: ReproConfig, run_dir: Path, models: dict[str, Path], splits: dict[str, dict[str, list[dict]]]
) -> dict[str, Any]:
    """{variant: {"true_error": e, "swaps": {control: {"change": c, "error": e'}}}}, means over modes and SIGMAS."""
    from ..training.flow_matching import noisy_latents, timesteps_from_sigmas, velocity_target
    from ..transformer import FactorPortraitTransformer
    from ..vae import WanVideoVAE
    from .evaluate import SWAPS, Conditions, donor_indices

    device = torch.device(config.device)
    vae = WanVideoVAE.from_pretrained(Path(run_dir) / "wan").to(device)
    modes = splits.get("heldout_ids", {})
    conditions = {mode: Conditions(clips, vae, device) for mode, clips in modes.items()}
    out: dict[str, Any] = {}
    for variant, model_dir in models.items():
        model = FactorPortraitTransformer.from_pretrained(str(model_dir)).to(device).eval()
        true_errors: list[float] = []
        swaps: dict[str, dict[str, list[float]]] = {s: {"change": [], "error": []} for s in SWAPS}
        for mode, cond in conditions.items():
            x0 = cond.latents["latents"]
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
            target = velocity_target(x0, noise)

            def predict(inputs: dict, sigma: float, x0=x0, noise=noise, model=model) -> torch.Tensor:
                sigmas = torch.full((x0.shape[0],), sigma, device=device)
                return model(
                    latents=noisy_latents(x0, noise, sigmas), timestep=timesteps_from_sigmas(sigmas), **inputs
                ).sample.float()

            true_inputs = cond.inputs(model, torch.float32)
            for sigma in SIGMAS:
                base = predict(true_inputs, sigma)
                true_errors.append(_rms(base - target))
                for swap in SWAPS:
                    donors, donor_clips = donor_indices(modes[mode], swap, modes.get("all-dynamic"))
                    source = cond if donor_clips is modes[mode] else conditions["all-dynamic"]
                    swapped = predict(cond.inputs(model, torch.float32, swap, donors, source), sigma)
                    swaps[swap]["change"].append(_rms(swapped - base))
                    swaps[swap]["error"].append(_rms(swapped - target))
        out[variant] = {
            "true_error": float(np.mean(true_errors)),
            "swaps": {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in swaps.items()},
        }
    return out


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())
