"""2D facial landmark conditioning (paper Sec. 8.2, ablation C3: landmarks instead of the expression controller).

Pipeline: ``LandmarkEncoder`` turns K landmarks per video frame (the paper: 238; our synthetic data: the 68-point
iBUG layout, K is the model's `num_landmarks`) into per-point features with alternating
spatial (points of one frame) and temporal (frames of one point) self-attention;
``group_landmarks_by_latent_frame`` pools them onto the DiT's latent frames (reference frame first, then the
VAE's 1 + 4 + 4 ... temporal grouping); ``FrameCrossAttention`` is the cross-attention layer added to each DiT
block, in which the tokens of latent frame f attend only to the landmark tokens of latent frame f.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cameras import TEMPORAL_FACTOR as VAE_TEMPORAL_STRIDE
from .cameras import latent_frame_count

NUM_LANDMARKS = 238


def _sinusoidal(positions: int, dim: int) -> torch.Tensor:
    """[positions, dim] fixed sin/cos table (dim even or odd; odd drops the last cos column)."""
    half = (dim + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


class _SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block over sequences [N, S, dim] (self-attention + MLP, both residual)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, S, dim] -> [N, S, dim]
        n, s, d = x.shape
        # [N, S, 3, H, hd] -> 3 x [N, H, S, hd]
        q, k, v = self.qkv(self.norm1(x)).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, s, d)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class LandmarkEncoder(nn.Module):
    """Landmark sequences [B, T, P, 2] (coordinates in [-1, 1]) -> per-point features [B, T, P, dim].

    Each point is embedded as linear(x, y) + a learned per-point embedding (which landmark it is) + a fixed
    sinusoidal frame-index encoding (without it temporal attention is permutation-equivariant over frames and
    cannot tell forward from backward motion). A point flagged invisible (`visible` False: occluded, behind the
    head, or dropped in training) has its coordinates zeroed and a learned "hidden" embedding added instead, so it
    keeps its token (fixed attention shapes) but carries no position. Then ``layers`` pairs of (spatial attention
    over the P points of each frame, temporal attention over the T frames of each point); the paper uses 2 + 2.
    """

    def __init__(self, num_points: int = NUM_LANDMARKS, dim: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.num_points = num_points
        self.dim = dim
        self.coord_embed = nn.Linear(2, dim)
        self.point_embed = nn.Parameter(torch.randn(num_points, dim) * 0.02)
        self.hidden_embed = nn.Parameter(torch.randn(dim) * 0.02)
        self.spatial = nn.ModuleList(_SelfAttentionBlock(dim, heads) for _ in range(layers))
        self.temporal = nn.ModuleList(_SelfAttentionBlock(dim, heads) for _ in range(layers))
        # Final norm so the cross-attention keys/values see features of a stable scale.
        self.norm_out = nn.LayerNorm(dim)

    @staticmethod
    def mix_points(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
        """Spatial step: ``block`` attends over the P points of each frame separately. [B, T, P, C] -> same."""
        b, t, p, c = x.shape
        return block(x.reshape(b * t, p, c)).view(b, t, p, c)

    @staticmethod
    def mix_frames(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
        """Temporal step: ``block`` attends over the T frames of each point separately. [B, T, P, C] -> same."""
        b, t, p, c = x.shape
        y = block(x.permute(0, 2, 1, 3).reshape(b * p, t, c))  # [B*P, T, C]
        return y.view(b, p, t, c).permute(0, 2, 1, 3)

    def forward(
        self,
        landmarks: torch.Tensor,  # [B, T, P, 2]
        visible: torch.Tensor | None = None,  # [B, T, P] bool; None: all visible
    ) -> torch.Tensor:  # [B, T, P, dim]
        if landmarks.ndim != 4 or landmarks.shape[2] != self.num_points or landmarks.shape[3] != 2:
            raise ValueError(f"landmarks must have shape [B, T, {self.num_points}, 2], got {tuple(landmarks.shape)}")
        t = landmarks.shape[1]
        frame_pe = _sinusoidal(t, self.dim).to(device=landmarks.device, dtype=self.point_embed.dtype)
        if visible is None:
            x = self.coord_embed(landmarks)
        else:
            if tuple(visible.shape) != tuple(landmarks.shape[:3]):
                raise ValueError(
                    f"visible must have shape {tuple(landmarks.shape[:3])} like landmarks, got {tuple(visible.shape)}"
                )
            shown = visible.to(landmarks.dtype)[..., None]  # [B, T, P, 1]
            x = self.coord_embed(landmarks * shown) + (1 - shown) * self.hidden_embed
        x = x + self.point_embed[None, None] + frame_pe[None, :, None]
        for spatial, temporal in zip(self.spatial, self.temporal, strict=True):
            x = self.mix_frames(self.mix_points(x, spatial), temporal)
        return self.norm_out(x)


def group_landmarks_by_latent_frame(features: torch.Tensor) -> torch.Tensor:
    """Pool per-video-frame features [B, T, P, C] onto the DiT's frames -> [B, 1 + F_lat, P, C].

    Index 0 is the prepended clean reference latent frame: it has no landmarks, so it gets zeros. Latent frame 0
    (index 1) is video frame 0 alone; latent frame j >= 1 (index 1 + j) covers video frames 4j-3 .. 4j, matching
    the Wan VAE's temporal grouping, and each point is averaged over those 4 frames. So K = P tokens per latent
    frame; the temporal attention in the encoder already carries the within-chunk motion into each frame.
    T must be 1 + 4k.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape [B, T, P, C], got {tuple(features.shape)}")
    b, t, p, c = features.shape
    k = latent_frame_count(t) - 1
    first = features[:, :1]  # [B, 1, P, C]: latent frame 0 = video frame 0
    chunks = features[:, 1:].reshape(b, k, VAE_TEMPORAL_STRIDE, p, c).mean(dim=2)  # [B, k, P, C]
    reference = torch.zeros_like(first)
    return torch.cat([reference, first, chunks], dim=1)


