"""The expression controller (paper Sec. 4.2; CONVENTIONS 6).

Per-frame 128-d expression codes -> two self-attention layers over time -> features grouped like the VAE
groups frames (frame 0 alone, then chunks of 4) -> one vector per latent frame, added to the shared timestep
embedding so that every latent frame gets its own AdaLN shift / scale / gate. The last projection is
zero-initialised: a fresh controller adds exactly nothing, so the model starts as the pretrained Wan.

Codes are multiplied by `code_scale` before the input projection. Codes of the demo rig vary by ~0.05 per
dimension, while the sinusoidal frame positions added after the projection have unit amplitude: unscaled, the
temporal layers see mostly frame indices and the expression is a ~4 % perturbation of their input. Training
sets the scale from its data (`expression_code_scale`, 1 / RMS of the per-dimension standard deviations), so the
codes of any encoder enter at unit scale; it is saved in the model config. A scale is not an architecture change:
a scaled code space is the same code space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .cameras import latent_frame_count


def sinusoidal_positions(num_frames: int, dim: int, device=None, dtype=None) -> Tensor:  # [T, dim]
    """Fixed sinusoidal frame positions: any clip length works, no table to outgrow."""
    position = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_frames, dim, device=device)
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs)
    return table.to(dtype or torch.float32)


def code_scale_of(codes: Tensor) -> float:  # [N, D] -> scalar
    """1 / RMS over dimensions of the per-dimension standard deviation of codes (1.0 when they do not vary)."""
    std = codes.double().std(dim=0, unbiased=False)
    rms = float(std.pow(2).mean().sqrt())
    return 1.0 / rms if rms > 1e-8 else 1.0


def group_frames_like_the_vae(features: Tensor, temporal_factor: int = 4) -> Tensor:
    """[B, T, C] -> [B, 1 + (T-1)/4, 4*C]: frame 0 repeated `temporal_factor` times, then chunks of 4."""
    b, t, c = features.shape
    latent_frame_count(t)  # validates T = 1 + 4k
    first = features[:, :1].expand(b, temporal_factor, c)
    stacked = torch.cat([first, features[:, 1:]], dim=1)  # [B, 4 * F_lat, C]
    return stacked.reshape(b, -1, temporal_factor * c)


class ExpressionController(nn.Module):
    """Expression codes [B, T, code_dim] -> per-latent-frame timestep-embedding offsets [B, 1 + F_lat, out_dim].

    Index 0 is the prepended reference frame, which gets no offset (it shows the reference's own expression).
    """

    def __init__(
        self,
        code_dim: int = 128,
        out_dim: int = 1536,
        hidden_dim: int = 512,
        heads: int = 8,
        layers: int = 2,
        temporal_factor: int = 4,
        code_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not code_scale > 0:
            raise ValueError(f"ExpressionController: code_scale must be > 0, got {code_scale}")
        self.code_dim, self.temporal_factor, self.code_scale = code_dim, temporal_factor, float(code_scale)
        self.in_proj = nn.Linear(code_dim, hidden_dim)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            heads,
            dim_feedforward=4 * hidden_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.temporal = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)
        self.group_proj = nn.Linear(temporal_factor * hidden_dim, out_dim)
        nn.init.zeros_(self.group_proj.weight)
        nn.init.zeros_(self.group_proj.bias)

    def forward(self, codes: Tensor) -> Tensor:
        if codes.dim() != 3 or codes.shape[-1] != self.code_dim:
            raise ValueError(f"expression codes must be [B, T, {self.code_dim}], got {tuple(codes.shape)}")
        x = self.in_proj(codes * self.code_scale) + sinusoidal_positions(
            codes.shape[1], self.in_proj.out_features, codes.device, codes.dtype
        )
        x = self.norm(self.temporal(x))
        per_latent = self.group_proj(group_frames_like_the_vae(x, self.temporal_factor))  # [B, F_lat, out_dim]
        reference = per_latent.new_zeros(per_latent.shape[0], 1, per_latent.shape[2])
        return torch.cat([reference, per_latent], dim=1)
