"""The pretrained expression encoder (paper Sec. 4.1, Sec. 8.1).

A ResNet34 backbone with a linear head maps a roll-normalised face crop to a 128-d expression code. The weights are
not shipped: `ExpressionEncoder.from_file` loads a local state dict. Synthetic datasets (datagen) store their codes
next to the frames, so training on them needs no encoder at all; the encoder is for real driving videos.

Image conventions: pixel centres sit at integer coordinates, (x, y) = (column, row); crops are float in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ImageNet statistics: the ResNet34 backbone was trained on [0, 1] images normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MISSING_HINT = (
    "pass --expression-encoder PATH, a ResNet34+linear state dict (keys backbone.*, ...). "
    "Synthetic datasets (datagen) carry their codes and need no encoder."
)


class ExpressionEncoder(nn.Module):
    """ResNet34 + Linear(512, code_dim): face crop [N, 3, 224, 224] in [-1, 1] -> expression code [N, code_dim].

    Normalisation happens inside: x in [-1, 1] -> (x + 1) / 2 in [0, 1] -> (. - ImageNet mean) / ImageNet std,
    so callers feed the same [-1, 1] range as everywhere else in the pipeline.
    """

    def __init__(self, code_dim: int = 128) -> None:
        super().__init__()
        from torchvision.models import resnet34  # lazy: torchvision import is slow and only needed here

        self.code_dim = code_dim
        self.backbone = resnet34(weights=None)  # never download: weights come from from_file
        self.backbone.fc = nn.Linear(512, code_dim)
        # Non-persistent: the statistics are constants, so checkpoints need not (and must not) carry them.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [-1, 1] -> [N, code_dim]
        x = (images.to(self.mean.dtype) + 1.0) * 0.5  # [-1, 1] -> [0, 1]
        x = (x - self.mean) / self.std
        return self.backbone(x)

    @classmethod
    def from_file(cls, path: str | Path, code_dim: int = 128, map_location: str | torch.device = "cpu"):
        """Load weights from .safetensors or .pt/.pth; accepts a {"state_dict": ...} wrapper and "module." keys."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"expression encoder weights not found at {path}: {_MISSING_HINT}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        # DataParallel / DDP checkpoints prefix every key with "module.".
        state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}

        model = cls(code_dim=code_dim)
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{path} is not an ExpressionEncoder state dict: "
                f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as error:  # shape mismatch, e.g. a different code_dim
            raise ValueError(f"{path}: {error}") from error
        return model.to(map_location).eval()