class FrameCrossAttention(nn.Module):
    """Cross-attention added to one DiT block: the tokens of latent frame f attend only to context[:, f].

    Returns the residual update only (the caller adds it to the hidden states). The output projection is
    zero-initialised, so a fresh layer returns exact zeros and the DiT computes what the pretrained model
    computes; gradients still reach ``to_out`` at init, so the layer can learn.
    """

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim = dim
        self.context_dim = context_dim
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # pre-norm on the query (the DiT's hidden states)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        # RMS-normalised q/k across heads, as in Wan's own attention: keeps the attention logits bounded.
        self.norm_q = nn.RMSNorm(dim, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim, eps=1e-6)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor, frame_tokens: int) -> torch.Tensor:
        """hidden_states [B, L = F * frame_tokens, D] (frame-major), context [B, F, K, C] -> update [B, L, D]."""
        if hidden_states.ndim != 3 or hidden_states.shape[2] != self.dim:
            raise ValueError(f"hidden_states must have shape [B, L, {self.dim}], got {tuple(hidden_states.shape)}")
        if context.ndim != 4 or context.shape[3] != self.context_dim:
            raise ValueError(f"context must have shape [B, F, K, {self.context_dim}], got {tuple(context.shape)}")
        b, l, d = hidden_states.shape
        _, f, k, c = context.shape
        if context.shape[0] != b:
            raise ValueError(f"batch mismatch: hidden_states has B={b}, context has B={context.shape[0]}")
        if frame_tokens < 1 or l != f * frame_tokens:
            raise ValueError(
                f"hidden_states has L={l} tokens, expected F * frame_tokens = {f} * {frame_tokens} = {f * frame_tokens}"
            )
        hd = d // self.heads
        # Frame-major layout -> one attention batch element per (sample, latent frame): [B*F, H, h*w, hd].
        q = self.norm_q(self.to_q(self.norm(hidden_states)))
        q = q.view(b * f, frame_tokens, self.heads, hd).transpose(1, 2)
        # Keys/values are projected once per frame ([B*F, H, K, hd]), never expanded per query token.
        ctx = context.reshape(b * f, k, c)
        key = self.norm_k(self.to_k(ctx)).view(b * f, k, self.heads, hd).transpose(1, 2)
        value = self.to_v(ctx).view(b * f, k, self.heads, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, key, value)  # [B*F, H, h*w, hd]
        return self.to_out(out.transpose(1, 2).reshape(b, l, d))
