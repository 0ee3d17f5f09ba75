"""Wan 2.1 video VAE wrapper (CONVENTIONS.md section 5).

Wraps diffusers' `AutoencoderKLWan`: 16 latent channels, 8x spatial and 4x causal temporal compression
(T = 1 + 4k frames -> 1 + k latent frames: frame 0 alone, then chunks of 4). Latents leave `encode_*` normalised
per channel exactly as diffusers' Wan pipelines do, `(z - mean) * (1 / std)`, and `decode` inverts that.

diffusers is imported lazily so `import factorportrait.vae` stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

__all__ = [
    "LATENT_CHANNELS",
    "SPATIAL_COMPRESSION",
    "TEMPORAL_COMPRESSION",
    "WanVideoVAE",
    "frames_to_tensor",
    "latent_frames",
    "tensor_to_frames",
]

LATENT_CHANNELS = 16
SPATIAL_COMPRESSION = 8
TEMPORAL_COMPRESSION = 4
_VALID_T_EXAMPLES = "1, 5, 9, 13, 25, 49, 81"

# Weight files diffusers' `from_pretrained` can load (plain or sharded).
_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)


# ----------------------------------------------------------------------------------------------------------------------
# Shape helpers and validation
# ----------------------------------------------------------------------------------------------------------------------


def latent_frames(num_frames: int) -> int:
    """Latent frame count of a `num_frames`-frame video: 1 + (T - 1) // 4; T must be 1 + 4k."""
    _check_num_frames(num_frames)
    return 1 + (num_frames - 1) // TEMPORAL_COMPRESSION


def _check_num_frames(num_frames: int) -> None:
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_COMPRESSION != 0:
        raise ValueError(
            f"The Wan VAE is causal with 4x temporal compression: the frame count must be 1 + 4k, got T={num_frames} "
            f"(valid examples: {_VALID_T_EXAMPLES}; nearest valid: {_nearest_valid_t(num_frames)})."
        )


def _nearest_valid_t(num_frames: int) -> str:
    lower = max(1, 1 + ((num_frames - 1) // TEMPORAL_COMPRESSION) * TEMPORAL_COMPRESSION)
    upper = lower + TEMPORAL_COMPRESSION
    return str(lower) if lower == num_frames else f"{lower} or {upper}"


def _check_video(frames: Tensor, name: str = "frames") -> None:
    """Validate a pixel video [B, 3, T, H, W]."""
    if not isinstance(frames, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, 3, T, H, W], got {type(frames).__name__}.")
    if frames.ndim != 5:
        raise ValueError(f"{name} must be [B, 3, T, H, W] (5 dims), got shape {tuple(frames.shape)}.")
    _, c, t, h, w = frames.shape
    if c != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels in dim 1 ([B, 3, T, H, W]), got {c} (shape {tuple(frames.shape)})."
        )
    _check_num_frames(t)
    _check_hw(h, w)


def _check_hw(h: int, w: int) -> None:
    if h % SPATIAL_COMPRESSION or w % SPATIAL_COMPRESSION or h <= 0 or w <= 0:
        raise ValueError(
            f"Height and width must be positive multiples of {SPATIAL_COMPRESSION} (8x spatial compression), "
            f"got H={h}, W={w}."
        )


# ----------------------------------------------------------------------------------------------------------------------
# uint8 frames <-> [-1, 1] tensors
# ----------------------------------------------------------------------------------------------------------------------


def frames_to_tensor(
    frames: np.ndarray | Tensor, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """uint8 frames [T, H, W, 3] (numpy or torch) -> video tensor [1, 3, T, H, W] in [-1, 1]."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, Tensor):
        raise TypeError(f"frames must be a numpy array or torch.Tensor [T, H, W, 3], got {type(frames).__name__}.")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 in [0, 255], got dtype {frames.dtype}.")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] (RGB, channels last), got shape {tuple(frames.shape)}.")
    x = frames.to(device=device).permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, T, H, W]
    # Scale in float32 first so low-precision dtypes only round once.
    return (x.float() / 127.5 - 1.0).to(dtype)


def tensor_to_frames(video: Tensor) -> np.ndarray:
    """Video tensor [1, 3, T, H, W] or [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3] (numpy)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"tensor_to_frames takes one video ([1, 3, T, H, W]), got batch {video.shape[0]}.")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [1, 3, T, H, W] or [3, T, H, W], got shape {tuple(video.shape)}.")
    x = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, 3]


