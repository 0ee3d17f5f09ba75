"""`FactorPortraitTransformer`: diffusers' Wan 2.1 video DiT with FactorPortrait's conditions (paper Sec. 4.2).

Condition fusion (CONVENTIONS 6): the model input is the channel concatenation
    [latent (16) | normal-map latent (16, unless use_normals=False) | ray features (1536)]
over 1 + F latent frames, where frame 0 is the prepended reference: its latent slot holds the clean reference
image latent, its normal slot the latent of an all-black "no surface" normal frame (`reference_normal_latent`,
`factorportrait.conditions.no_surface_latent`; zeros when not given) and its ray slot the identity camera's rays;
frames 1.. hold the noisy video latent, the driving normal-map latents and the Plücker features of the cameras
relative to the reference image's camera, with no reference content. The extra channels enter through new,
zero-initialised input channels of Wan's `patch_embedding`.

Expression (CONVENTIONS 5-6): per-frame codes go through `ExpressionController` to one vector per latent frame,
added to the shared timestep embedding; the AdaLN modulation is then computed per latent frame ([B, F, 6, D])
and broadcast over that frame's tokens, never per token. The C3 ablation replaces it with 2D landmarks injected by
added per-frame cross-attention layers: `landmarks` [B, T, K, 2] are pixel coordinates (u, v) in the generated
frames (8 w x 8 h pixels, pixel i spans [i, i + 1)), normalised here to [-1, 1] by that size; points flagged
invisible in `landmark_visible` [B, T, K] are zeroed and marked (`LandmarkEncoder`). The config records the
landmark layout (`landmark_layout`, `num_landmarks`) and refuses another (`check_landmark_layout`).

Training metadata in the config: `expression_dropout`, `reference_dropout`, `normal_dropout` are the condition
dropout probabilities the model was trained with (model-train writes them); the pipeline reads them to warn when
`--guidance-scale` is used with a model that never saw dropped expression conditions.

Every new parameter starts at zero so a fresh model computes exactly what the wrapped Wan computes on the same
latent sequence.
"""

from __future__ import annotations

import copy
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import Tensor, nn

from .cameras import latent_frame_count
from .expression import ExpressionController

LATENT_CHANNELS = 16
# A loaded WanTransformer3DModel that __init__ adopts instead of building a random one (`from_wan`).
_ADOPT_WAN: ContextVar[WanTransformer3DModel | None] = ContextVar("_ADOPT_WAN", default=None)
RAY_CHANNELS = 6 * 8 * 8 * 4  # Plücker (6) x pixel-unshuffle by 8 (64) x 4 frames per latent frame
EXPRESSION_MODES = ("codes", "landmarks", "none")

#: What every Wan 2.1 T2V transformer shares (diffusers `WanTransformer3DModel` arguments).
_WAN21_COMMON: dict[str, Any] = dict(
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)

#: Wan 2.1 T2V configurations, CONVENTIONS 5; "tiny" is the same architecture for CPU tests and presets.
WAN_CONFIGS: dict[str, dict[str, Any]] = {
    "1.3B": {
        **_WAN21_COMMON,
        "num_attention_heads": 12,
        "attention_head_dim": 128,
        "ffn_dim": 8960,
        "num_layers": 30,
        "text_dim": 4096,
        "freq_dim": 256,
        "rope_max_seq_len": 1024,
    },
    "14B": {
        **_WAN21_COMMON,
        "num_attention_heads": 40,
        "attention_head_dim": 128,
        "ffn_dim": 13824,
        "num_layers": 40,
        "text_dim": 4096,
        "freq_dim": 256,
        "rope_max_seq_len": 1024,
    },
    "tiny": {
        **_WAN21_COMMON,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "ffn_dim": 64,
        "num_layers": 2,
        "text_dim": 32,
        "freq_dim": 32,
        "rope_max_seq_len": 64,
    },
}


