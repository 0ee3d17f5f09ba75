"""`FactorPortraitPipeline`: animate a portrait image from driving expressions/poses along a camera path.

Conditions per window of frames: the reference latent of the image, normal maps of a guide head mesh
(avatar_render) posed with the driving head poses and rendered from the absolute cameras, Plücker rays of the
same cameras relative to the REFERENCE camera (the photo's: by default frontal at the default distance, see
`camera_paths`), and the driving expression codes (or, for a C3 model, 2D landmarks). The prepended reference
frame gets the identity camera's rays and the latent of an all-black ("no surface") normal frame. Sampling uses
diffusers' flow-matching schedulers (UniPC or Euler). Clips longer than one window are made of windows overlapping by
`overlap` frames, each sampled independently with the same reference, and cross-faded linearly in pixel space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..cameras import latent_frame_count
from .driving import DrivingSignal

log = logging.getLogger(__name__)


@dataclass
class PipelineOutput:
    frames: np.ndarray  # [T, H, W, 3] uint8
    normal_frames: np.ndarray  # [T, H, W, 3] uint8, the guide mesh's normal maps used as conditions
    K: np.ndarray  # [T, 3, 3]
    c2w: np.ndarray  # [T, 4, 4] absolute (avatar frame): the cameras the normal maps were rendered from
    reference_c2w: np.ndarray  # [4, 4] the reference image's camera; the rays are c2w relative to it
    reference_K: np.ndarray  # [3, 3]


def make_scheduler(name: str, shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    if name == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000
        )
    raise ValueError(f"scheduler must be euler or unipc, got {name!r}")


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of windows of `window` frames covering `num_frames` with at least `overlap` shared frames."""
    if num_frames <= window:
        return [0]
    step = window - overlap
    if step <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than the window ({window})")
    starts = list(range(0, num_frames - window, step)) + [num_frames - window]
    return sorted(set(starts))


def resize_crop(image: np.ndarray, height: int, width: int) -> Tensor:  # uint8 [h, w, 3] -> [3, H, W] in [-1, 1]
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[0, :, top : top + height, left : left + width].clamp(-1, 1)