# ----------------------------------------------------------------------------------------------------------------------
# The VAE
# ----------------------------------------------------------------------------------------------------------------------


def tiny_vae_config(base_dim: int = 8) -> dict[str, Any]:
    """A small random `AutoencoderKLWan` config for tests/CPU presets, keeping Wan 2.1's compression and z_dim.

    dim_mult needs 4 entries (3 spatial downsamples = 8x) and temperal_downsample two Trues (4x); the decoder halves
    channels at each upsample, so base_dim must be even.
    """
    return {
        "base_dim": base_dim,
        "z_dim": LATENT_CHANNELS,
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    }


class WanVideoVAE:
    """Frozen Wan 2.1 VAE: pixel videos [B, 3, T, H, W] in [-1, 1] <-> normalised latents [B, 16, F, H/8, W/8].

    Composition around a diffusers `AutoencoderKLWan` (`.model`). Weights are frozen (`requires_grad_(False)`,
    eval mode) because FactorPortrait never trains the VAE; gradients still flow to the inputs if they need them.
    """

    def __init__(self, model: AutoencoderKLWan, freeze: bool = True) -> None:
        cfg = model.config
        # The shape maths below (and the chunking inside diffusers' _encode) assumes the Wan 2.1 layout.
        spatial = 2 ** (len(cfg.dim_mult) - 1)
        temporal = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        if spatial != SPATIAL_COMPRESSION or temporal != TEMPORAL_COMPRESSION or cfg.get("patch_size") is not None:
            raise ValueError(
                "WanVideoVAE expects the Wan 2.1 VAE layout (8x spatial, 4x temporal, no patchify); got "
                f"dim_mult={list(cfg.dim_mult)} ({spatial}x), temperal_downsample={list(cfg.temperal_downsample)} "
                f"({temporal}x), patch_size={cfg.get('patch_size')}."
            )
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(
                f"latents_mean/latents_std need z_dim={cfg.z_dim} entries, got "
                f"{len(cfg.latents_mean)}/{len(cfg.latents_std)}."
            )
        self.model = model
        if freeze:
            self.model.eval().requires_grad_(False)

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        subfolder: str | None = "vae",
        torch_dtype: torch.dtype = torch.float32,
        variant: str | None = None,
    ) -> WanVideoVAE:
        """Load from a LOCAL diffusers folder (e.g. a Wan2.1-*-Diffusers checkout); never touches the hub.

        `path/subfolder` must hold config.json and diffusion_pytorch_model.safetensors (or .bin / sharded index).
        fp32 is the default because the Wan VAE is numerically sensitive in bf16 (diffusers' examples keep it fp32).
        """
        root = Path(path).expanduser()
        folder = root / subfolder if subfolder else root
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Wan VAE folder not found: {folder} (expected a local diffusers folder with "
                f"{folder / 'config.json'} and {folder / _WEIGHT_FILES[0]})."
            )
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"Wan VAE config not found: expected {folder / 'config.json'}.")
        # Any diffusers weight file (plain, sharded index or variant, e.g. diffusion_pytorch_model.fp16.safetensors).
        if not any(folder.glob("diffusion_pytorch_model*")):
            raise FileNotFoundError(f"Wan VAE weights not found in {folder}: expected e.g. {', '.join(_WEIGHT_FILES)}.")

        from diffusers import AutoencoderKLWan

        model = AutoencoderKLWan.from_pretrained(
            str(root), subfolder=subfolder, torch_dtype=torch_dtype, variant=variant, local_files_only=True
        )
        return cls(model)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], torch_dtype: torch.dtype = torch.float32) -> WanVideoVAE:
        """Randomly initialised VAE from an `AutoencoderKLWan` config dict (unknown diffusers keys are ignored)."""
        from diffusers import AutoencoderKLWan

        model = AutoencoderKLWan.from_config(dict(config))
        if model.dtype != torch_dtype:  # skip the no-op cast (diffusers warns on every ModelMixin.to(dtype))
            model = model.to(torch_dtype)
        return cls(model)

    @classmethod
    def tiny(cls, seed: int = 0, base_dim: int = 8, **overrides: Any) -> WanVideoVAE:
        """Small random VAE (~0.2M params) with the real 8x/4x compression and 16 channels, for tests/CPU presets."""
        config = {**tiny_vae_config(base_dim), **overrides}
        # Fork the RNG so building a tiny VAE is deterministic and does not disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls.from_config(config)

    # -- properties / device handling -----------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def z_dim(self) -> int:
        return int(self.model.config.z_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> WanVideoVAE:
        """Move/cast the wrapped model in place; returns self."""
        # a dtype argument (even None) makes diffusers warn about fp32-only modules: pass only what changes
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            self.model.to(**kwargs)
        return self

    def enable_tiling(self, **kwargs: Any) -> WanVideoVAE:
        """Spatial tiling for big frames (kwargs: tile_sample_min_height/width, tile_sample_stride_height/width)."""
        self.model.enable_tiling(**kwargs)
        return self

    def disable_tiling(self) -> WanVideoVAE:
        self.model.disable_tiling()
        return self

    def enable_slicing(self) -> WanVideoVAE:
        """Encode/decode one batch element at a time to cut peak memory."""
        self.model.enable_slicing()
        return self

    def disable_slicing(self) -> WanVideoVAE:
        self.model.disable_slicing()
        return self

    # -- shapes ---------------------------------------------------------------------------------------------------

    @staticmethod
    def latent_frames(num_frames: int) -> int:
        """1 + (T - 1) // 4; raises ValueError unless T = 1 + 4k."""
        return latent_frames(num_frames)

    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int, int]:
        """[B, 16, 1 + (T-1)//4, H/8, W/8] for a [B, 3, T, H, W] video."""
        _check_hw(height, width)
        return (
            batch,
            self.z_dim,
            latent_frames(num_frames),
            height // SPATIAL_COMPRESSION,
            width // SPATIAL_COMPRESSION,
        )

    # -- normalisation --------------------------------------------------------------------------------------------

    def _mean_inv_std(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel mean and 1/std as [1, C, 1, 1, 1] in `like`'s device/dtype (built like diffusers' pipeline)."""
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean).view(shape).to(like.device, like.dtype)
        inv_std = (1.0 / torch.tensor(self.config.latents_std)).view(shape).to(like.device, like.dtype)
        return mean, inv_std

    def normalize(self, latents: Tensor) -> Tensor:
        """Raw VAE latents [B, 16, F, h, w] -> normalised: (z - mean) * (1 / std), as pipeline_wan_i2v does."""
        self._check_latents(latents)
        mean, inv_std = self._mean_inv_std(latents)
        return (latents - mean) * inv_std

    def denormalize(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, F, h, w] -> raw: z / (1 / std) + mean (pipeline_wan's exact inverse)."""
        self._check_latents(latents)
        mean, inv_std = self._mean_inv_std(latents)
        return latents / inv_std + mean

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must be [B, {self.z_dim}, F, h, w], got shape {tuple(latents.shape)}.")

    # -- encode / decode ------------------------------------------------------------------------------------------

    def encode_video(self, frames: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Pixel video [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, 16, 1 + (T-1)//4, H/8, W/8].

        Uses the posterior mean (diffusers' "argmax" mode) unless `sample=True`, which draws with `generator`.
        Latents come back in the VAE's dtype and device.
        """
        _check_video(frames)
        x = frames.to(device=self.device, dtype=self.dtype)
        posterior = self.model.encode(x).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return self.normalize(z)

    def encode_image(self, image: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Image [B, 3, H, W] in [-1, 1] -> normalised latents [B, 16, 1, H/8, W/8] (encoded as a 1-frame video)."""
        if not isinstance(image, Tensor) or image.ndim != 4:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must be [B, 3, H, W], got {shape}.")
        return self.encode_video(image.unsqueeze(2), sample=sample, generator=generator)

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, F, h, w] -> frames [B, 3, 1 + 4(F-1), 8h, 8w] clamped to [-1, 1]."""
        self._check_latents(latents)
        z = self.denormalize(latents.to(device=self.device, dtype=self.dtype))
        video = self.model.decode(z).sample
        # diffusers clamps in the plain path; clamp again so tiled decoding gives the same guarantee.
        return video.clamp(-1.0, 1.0)

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"WanVideoVAE(base_dim={cfg.base_dim}, z_dim={cfg.z_dim}, dim_mult={list(cfg.dim_mult)}, "
            f"dtype={self.dtype}, device={self.device})"
        )
