"""Step 4: instruments for control accuracy, trained on the training renders (their codes and poses are known).

One ResNet34 trunk (the project's `ExpressionEncoder`: torchvision resnet34 + linear head) is trained jointly with
three heads, and exported as three `ExpressionEncoder` state dicts that share the trunk:
  * expression encoder: 128-d code regression (the paper's expression encoder architecture; `model-infer
    --expression-encoder RUN/instruments/expression_encoder.safetensors` loads it);
  * head-pose regressor (the paper's alignment encoder): 9 numbers = the head rotation in the camera frame
    (first two columns of R, the continuous 6-d form) + the head translation in the camera frame (m);
  * identity embedding (CSIM): 128-d, trained with a cosine-margin classifier over the training identities.
Regression targets are standardised for training and the statistics are folded back into the linear heads, so
the exported networks output codes, rotations and metres directly. TorchScript wrappers in `MetricSuite`'s
formats make `model-eval --weights expression=RUN/instruments/aed.pt,arcface=RUN/instruments/csim.pt` use them.
Crops: the whole 64 px frame (the renders are face-centred), resized to `instrument_size`; see docs/reproduction.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ReproConfig
from .data import decode_all, load_sources, split_roots
from .steps import warmup_cosine

FILES = {
    "expression": "expression_encoder.safetensors",
    "pose": "pose_regressor.safetensors",
    "identity": "identity.safetensors",
    "aed": "aed.pt",
    "csim": "csim.pt",
}


# ------------------------------------------------------------------------------------------------ targets
def axis_angle_to_matrix(r: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3, 3] (Rodrigues)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    k = r / np.maximum(theta, 1e-12)
    kx = np.zeros(r.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx = kx - np.swapaxes(kx, -1, -2)
    t = theta[..., None]
    return np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx


def pose_targets(head_pose: np.ndarray, viewmat: np.ndarray) -> np.ndarray:
    """head_pose [T, 6] (axis-angle, m; canonical frame) + viewmat [T, 4, 4] -> [T, 9] camera-frame pose."""
    rot = viewmat[:, :3, :3] @ axis_angle_to_matrix(head_pose[:, :3])
    trans = np.einsum("tij,tj->ti", viewmat[:, :3, :3], head_pose[:, 3:]) + viewmat[:, :3, 3]
    return np.concatenate([rot[:, :, 0], rot[:, :, 1], trans], axis=1).astype(np.float32)


def six_d_to_matrix(x: Tensor) -> Tensor:  # [N, 6] -> [N, 3, 3] (Gram-Schmidt)
    a = F.normalize(x[:, :3], dim=-1)
    b = F.normalize(x[:, 3:6] - (a * x[:, 3:6]).sum(-1, keepdim=True) * a, dim=-1)
    return torch.stack([a, b, torch.cross(a, b, dim=-1)], dim=-1)


def rotation_error_deg(a: Tensor, b: Tensor) -> Tensor:
    """Geodesic angle [N] (deg) between rotations given as [N, 9] pose vectors (6-d part)."""
    ra, rb = six_d_to_matrix(a[:, :6].double()), six_d_to_matrix(b[:, :6].double())
    cos = ((ra.transpose(1, 2) @ rb).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).float()


def translation_error_mm(a: Tensor, b: Tensor) -> Tensor:
    return 1000 * (a[:, 6:9] - b[:, 6:9]).norm(dim=-1)


# ------------------------------------------------------------------------------------------------ data
def load_frames(run_dir: Path, split: str, ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """All RGB frames of a split with their labels: frames uint8 [N, H, W, 3], expression [N, D], pose [N, 9],
    identity (index into `ids`, -1 when absent) [N]."""
    frames, codes, poses, who, names = [], [], [], [], []
    for source in load_sources(split_roots(run_dir, split)):
        video = decode_all(source.rgb_path)
        frames.append(video)
        codes.append(np.asarray(source.expression, np.float32))
        poses.append(pose_targets(np.asarray(source.head_pose, np.float64), np.asarray(source.viewmat, np.float64)))
        label = ids.index(source.identity) if ids and source.identity in ids else -1
        who.append(np.full(len(video), label, np.int64))
        names.append(np.full(len(video), source.identity))
    if not frames:
        raise FileNotFoundError(f"no rendered videos under {Path(run_dir) / 'data' / split}")
    return {
        "frames": np.concatenate(frames),
        "expression": np.concatenate(codes),
        "pose": np.concatenate(poses),
        "identity": np.concatenate(who),
        "identity_names": np.concatenate(names),
    }


def to_input(frames: np.ndarray | Tensor, size: int) -> Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [-1, 1] (whole frame, antialiased resize)."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


# ------------------------------------------------------------------------------------------------ model
class Instruments(nn.Module):
    """ResNet34 trunk (inside an ExpressionEncoder) + expression, pose and identity heads."""

    def __init__(self, code_dim: int, num_ids: int) -> None:
        super().__init__()
        from ..expression_encoder import ExpressionEncoder

        self.encoder = ExpressionEncoder(code_dim=code_dim)  # its fc is the expression head
        self.pose = nn.Linear(512, 9)
        self.identity = nn.Linear(512, 128)
        self.classes = nn.Parameter(torch.randn(num_ids, 128) * 0.1)

    def trunk(self, x: Tensor) -> Tensor:  # [N, 3, S, S] in [-1, 1] -> [N, 512]
        enc = self.encoder
        h = ((x + 1) * 0.5 - enc.mean) / enc.std
        b = enc.backbone
        h = b.maxpool(b.relu(b.bn1(b.conv1(h))))
        h = b.layer4(b.layer3(b.layer2(b.layer1(h))))
        return torch.flatten(b.avgpool(h), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.trunk(x)
        return self.encoder.backbone.fc(f), self.pose(f), F.normalize(self.identity(f), dim=-1)


def _export(trunk_state: dict, head: nn.Linear, mean: Tensor | None, std: Tensor | None, code_dim: int):
    """An ExpressionEncoder with the trained trunk and `head` (de-standardisation folded in)."""
    from ..expression_encoder import ExpressionEncoder

    enc = ExpressionEncoder(code_dim=code_dim)
    state = {k: v for k, v in trunk_state.items() if not k.startswith("backbone.fc.")}
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    if std is not None:
        w, b = w * std[:, None], b * std + mean
    state["backbone.fc.weight"], state["backbone.fc.bias"] = w, b
    enc.load_state_dict(state)
    return enc.eval()


class _Scripted(nn.Module):
    """MetricSuite format: frames in `value_range` at the suite's size -> resized to the instruments' size."""

    def __init__(self, encoder: nn.Module, size: int, zero_one: bool, normalise: bool) -> None:
        super().__init__()
        self.encoder, self.size, self.zero_one, self.normalise = encoder, size, zero_one, normalise

    def forward(self, x: Tensor) -> Tensor:
        if self.zero_one:
            x = x * 2 - 1
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        y = self.encoder(x)
        return F.normalize(y, dim=-1) if self.normalise else y


def train_instruments(config: ReproConfig, run_dir: Path, log=print) -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    ids = list(config.train_ids)
    data = load_frames(run_dir, "train", ids)
    n, size = len(data["frames"]), config.instrument_size
    codes = torch.from_numpy(data["expression"])
    poses = torch.from_numpy(data["pose"])
    c_mean, c_std = codes.mean(0), codes.std(0).clamp_min(1e-4)
    p_mean, p_std = poses.mean(0), poses.std(0).clamp_min(1e-4)
    model = Instruments(codes.shape[1], len(ids)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.instrument_lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, config.instrument_steps, 0.1)
    labels = torch.from_numpy(data["identity"])
    tick, losses = time.perf_counter(), []
    model.train()
    for step in range(config.instrument_steps):
        idx = torch.from_numpy(rng.integers(n, size=config.instrument_batch))
        x = to_input(data["frames"][idx.numpy()], size)
        # half the batch blurred (down/up-sampled): generated frames are softer than renders
        blur = torch.from_numpy(rng.random(len(idx)) < 0.5)
        if blur.any():
            small = F.interpolate(x[blur], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
            x[blur] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
        x = x.to(device)
        code, pose, emb = model(x)
        cos = emb @ F.normalize(model.classes, dim=-1).T  # [B, ids]
        margin = F.one_hot(labels[idx], len(ids)).to(device) * 0.2
        loss = (
            F.mse_loss(code, ((codes[idx] - c_mean) / c_std).to(device))
            + F.mse_loss(pose, ((poses[idx] - p_mean) / p_std).to(device))
            + 0.5 * F.cross_entropy(16 * (cos - margin), labels[idx].to(device))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, config.instrument_steps // 10) == 0:
            log(f"instruments step {step + 1}/{config.instrument_steps} loss {np.mean(losses[-20:]):.4f}")
    train_s = time.perf_counter() - tick
    model.eval().cpu()

    out = Path(run_dir) / "instruments"
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    trunk = model.encoder.state_dict()
    exported = {
        "expression": _export(trunk, model.encoder.backbone.fc, c_mean, c_std, codes.shape[1]),
        "pose": _export(trunk, model.pose, p_mean, p_std, 9),
        "identity": _export(trunk, model.identity, None, None, 128),
    }
    for key, enc in exported.items():
        tmp = out / f".{FILES[key]}.tmp"
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp))
        tmp.replace(out / FILES[key])
    for key, enc, spec_size, zero_one, norm in (
        ("aed", exported["expression"], 224, True, False),
        ("csim", exported["identity"], 112, False, True),
    ):
        wrapper = _Scripted(enc, size, zero_one, norm).eval()
        traced = torch.jit.trace(
            wrapper, torch.rand(2, 3, spec_size, spec_size) * (1 if zero_one else 2) - (0 if zero_one else 1)
        )
        tmp = out / f".{FILES[key]}.tmp"
        traced.save(str(tmp))
        tmp.replace(out / FILES[key])
    accuracy = {
        split: validate_instruments(run_dir, split, config, c_mean.numpy(), p_mean.numpy())
        for split in ("heldout_ids", "heldout_seqs")
        if split_roots(run_dir, split)
    }
    return {
        "train_frames": n,
        "steps": config.instrument_steps,
        "train_s": train_s,
        "final_loss": float(np.mean(losses[-20:])),
        "accuracy": accuracy,
        "files": {k: str(out / v) for k, v in FILES.items()},
    }


def load_instrument(run_dir: Path, key: str, device: str = "cpu"):
    from ..expression_encoder import ExpressionEncoder

    dims = {"expression": None, "pose": 9, "identity": 128}
    path = Path(run_dir) / "instruments" / FILES[key]
    if dims[key] is None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            dims[key] = f.get_slice("backbone.fc.weight").get_shape()[0]
    return ExpressionEncoder.from_file(path, code_dim=dims[key], map_location=device)


@torch.no_grad()
def apply(encoder, frames: np.ndarray, size: int, batch: int = 64) -> Tensor:
    """Encoder outputs [N, D] of uint8 frames [N, H, W, 3]."""
    device = next(encoder.parameters()).device
    out = [
        encoder(to_input(frames[i : i + batch], size).to(device)).float().cpu() for i in range(0, len(frames), batch)
    ]
    return torch.cat(out)


def validate_instruments(run_dir: Path, split: str, config: ReproConfig, code_mean, pose_mean) -> dict:
    """Each instrument's own error on a held-out split (what AED / pose error / CSIM can resolve)."""
    data = load_frames(run_dir, split)
    size = config.instrument_size
    codes, poses = torch.from_numpy(data["expression"]), torch.from_numpy(data["pose"])
    pred_code = apply(load_instrument(run_dir, "expression"), data["frames"], size)
    pred_pose = apply(load_instrument(run_dir, "pose"), data["frames"], size)
    emb = F.normalize(apply(load_instrument(run_dir, "identity"), data["frames"], size), dim=-1)
    mean_pose = torch.from_numpy(pose_mean)[None].expand_as(poses)
    names = data["identity_names"]
    rng = np.random.default_rng(0)
    pairs = rng.integers(len(names), size=(4000, 2))
    sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(-1).numpy()
    same = names[pairs[:, 0]] == names[pairs[:, 1]]
    same_vals, diff_vals = sims[same], sims[~same]
    # AUC: P(a random same-identity pair scores above a random different-identity pair)
    auc = float((same_vals[:, None] > diff_vals[None, :]).mean()) if len(same_vals) and len(diff_vals) else None
    total_var = float(((codes - codes.mean(0)) ** 2).sum())
    return {
        "frames": len(codes),
        "expression_l1": float((pred_code - codes).abs().mean()),
        "expression_l1_predict_train_mean": float((torch.from_numpy(code_mean)[None] - codes).abs().mean()),
        "expression_r2": 1 - float(((pred_code - codes) ** 2).sum()) / max(total_var, 1e-12),
        "rotation_err_deg": float(rotation_error_deg(pred_pose, poses).mean()),
        "rotation_err_deg_predict_train_mean": float(rotation_error_deg(mean_pose, poses).mean()),
        "translation_err_mm": float(translation_error_mm(pred_pose, poses).mean()),
        "translation_err_mm_predict_train_mean": float(translation_error_mm(mean_pose, poses).mean()),
        "csim_same_identity": float(same_vals.mean()) if len(same_vals) else None,
        "csim_different_identity": float(diff_vals.mean()) if len(diff_vals) else None,
        "identity_auc": auc,
    }