class FactorPortraitPipeline:
    """transformer: FactorPortraitTransformer; vae: WanVideoVAE; guide_avatar: an avatar_render id or file;
    normal_mesh: "neutral" (the template posed by the head pose, the paper's and datagen's default) or "tracked"
    (with the driving expression): use what the model's training data used (the manifest's plan.render)."""

    def __init__(
        self,
        transformer,
        vae,
        scheduler: str = "unipc",
        shift: float = 3.0,
        guide_avatar: str = "demo-000",
        normal_mesh: str = "neutral",
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.transformer = transformer.to(self.device).eval()
        self.vae = vae.to(self.device)
        if normal_mesh not in ("neutral", "tracked"):
            raise ValueError(f"normal_mesh = {normal_mesh!r}: expected 'neutral' or 'tracked'")
        self.scheduler_name, self.shift, self.guide_avatar = scheduler, shift, guide_avatar
        self.normal_mesh = normal_mesh
        self.scheduler = make_scheduler(scheduler, shift)

    @classmethod
    def from_pretrained(cls, model_dir: str, vae: str = "tiny", **kwargs) -> FactorPortraitPipeline:
        """A trained model folder (`model-train`'s final/) and a VAE: a Wan 2.1 folder with vae/, or "tiny"."""
        from pathlib import Path

        from ..transformer import FactorPortraitTransformer
        from ..vae import WanVideoVAE

        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(
                f"no model at '{model_dir}': expected {Path(model_dir) / 'config.json'} "
                "(the final/ folder written by model-train)"
            )
        transformer = FactorPortraitTransformer.from_pretrained(model_dir)
        return cls(transformer, WanVideoVAE.tiny() if vae == "tiny" else WanVideoVAE.from_pretrained(vae), **kwargs)

    # ------------------------------------------------------------------ conditions
    def render_normals(
        self, driving: DrivingSignal, K: np.ndarray, c2w: np.ndarray, height: int, width: int
    ) -> np.ndarray:  # [T, H, W, 3] uint8
        """Normal maps of the guide mesh posed by the driving signal (`normal_mesh`) in the absolute cameras."""
        from avatar_render import Camera, load_avatar, render_normals
        from avatar_render.normals import encode_normals

        avatar = load_avatar(self.guide_avatar)
        codes = torch.from_numpy(driving.codes)
        if not driving.codes_in_avatar_space or codes.shape[1] != avatar.expression_dim:
            codes = torch.zeros(len(driving), avatar.expression_dim)
        frames = []
        with torch.no_grad():
            vertices = avatar.pose_mesh(
                codes, torch.from_numpy(driving.head_poses), with_expression=self.normal_mesh == "tracked"
            )
            for t in range(len(driving)):
                camera = Camera(
                    K=torch.from_numpy(K[t]).float(),
                    viewmat=torch.linalg.inv(torch.from_numpy(c2w[t])).float(),
                    width=width,
                    height=height,
                )
                normals, mask = render_normals(vertices[t], avatar.faces, camera)
                frames.append(encode_normals(normals, mask)[0].numpy())
        return np.stack(frames)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        driving: DrivingSignal,
        c2w: np.ndarray,
        K: np.ndarray | None = None,
        height: int = 480,
        width: int = 832,
        num_frames: int | None = None,
        num_inference_steps: int = 30,
        seed: int = 0,
        guidance_scale: float = 1.0,
        window: int = 81,
        overlap: int = 8,
        progress: bool = True,
        reference_c2w: np.ndarray | None = None,
        reference_K: np.ndarray | None = None,
        landmarks: np.ndarray | None = None,
        landmark_visible: np.ndarray | None = None,
        landmark_layout: str | None = None,
    ) -> PipelineOutput:
        """Animate `image` [h, w, 3] uint8.

        c2w [T, 4, 4]: absolute cameras in the avatar frame (`camera_paths`); reference_c2w [4, 4]: the image's
        camera in that frame (default: frontal at the default distance); K / reference_K in pixels at
        height x width (default: a 53.1 deg field of view across the width). C3 models take `landmarks`
        [T, K, 2] (pixels at height x width), `landmark_visible` [T, K] and the layout name.
        """
        from tqdm import tqdm

        from avatar_render.camera import focal_from_fov

        from ..conditions import camera_features, no_surface_latent
        from .camera_paths import reference_c2w as default_reference

        if num_frames is not None and num_frames < 1:
            raise ValueError(f"--frames {num_frames}: at least 1 frame (1 + 4k, e.g. 13, 25, 49, 81)")
        num_frames = num_frames or len(driving)
        latent_frame_count(window)
        if num_frames < 1 or (num_frames <= window and (num_frames - 1) % 4):
            raise ValueError(f"--frames {num_frames}: a clip of one window needs 1 + 4k frames (e.g. 13, 25, 49, 81)")
        if len(driving) < num_frames or c2w.shape[0] < num_frames:
            raise ValueError(
                f"{num_frames} frames asked for, but the driving signal has {len(driving)} and the "
                f"camera path {c2w.shape[0]}"
            )
        f = focal_from_fov(53.1, width)
        default_K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
        if K is None:
            K = np.broadcast_to(default_K, (num_frames, 3, 3))
        K, c2w = np.array(K, np.float64)[:num_frames], np.array(c2w, np.float64)[:num_frames]
        reference_c2w = default_reference() if reference_c2w is None else np.array(reference_c2w, np.float64)
        reference_K = default_K if reference_K is None else np.array(reference_K, np.float64)
        self._check_guidance(guidance_scale)
        marks = self._landmark_inputs(landmarks, landmark_visible, landmark_layout, num_frames)
        driving = driving.truncated(num_frames)
        normals = self.render_normals(driving, K, c2w, height, width)
        reference = resize_crop(image, height, width)[None, :, None].to(self.device)  # [1, 3, 1, H, W]
        reference_latent = self.vae.encode_video(reference).to(self.dtype)
        reference_normal_latent = no_surface_latent(self.vae, 1, height, width, self.device, self.dtype)
        win = min(window, num_frames)
        output = np.zeros((num_frames, height, width, 3), np.float64)
        weight = np.zeros((num_frames, 1, 1, 1), np.float64)
        starts = window_starts(num_frames, win, overlap)
        for w_index, start in enumerate(tqdm(starts, desc="windows", disable=not progress or len(starts) == 1)):
            span = slice(start, start + win)
            # Every window relative to the same reference camera: windows agree where they overlap.
            rays, ref_rays = camera_features(
                torch.from_numpy(K[span]),
                torch.from_numpy(c2w[span]),
                height,
                width,
                reference_c2w=torch.from_numpy(reference_c2w),
                reference_K=torch.from_numpy(reference_K),
            )
            normal_video = torch.from_numpy(normals[span]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            conditions = dict(
                reference_latent=reference_latent,
                normal_latents=self.vae.encode_video(normal_video.to(self.device)).to(self.dtype),
                reference_normal_latent=reference_normal_latent,
                ray_features=rays[None].to(self.device, self.dtype),
                reference_rays=ref_rays[None].to(self.device, self.dtype),
                expression_codes=torch.from_numpy(driving.codes[span])[None].to(self.device, self.dtype),
            )
            if marks is not None:
                conditions["landmarks"] = torch.from_numpy(marks[0][span])[None].to(self.device, self.dtype)
                conditions["landmark_visible"] = torch.from_numpy(marks[1][span])[None].to(self.device)
            latents = self._sample(
                conditions,
                win,
                height,
                width,
                num_inference_steps,
                seed + w_index,
                guidance_scale,
                progress and len(starts) == 1,
            )
            frames = (self.vae.decode(latents).float()[0].permute(1, 2, 3, 0).cpu().numpy() + 1.0) * 127.5
            ramp = np.ones((win, 1, 1, 1))
            if overlap and len(starts) > 1:  # linear cross-fade over the frames shared with neighbours
                fade = np.linspace(0.0, 1.0, overlap + 2)[1:-1][:, None, None, None]
                if w_index > 0:
                    ramp[:overlap] = fade
                if w_index < len(starts) - 1:
                    ramp[-overlap:] = fade[::-1]
            output[span] += frames * ramp
            weight[span] += ramp
        frames = np.clip(np.round(output / weight), 0, 255).astype(np.uint8)
        return PipelineOutput(
            frames=frames, normal_frames=normals, K=K, c2w=c2w, reference_c2w=reference_c2w, reference_K=reference_K
        )

    def _check_guidance(self, guidance_scale: float) -> None:
        """Warn when guidance is asked of a model whose config records no expression-condition dropout."""
        if guidance_scale != 1.0 and not getattr(self.transformer.config, "expression_dropout", 0.0):
            log.warning(
                "--guidance-scale %s: this model's config records no expression dropout (expression_dropout = 0), "
                "so it never learned the neutral-code condition guidance contrasts with; expect poor results "
                "(train with expression_dropout > 0, e.g. 0.1, or keep --guidance-scale 1)",
                guidance_scale,
            )

    def _landmark_inputs(
        self, landmarks: np.ndarray | None, visible: np.ndarray | None, layout: str | None, frames: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(landmarks [T, K, 2] float32, visible [T, K] bool) for a C3 model, else None; checks the layout."""
        if self.transformer.landmark_encoder is None:
            return None
        if landmarks is None:
            raise ValueError(
                "this model was trained with landmarks (C3): pass --landmarks (a .npz with landmarks [T, K, 2]) "
                "or drive it with a manifest sequence that has landmarks"
            )
        points = np.asarray(landmarks, np.float32)
        if points.ndim != 3 or points.shape[2] != 2 or not np.isfinite(points).all():
            raise ValueError(f"landmarks must be finite [T, K, 2] pixel coordinates, got shape {list(points.shape)}")
        if points.shape[0] < frames:
            raise ValueError(f"{frames} frames asked for, but the landmarks cover {points.shape[0]}")
        self.transformer.check_landmark_layout(layout, points.shape[1], "landmark input")
        shown = np.ones(points.shape[:2], bool) if visible is None else np.asarray(visible, bool)
        if shown.shape != points.shape[:2]:
            raise ValueError(f"landmark_visible must be [T, K] = {list(points.shape[:2])}, got {list(shown.shape)}")
        return points[:frames], shown[:frames]

    def _sample(
        self,
        conditions: dict,
        frames: int,
        height: int,
        width: int,
        steps: int,
        seed: int,
        guidance_scale: float,
        progress: bool,
    ) -> Tensor:
        from tqdm import tqdm

        shape = (1, 16, latent_frame_count(frames), height // 8, width // 8)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        scheduler = make_scheduler(self.scheduler_name, self.shift)
        scheduler.set_timesteps(steps, device=self.device)
        for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress):
            timestep = t.reshape(1).float().to(self.device)
            velocity = self.transformer(latents=latents, timestep=timestep, **conditions).sample
            if guidance_scale != 1.0:
                # Expression guidance: contrast with what expression dropout trained (TrainConfig): the neutral
                # (zero) code, or for C3 every landmark hidden.
                neutral = {"expression_codes": torch.zeros_like(conditions["expression_codes"])}
                if "landmark_visible" in conditions:
                    neutral["landmark_visible"] = torch.zeros_like(conditions["landmark_visible"])
                plain = self.transformer(latents=latents, timestep=timestep, **{**conditions, **neutral}).sample
                velocity = plain + guidance_scale * (velocity - plain)
            latents = scheduler.step(velocity.float(), t, latents.float(), return_dict=False)[0].to(self.dtype)
        return latents