def _to_float_chw(image: Tensor | np.ndarray) -> Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1]; a float [3, H, W] is assumed in [-1, 1] already."""
    image = torch.as_tensor(image)
    if image.dtype == torch.uint8:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"uint8 image must be [H, W, 3], got {tuple(image.shape)}")
        return image.permute(2, 0, 1).float() / 127.5 - 1.0
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"float image must be [3, H, W], got {tuple(image.shape)}")
    return image.float()


def roll_affine(eyes: Tensor, height: int, width: int, scale: float = 2.2, below: float = 0.3) -> Tensor:
    """Eyes [N, 2, 2] ((left x, y), (right x, y)) in pixels -> affine_grid theta [N, 2, 3] (align_corners=False).

    The crop is a square of side `scale * d` (d = inter-ocular distance) whose axes follow the eye line; its centre
    sits `below * d` under the eye midpoint along the face's down direction, so eyes land in the upper half.
    """
    eyes = eyes.to(torch.float64)  # float64: the affine is tiny, and precision keeps roll invariance exact
    left, right = eyes[:, 0], eyes[:, 1]  # [N, 2]
    delta = right - left
    dist = delta.norm(dim=-1).clamp_min(1e-6)  # [N]
    cos, sin = delta[:, 0] / dist, delta[:, 1] / dist  # the eye line's direction: the roll to undo
    mid = 0.5 * (left + right)
    # Face "down" = eye direction rotated +90 deg in image coords (y down): (-sin, cos).
    cx = mid[:, 0] - below * dist * sin
    cy = mid[:, 1] + below * dist * cos
    return _square_affine(torch.stack([cx, cy], -1), cos, sin, scale * dist, height, width)


def _square_affine(centre: Tensor, cos: Tensor, sin: Tensor, side: Tensor, height: int, width: int) -> Tensor:
    """affine_grid theta [N, 2, 3] (align_corners=False) of a square crop: centre [N, 2] pixels (centres at
    integers), axes rotated by the angle of (cos, sin) [N], side [N] pixels."""
    cx, cy = centre[:, 0], centre[:, 1]
    # Output normalised (xo, yo) -> input pixel c + side/2 * R(xo, yo); then pixel -> normalised (2p + 1) / W - 1.
    theta = torch.stack(
        [
            torch.stack([side * cos / width, -side * sin / width, (2 * cx + 1) / width - 1], dim=-1),
            torch.stack([side * sin / height, side * cos / height, (2 * cy + 1) / height - 1], dim=-1),
        ],
        dim=1,
    )
    return theta.float()  # [N, 2, 3]


def landmark_crop_affine(landmarks: Tensor, height: int, width: int, margin: float = 1.3) -> Tensor:
    """Landmarks [N, K, 2] (iBUG-68 order, continuous pixels: pixel i spans [i, i + 1) as in the manifest)
    -> affine_grid theta [N, 2, 3] (align_corners=False) of a roll-normalised face crop.

    The crop is a square of side `margin` x the larger side of the landmarks' bounding box, centred on the box,
    its axes along the eye line (eye centres = means of points 36-41 and 42-47). Unlike `roll_affine` its size
    does not shrink with the inter-ocular distance, so profile views keep the whole face in the crop.
    """
    points = landmarks.to(torch.float64) - 0.5  # -> pixel centres at integers (this module's convention)
    left, right = points[:, 36:42].mean(1), points[:, 42:48].mean(1)
    delta = right - left
    angle = torch.atan2(delta[:, 1], delta[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    low, high = points.min(1).values, points.max(1).values
    centre = 0.5 * (low + high)
    side = margin * (high - low).max(1).values.clamp_min(1.0)
    return _square_affine(centre, cos, sin, side, height, width)


def crop_faces(images: Tensor, landmarks: Tensor, size: int, margin: float = 1.3) -> Tensor:
    """images [N, 3, H, W] float in [-1, 1], landmarks [N, 68, 2] pixels -> face crops [N, 3, size, size]
    (`landmark_crop_affine`; bilinear, zeros = mid grey outside the image)."""
    n, _, height, width = images.shape
    theta = landmark_crop_affine(landmarks, height, width, margin).to(images.device)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _roll_normalise_batch(images: Tensor, eyes: Tensor, size: int, scale: float, below: float) -> Tensor:
    """images [N, 3, H, W] float, eyes [N, 2, 2] -> crops [N, 3, size, size]."""
    n, _, height, width = images.shape
    theta = roll_affine(eyes, height, width, scale, below).to(images.device)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def roll_normalise(
    image: Tensor | np.ndarray,
    left_eye: tuple[float, float],
    right_eye: tuple[float, float],
    size: int = 224,
    scale: float = 2.2,
    below: float = 0.3,
) -> Tensor:  # [3, size, size] in [-1, 1]
    """Roll-normalised face crop: rotate about the eye midpoint so the eye line is horizontal, scale it to
    `size / scale` pixels, and take a `scale * d` square centred `below * d` under the eye midpoint.

    image: uint8 [H, W, 3] or float [3, H, W] in [-1, 1]. left_eye / right_eye: (x, y) pixels of the eye that
    should land on the crop's left / right (image-left / image-right in an upright face). Bilinear sampling, zeros
    padding (0 = mid grey in [-1, 1]) outside the image.
    """
    chw = _to_float_chw(image)
    eyes = torch.tensor([[left_eye, right_eye]], dtype=torch.float64)  # [1, 2, 2]
    return _roll_normalise_batch(chw[None], eyes, size, scale, below)[0]


def centre_crop_face(image: Tensor | np.ndarray, size: int = 224) -> Tensor:  # [3, size, size] in [-1, 1]
    """Fallback without landmarks: centre square crop + resize. Less accurate than roll_normalise, because the
    face's roll, scale and position are whatever the video gives, and the encoder was trained on aligned crops."""
    chw = _to_float_chw(image)
    _, height, width = chw.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = chw[:, top : top + side, left : left + side]
    # antialias: downscaling a large frame without it aliases fine detail (wrinkles) the encoder relies on.
    return F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


@torch.no_grad()
def encode_video(
    encoder: ExpressionEncoder,
    frames: Tensor | np.ndarray,
    eyes: Tensor | np.ndarray | None = None,
    batch_size: int = 16,
    size: int = 224,
) -> Tensor:  # [T, code_dim] float32 on CPU
    """Per-frame expression codes of a video: frames uint8 [T, H, W, 3]; eyes [T, 2, 2] pixels, or None for the
    centre-crop fallback. Runs in eval mode without gradients; batches of `batch_size` bound the memory."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if eyes is not None:
        eyes = torch.as_tensor(eyes, dtype=torch.float64)
        if eyes.shape != (frames.shape[0], 2, 2):
            raise ValueError(f"eyes must be [T, 2, 2] = [{frames.shape[0]}, 2, 2], got {tuple(eyes.shape)}")
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    codes = []
    try:
        for start in range(0, frames.shape[0], batch_size):
            chunk = frames[start : start + batch_size]  # [B, H, W, 3]
            images = chunk.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, 3, H, W] in [-1, 1]
            if eyes is None:
                crops = torch.stack([centre_crop_face(image, size) for image in images])
            else:
                crops = _roll_normalise_batch(images, eyes[start : start + batch_size], size, 2.2, 0.3)
            codes.append(encoder(crops).float().cpu())  # [B, code_dim]
    finally:
        encoder.train(was_training)
    return torch.cat(codes) if codes else torch.zeros(0, encoder.code_dim)


__all__ = [
    "ExpressionEncoder",
    "centre_crop_face",
    "encode_video",
    "roll_affine",
    "roll_normalise",
]