class FactorPortraitTransformer(ModelMixin, ConfigMixin):
    """Wan 2.1 DiT + condition fusion + expression controller (or the C3 landmark variant)."""

    _supports_gradient_checkpointing = True
    # FSDP wraps (and shards) each block: `FactorPortraitBlock` is Wan's block, called as a module.
    _no_split_modules = ["FactorPortraitBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]

    @register_to_config
    def __init__(
        self,
        wan_config: dict | None = None,
        use_normals: bool = True,
        use_rays: bool = True,
        expression_mode: str = "codes",
        expression_dim: int = 128,
        controller_hidden_dim: int = 512,
        controller_heads: int = 8,
        controller_layers: int = 2,
        expression_code_scale: float = 1.0,
        num_landmarks: int = 238,
        landmark_dim: int = 128,
        landmark_heads: int = 4,
        text_len: int = 512,
        landmark_layout: str | None = None,
        expression_dropout: float = 0.0,
        reference_dropout: float = 0.0,
        normal_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if expression_mode not in EXPRESSION_MODES:
            raise ValueError(f"expression_mode must be one of {EXPRESSION_MODES}, got {expression_mode!r}")
        wan_config = {k: v for k, v in dict(wan_config or WAN_CONFIGS["tiny"]).items() if not k.startswith("_")}
        if wan_config.get("in_channels", 16) != LATENT_CHANNELS or wan_config.get("image_dim") is not None:
            raise ValueError(
                "FactorPortraitTransformer wraps a Wan 2.1 T2V transformer (16 input channels, no "
                f"image embedding); got in_channels={wan_config.get('in_channels')}, "
                f"image_dim={wan_config.get('image_dim')}"
            )
        adopted = _ADOPT_WAN.get()
        self.wan = adopted if adopted is not None else WanTransformer3DModel(**wan_config)
        for block in self.wan.blocks:
            # Same parameters (and state-dict names) as Wan's block; only its forward takes per-frame modulation.
            block.__class__ = FactorPortraitBlock
        dim = self.wan.config.num_attention_heads * self.wan.config.attention_head_dim
        self.inner_dim = dim
        self._widen_patch_embedding(self.input_channels)
        # T2V cross-attention gets a fixed prompt embedding (zeros, or loaded with `set_prompt_embedding`).
        # A frozen parameter rather than a buffer: FSDP2 shards it and accelerate's rank-0 loading broadcasts it
        # (accelerate 1.15 cannot broadcast persistent buffers); its state-dict name is the same either way.
        self.prompt_embeds = nn.Parameter(torch.zeros(1, text_len, self.wan.config.text_dim), requires_grad=False)
        self.controller = None
        self.landmark_encoder = None
        self.landmark_attn = None
        if expression_mode == "codes":
            self.controller = ExpressionController(
                expression_dim,
                dim,
                controller_hidden_dim,
                controller_heads,
                controller_layers,
                code_scale=expression_code_scale,
            )
        elif expression_mode == "landmarks":
            from .landmarks import FrameCrossAttention, LandmarkEncoder

            self.landmark_encoder = LandmarkEncoder(num_points=num_landmarks, dim=landmark_dim, heads=landmark_heads)
            self.landmark_attn = nn.ModuleList(
                FrameCrossAttention(dim, landmark_dim, self.wan.config.num_attention_heads)
                for _ in range(self.wan.config.num_layers)
            )
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0, **kwargs: Any) -> FactorPortraitTransformer:
        """A tiny random model of the same architecture, for CPU tests and presets."""
        torch.manual_seed(seed)
        defaults = dict(controller_hidden_dim=64, controller_heads=4, landmark_dim=32, text_len=8)
        return cls(wan_config=WAN_CONFIGS["tiny"], **{**defaults, **kwargs})

    @property
    def input_channels(self) -> int:
        return (
            LATENT_CHANNELS
            + (LATENT_CHANNELS if self.config.use_normals else 0)
            + (RAY_CHANNELS if self.config.use_rays else 0)
        )

    def _widen_patch_embedding(self, channels: int) -> None:
        """Replace Wan's patch embedding by one with `channels` inputs; the new ones start at zero."""
        old = self.wan.patch_embedding
        new = nn.Conv3d(channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels].copy_(old.weight)
            new.bias.copy_(old.bias)
        self.wan.patch_embedding = new

    @classmethod
    def from_wan(
        cls,
        wan: str | Path | WanTransformer3DModel,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> FactorPortraitTransformer:
        """Build from Wan 2.1 T2V weights: a local diffusers folder (the pipeline root with `transformer/`,
        or the transformer folder itself) or a `WanTransformer3DModel`. Never reaches a model hub."""
        if not isinstance(wan, WanTransformer3DModel):
            wan = load_local_wan(wan, subfolder=subfolder, torch_dtype=torch_dtype)
        else:
            wan = copy.deepcopy(wan)  # the caller's model stays as it was (its patch embedding is widened here)
        # The loaded Wan becomes the model's `wan` (no second, random copy of its weights); only the new modules
        # (condition channels, expression controller, landmark layers) are built, then cast.
        token = _ADOPT_WAN.set(wan)
        try:
            model = cls(wan_config=dict(wan.config), **kwargs)
        finally:
            _ADOPT_WAN.reset(token)
        if torch_dtype is not None:
            model.cast(torch_dtype)
        return model

    def cast(self, dtype: torch.dtype) -> FactorPortraitTransformer:
        """Cast to `dtype` in place except the `_keep_in_fp32_modules` (norms, time embedder, modulation tables,
        rope), which stay (or become) float32; unlike `.to(dtype)` they never pass through `dtype`."""
        keep = set(self._keep_in_fp32_modules)
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
        return self

    def get_parameter_or_buffer(self, name: str) -> Tensor:
        """A parameter or buffer by qualified name: the transformers-model method that accelerate's FSDP2 rank-0
        loading (`fsdp2_load_full_state_dict`) calls to keep each tensor's dtype."""
        try:
            return self.get_parameter(name)
        except AttributeError:
            return self.get_buffer(name)

    def set_prompt_embedding(self, embeds: Tensor | str | Path) -> None:
        """Use a fixed T5 prompt embedding [L, text_dim] (tensor, .safetensors with key 'prompt_embeds', or .pt)."""
        if not isinstance(embeds, Tensor):
            path = Path(embeds)
            if not path.exists():
                raise FileNotFoundError(f"prompt embedding file '{path}' does not exist")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                embeds = load_file(str(path))["prompt_embeds"]
            else:
                embeds = torch.load(path, map_location="cpu", weights_only=True)
        embeds = embeds.reshape(1, -1, embeds.shape[-1])
        if embeds.shape[-1] != self.wan.config.text_dim:
            raise ValueError(
                f"prompt embedding has {embeds.shape[-1]} features, the model expects {self.wan.config.text_dim}"
            )
        with torch.no_grad():
            self.prompt_embeds.data = embeds.to(self.prompt_embeds).contiguous()

    # ------------------------------------------------------------------ inputs
    def check_landmark_layout(self, layout: str | None, num_points: int, where: str = "input") -> None:
        """ValueError unless landmarks of `layout` with `num_points` points are what this C3 model was trained on."""
        if self.landmark_encoder is None:
            return
        trained, k = self.config.landmark_layout, self.config.num_landmarks
        if num_points != k or (trained is not None and layout is not None and layout != trained):
            raise ValueError(
                f"this model was trained on landmark layout {trained!r} with {k} points; the {where} has layout "
                f"{layout!r} with {num_points} points: use landmarks of the model's layout"
            )

    def fuse_inputs(
        self,
        latents: Tensor,  # [B, 16, F, h, w] noisy video latents
        reference_latent: Tensor,  # [B, 16, 1, h, w] clean reference image latent
        normal_latents: Tensor | None = None,  # [B, 16, F, h, w]
        ray_features: Tensor | None = None,  # [B, 1536, F, h, w]
        reference_rays: Tensor | None = None,  # [B, 1536, 1, h, w] identity-camera rays of the reference
        reference_normal_latent: Tensor | None = None,  # [B, 16, 1, h, w] latent of a black "no surface" frame
    ) -> Tensor:  # [B, C_in, 1 + F, h, w]
        """The condition-fusion input: reference prepended in time, conditions concatenated in channels."""
        b, c, f, h, w = _shape(latents, "latents", 5)
        if c != LATENT_CHANNELS:
            raise ValueError(f"latents must have {LATENT_CHANNELS} channels, got {c}")
        if tuple(reference_latent.shape) != (b, LATENT_CHANNELS, 1, h, w):
            raise ValueError(
                f"reference_latent must be {(b, LATENT_CHANNELS, 1, h, w)}, got {tuple(reference_latent.shape)}"
            )
        parts = [torch.cat([reference_latent, latents], dim=2)]
        if self.config.use_normals:
            if normal_latents is None:
                raise ValueError("normal_latents are required (this model was built with use_normals=True)")
            if tuple(normal_latents.shape) != (b, LATENT_CHANNELS, f, h, w):
                raise ValueError(
                    f"normal_latents must be {(b, LATENT_CHANNELS, f, h, w)} to match the video, "
                    f"got {tuple(normal_latents.shape)}"
                )
            if reference_normal_latent is None:
                reference_normal_latent = torch.zeros_like(reference_latent)
            elif tuple(reference_normal_latent.shape) != (b, LATENT_CHANNELS, 1, h, w):
                raise ValueError(
                    f"reference_normal_latent must be {(b, LATENT_CHANNELS, 1, h, w)}, "
                    f"got {tuple(reference_normal_latent.shape)}"
                )
            parts.append(torch.cat([reference_normal_latent.to(normal_latents), normal_latents], dim=2))
        if self.config.use_rays:
            if ray_features is None:
                raise ValueError("ray_features are required (this model was built with use_rays=True)")
            if tuple(ray_features.shape) != (b, RAY_CHANNELS, f, h, w):
                raise ValueError(
                    f"ray_features must be {(b, RAY_CHANNELS, f, h, w)} (Plücker maps reduced with "
                    f"rays_to_latent), got {tuple(ray_features.shape)}"
                )
            if reference_rays is None:
                reference_rays = ray_features.new_zeros(b, RAY_CHANNELS, 1, h, w)
            parts.append(torch.cat([reference_rays.to(ray_features), ray_features], dim=2))
        return torch.cat([p.to(latents.dtype) for p in parts], dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        latents: Tensor,  # [B, 16, F, h, w]
        timestep: Tensor,  # [B] in [0, 1000]
        reference_latent: Tensor,  # [B, 16, 1, h, w]
        normal_latents: Tensor | None = None,
        ray_features: Tensor | None = None,
        reference_rays: Tensor | None = None,
        expression_codes: Tensor | None = None,  # [B, T, 128], T = 1 + 4 (F - 1)
        landmarks: Tensor | None = None,  # [B, T, K, 2] pixels (u, v) of the 8w x 8h frames (C3 ablation)
        landmark_visible: Tensor | None = None,  # [B, T, K] bool; None: all visible
        reference_normal_latent: Tensor | None = None,  # [B, 16, 1, h, w]
        encoder_hidden_states: Tensor | None = None,  # [B, L, text_dim]; default: the fixed prompt embedding
        return_reference_frame: bool = False,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """Predict the flow-matching velocity of the generated frames [B, 16, F, h, w]
        (with `return_reference_frame`, of all 1 + F frames)."""
        fused = self.fuse_inputs(
            latents, reference_latent, normal_latents, ray_features, reference_rays, reference_normal_latent
        )
        frames = fused.shape[2]
        offsets = landmark_context = None
        if self.controller is not None:
            if expression_codes is None:
                raise ValueError("expression_codes [B, T, 128] are required (expression_mode='codes')")
            self._check_frames(expression_codes.shape[1], frames - 1, "expression codes")
            offsets = self.controller(expression_codes.to(fused.dtype))  # [B, 1 + F, D]
        elif self.landmark_encoder is not None:
            k = self.config.num_landmarks
            if landmarks is None:
                raise ValueError(f"landmarks [B, T, {k}, 2] are required (expression_mode='landmarks')")
            if landmarks.dim() != 4 or landmarks.shape[-1] != 2:
                raise ValueError(f"landmarks must be [B, T, K, 2] pixel coordinates, got {tuple(landmarks.shape)}")
            self.check_landmark_layout(None, landmarks.shape[2], "input")
            from .landmarks import group_landmarks_by_latent_frame

            self._check_frames(landmarks.shape[1], frames - 1, "landmarks")
            size = landmarks.new_tensor([8.0 * latents.shape[-1], 8.0 * latents.shape[-2]])  # (W, H) in pixels
            normalised = (landmarks / size * 2.0 - 1.0).to(fused.dtype)  # [-1, 1] across the frame
            features = self.landmark_encoder(normalised, landmark_visible)
            landmark_context = group_landmarks_by_latent_frame(features)
        out = self.denoise(fused, timestep, encoder_hidden_states, offsets, landmark_context)
        if not return_reference_frame:
            out = out[:, :, 1:]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    @staticmethod
    def _check_frames(num_frames: int, latent_frames: int, what: str) -> None:
        if latent_frame_count(num_frames) != latent_frames:
            raise ValueError(
                f"{what} cover {num_frames} frames = {latent_frame_count(num_frames)} latent frames, "
                f"but the video has {latent_frames} latent frames ({1 + 4 * (latent_frames - 1)} frames)"
            )

    def denoise(
        self,
        hidden_states: Tensor,  # [B, C_in, Ft, h, w] fused input
        timestep: Tensor,  # [B]
        encoder_hidden_states: Tensor | None = None,
        frame_offsets: Tensor | None = None,  # [B, Ft, D] added to the timestep embedding per latent frame
        landmark_context: Tensor | None = None,  # [B, Ft, K, C]
    ) -> Tensor:  # [B, 16, Ft, h, w]
        """Wan's forward with per-latent-frame AdaLN modulation."""
        wan = self.wan
        b, _, ft, h, w = hidden_states.shape
        p_t, p_h, p_w = wan.config.patch_size
        grid = (ft // p_t, h // p_h, w // p_w)
        if encoder_hidden_states is None:
            encoder_hidden_states = self.prompt_embeds.expand(b, -1, -1)
        timestep = timestep.expand(b) if timestep.dim() == 1 and timestep.shape[0] == 1 else timestep.reshape(b)

        rotary_emb = wan.rope(hidden_states)
        x = wan.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # [B, L, D]
        temb, timestep_proj, context, _ = wan.condition_embedder(timestep, encoder_hidden_states.to(x.dtype))
        if frame_offsets is None:
            frame_temb = temb[:, None, :]  # [B, 1, D]: one modulation for all frames, as in Wan
            frame_proj = timestep_proj[:, None, :]
        else:
            frame_temb = temb[:, None, :] + frame_offsets.to(temb.dtype)  # [B, Ft, D]
            embedder = wan.condition_embedder
            frame_proj = embedder.time_proj(embedder.act_fn(frame_temb))
        modulation = frame_proj.unflatten(-1, (6, -1))  # [B, Ft or 1, 6, D]

        for index, block in enumerate(wan.blocks):
            adapter = self.landmark_attn[index] if self.landmark_attn is not None else None
            # The block is called as a module (never its parts), so FSDP's per-block hooks gather its shards.
            args = (x, context, modulation, rotary_emb, grid, adapter, landmark_context)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        shift, scale = (wan.scale_shift_table[:, None] + frame_temb[:, :, None, :]).unbind(2)  # [B, Ft|1, D]
        x = _modulate(wan.norm_out(x.float()), grid, scale, shift).type_as(x)
        x = wan.proj_out(x)
        x = x.reshape(b, *grid, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _modulate(x: Tensor, grid: tuple[int, int, int], scale: Tensor, shift: Tensor) -> Tensor:
    """x [B, L, D] * (1 + scale) + shift with scale/shift [B, F or 1, D] broadcast over each frame's tokens."""
    b, length, d = x.shape
    frames = scale.shape[1]
    x = x.view(b, frames, length // frames, d)
    return (x * (1 + scale[:, :, None]) + shift[:, :, None]).view(b, length, d)


def _gated(x: Tensor, update: Tensor, gate: Tensor) -> Tensor:
    """x + update * gate with gate [B, F or 1, D] broadcast per frame (float32, as Wan does)."""
    b, length, d = x.shape
    frames = gate.shape[1]
    out = x.float().view(b, frames, -1, d) + update.view(b, frames, -1, d) * gate[:, :, None]
    return out.view(b, length, d)


class FactorPortraitBlock(WanTransformerBlock):
    """A `WanTransformerBlock` whose AdaLN modulation is per latent frame ([B, F, 6, D] instead of [B, 6, D]),
    with the C3 landmark cross-attention `adapter` (a module of the parent model) between cross-attention and
    feed-forward. Instances are Wan's own blocks with this class: same parameters, same state-dict names."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,  # [B, L, D]
        context: Tensor,  # [B, L_text, D]
        modulation: Tensor,  # [B, F|1, 6, D]
        rotary_emb,
        grid: tuple[int, int, int],
        adapter: nn.Module | None = None,
        landmark_context: Tensor | None = None,  # [B, F, K, C]
    ) -> Tensor:  # [B, L, D]
        params = self.scale_shift_table[:, None] + modulation.float()  # [B, F|1, 6, D]
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = params.unbind(2)
        # 1. self-attention
        normed = _modulate(self.norm1(x.float()), grid, scale_msa, shift_msa).type_as(x)
        x = _gated(x, self.attn1(normed, None, None, rotary_emb), gate_msa).type_as(x)
        # 2. cross-attention to the (fixed) prompt
        x = x + self.attn2(self.norm2(x.float()).type_as(x), context, None, None)
        # 2b. C3 ablation: landmark features of each latent frame
        if adapter is not None:
            x = x + adapter(x, landmark_context, grid[1] * grid[2]).to(x.dtype)
        # 3. feed-forward
        normed = _modulate(self.norm3(x.float()), grid, c_scale, c_shift).type_as(x)
        return _gated(x, self.ffn(normed).float(), c_gate).type_as(x)


def _shape(t: Tensor, name: str, dims: int) -> tuple[int, ...]:
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    return tuple(t.shape)


def load_local_wan(
    path: str | Path, subfolder: str | None = None, torch_dtype: torch.dtype | None = None
) -> WanTransformer3DModel:
    """Load `WanTransformer3DModel` from a local diffusers folder (pipeline root or transformer folder)."""
    root = Path(path)
    if subfolder is None:
        subfolder = "transformer" if (root / "transformer" / "config.json").exists() else None
    folder = root / subfolder if subfolder else root
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no Wan 2.1 transformer at '{folder}': expected {folder / 'config.json'} and its "
            "weights (a local diffusers folder such as Wan2.1-T2V-1.3B-Diffusers/transformer)"
        )
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return WanTransformer3DModel.from_pretrained(str(root), subfolder=subfolder, local_files_only=True, **kwargs)
