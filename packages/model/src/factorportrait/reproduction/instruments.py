"""Step 4: instruments for control accuracy, trained on the training renders (their codes and poses are known).

Two ResNet34 networks (the project's `ExpressionEncoder`: torchvision resnet34 + linear head), exported as three
`ExpressionEncoder` state dicts:
  * expression encoder (its own trunk): 128-d code regression from a roll-normalised face crop, the paper's
    architecture; the crop is `expression_encoder.crop_faces` on the frame's iBUG-68 landmarks (the manifest's, the
    same crop for a generated frame and its ground truth). Trained and scored only on frames whose face is
    visible (at least half of the eye and mouth points 36-67 visible), where an expression exists to read.
    `model-infer --expression-encoder RUN/instruments/expression_encoder.safetensors` loads it;
  * head-pose regressor (the paper's alignment encoder) on the whole frame: 9 numbers = the head rotation in the
    camera frame (first two columns of R, the continuous 6-d form) + the head translation in the camera frame (m);
  * identity embedding (CSIM), sharing the pose trunk: 128-d, trained with a cosine-margin classifier over the
    training identities.
Regression targets are centred and scaled for training (one global scale for the codes, so the loss follows the
directions that vary, instead of inflating the invisible ones to unit variance; per-dimension for the pose) and
the statistics are folded back into the linear heads, so the exported networks output codes, rotations and metres.
Augmentation: per-image colour gain and offset (new identities have new skin and hair colours), half the batch
blurred (generated frames are softer than renders) and, for crops, jittered landmarks (a generator's face sits
a little off its ground truth). TorchScript wrappers in `MetricSuite`'s formats let `model-eval --weights
expression=RUN/instruments/aed.pt,arcface=RUN/instruments/csim.pt` use them; model-eval has no landmarks, so
aed.pt crops the average training face box (coarser than the report's AED).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ReproConfig
from .data import decode_all, instrument_identities, load_sources, split_roots
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
CROP_MARGIN = 1.3  # crop side / landmark box side: the whole face with a little context
#: iBUG-68 points whose visibility decides that a frame shows a face (eyes 36-47, mouth 48-67).
FACE_POINTS = slice(36, 68)


def face_visible(visible: np.ndarray | Tensor | None, n: int) -> np.ndarray:
    """[N] bool: at least half of the eye and mouth landmarks visible (all True without landmarks)."""
    if visible is None:
        return np.ones(n, bool)
    return np.asarray(visible, bool)[:, FACE_POINTS].mean(1) >= 0.5


def load_frames(run_dir: Path, split: str, ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """All RGB frames of a split with their labels: frames uint8 [N, H, W, 3], expression [N, D], pose [N, 9],
    identity (index into `ids`, -1 when absent) [N], landmarks [N, 68, 2] pixels (None when a row lacks iBUG-68
    landmarks) and face [N] bool (`face_visible`)."""
    frames, codes, poses, who, names, marks, vis = [], [], [], [], [], [], []
    for source in load_sources(split_roots(run_dir, split)):
        video = decode_all(source.rgb_path)
        frames.append(video)
        codes.append(np.asarray(source.expression, np.float32))
        poses.append(pose_targets(np.asarray(source.head_pose, np.float64), np.asarray(source.viewmat, np.float64)))
        label = ids.index(source.identity) if ids and source.identity in ids else -1
        who.append(np.full(len(video), label, np.int64))
        names.append(np.full(len(video), source.identity))
        ibug = source.landmarks is not None and source.landmark_layout == "ibug68"
        marks.append(np.asarray(source.landmarks, np.float32) if ibug else None)
        vis.append(np.asarray(source.landmark_visible, bool) if ibug else None)
    if not frames:
        raise FileNotFoundError(f"no rendered videos under {Path(run_dir) / 'data' / split}")
    with_marks = all(m is not None for m in marks)
    return {
        "frames": np.concatenate(frames),
        "expression": np.concatenate(codes),
        "pose": np.concatenate(poses),
        "identity": np.concatenate(who),
        "identity_names": np.concatenate(names),
        "landmarks": np.concatenate(marks) if with_marks else None,
        "face": np.concatenate([face_visible(v, len(f)) for v, f in zip(vis, frames, strict=True)])
        if with_marks
        else np.ones(sum(len(f) for f in frames), bool),
    }


def _concat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Concatenate two splits' arrays; None (no landmarks) when either lacks them."""
    return None if a is None or b is None else np.concatenate([a, b])


def to_input(frames: np.ndarray | Tensor, size: int) -> Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [-1, 1] (whole frame, antialiased resize)."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def to_face_input(frames: np.ndarray | Tensor, landmarks: np.ndarray | Tensor | None, size: int) -> Tensor:
    """uint8 [N, H, W, 3] + landmarks [N, 68, 2] -> face crops [N, 3, size, size]; whole frames without them."""
    from ..expression_encoder import crop_faces

    if landmarks is None:
        return to_input(frames, size)
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return crop_faces(x, torch.as_tensor(landmarks), size, CROP_MARGIN)


# ------------------------------------------------------------------------------------------------ model
class PoseIdentity(nn.Module):
    """ResNet34 trunk (inside an ExpressionEncoder whose fc is the 9-d pose head) + identity head."""

    def __init__(self, num_ids: int) -> None:
        super().__init__()
        from ..expression_encoder import ExpressionEncoder

        self.encoder = ExpressionEncoder(code_dim=9)
        self.identity = nn.Linear(512, 128)
        self.classes = nn.Parameter(torch.randn(num_ids, 128) * 0.1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # [N, 3, S, S] -> pose [N, 9], embedding [N, 128]
        enc = self.encoder
        h = ((x + 1) * 0.5 - enc.mean) / enc.std
        b = enc.backbone
        h = b.maxpool(b.relu(b.bn1(b.conv1(h))))
        f = torch.flatten(b.avgpool(b.layer4(b.layer3(b.layer2(b.layer1(h))))), 1)
        return b.fc(f), F.normalize(self.identity(f), dim=-1)


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
    """MetricSuite format: frames in `value_range` at the suite's size -> the instruments' input (a fixed affine
    crop `theta` [1, 2, 3] of the whole frame, or the whole frame resized)."""

    def __init__(self, encoder: nn.Module, size: int, zero_one: bool, normalise: bool, theta: Tensor | None) -> None:
        super().__init__()
        self.encoder, self.size, self.zero_one, self.normalise = encoder, size, zero_one, normalise
        self.register_buffer("theta", theta if theta is not None else torch.zeros(1, 2, 3))
        self.crop = theta is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.zero_one:
            x = x * 2 - 1
        if self.crop:
            grid = F.affine_grid(self.theta.expand(x.shape[0], 2, 3), [x.shape[0], 3, self.size, self.size], False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        else:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        y = self.encoder(x)
        return F.normalize(y, dim=-1) if self.normalise else y


# ------------------------------------------------------------------------------------------------ training
def _augment(x: Tensor, rng: np.random.Generator) -> Tensor:
    """Per-image colour gain / offset and, for half the batch, a blur (down- and up-sampling)."""
    n, size = x.shape[0], x.shape[-1]
    gain = torch.from_numpy(rng.uniform(0.75, 1.25, (n, 3, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.15, 0.15, (n, 3, 1, 1))).float()
    x = (x * gain + offset).clamp(-1, 1)
    blur = torch.from_numpy(rng.random(n) < 0.5)
    if blur.any():
        small = F.interpolate(x[blur], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        x[blur] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return x


def _jitter_landmarks(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, K, 2]: a random shift (2% of the face box) and scale (+-6%) about the box centre per image."""
    low, high = points.min(1, keepdims=True), points.max(1, keepdims=True)
    centre, side = 0.5 * (low + high), (high - low).max(-1, keepdims=True)
    scale = rng.uniform(0.94, 1.06, (len(points), 1, 1))
    shift = rng.normal(0, 0.02, (len(points), 1, 2)) * side
    return ((points - centre) * scale + centre + shift).astype(np.float32)


def _fit(model: nn.Module, steps: int, lr: float, loss_fn, log, name: str) -> tuple[list[float], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps, 0.1)
    tick, losses = time.perf_counter(), []
    model.train()
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"instruments: {name} step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}")
    model.eval().cpu()
    return losses, time.perf_counter() - tick


def train_instruments(config: ReproConfig, run_dir: Path, log=print) -> dict:
    from ..expression_encoder import ExpressionEncoder, landmark_crop_affine

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    ids = list(config.train_ids) + instrument_identities(config)
    data = load_frames(run_dir, "train", ids)
    if split_roots(run_dir, "instruments"):  # the generated identities rendered for the instruments alone
        extra = load_frames(run_dir, "instruments", ids)
        data = {k: _concat(data[k], extra[k]) for k in data}
    present = sorted(set(data["identity"].tolist()) - {-1})
    if len(present) != len(ids):  # a configured identity without renders: classes only for those with frames
        remap = {old: new for new, old in enumerate(present)}
        data["identity"] = np.array([remap[i] for i in data["identity"]], np.int64)
        ids = [ids[i] for i in present]
    n, size, batch = len(data["frames"]), config.instrument_size, config.instrument_batch
    codes = torch.from_numpy(data["expression"])
    poses = torch.from_numpy(data["pose"])
    marks = data["landmarks"]
    faces = np.flatnonzero(data["face"])
    if len(faces) == 0:
        raise ValueError(f"{run_dir}: no training frame shows a face (landmark visibility), nothing to train on")
    c_mean = codes[faces].mean(0)
    c_std = codes[faces].std(0).pow(2).mean().sqrt().clamp_min(1e-4).expand_as(c_mean).clone()  # one scale
    p_mean, p_std = poses.mean(0), poses.std(0).clamp_min(1e-4)
    labels = torch.from_numpy(data["identity"])

    # expression encoder: face crops of frames that show a face
    expression = ExpressionEncoder(code_dim=codes.shape[1]).to(device)

    def expression_loss(step: int) -> Tensor:
        idx = faces[rng.integers(len(faces), size=batch)]
        points = None if marks is None else _jitter_landmarks(marks[idx], rng)
        x = _augment(to_face_input(data["frames"][idx], points, size), rng).to(device)
        return F.mse_loss(expression(x), ((codes[idx] - c_mean) / c_std).to(device))

    e_losses, e_s = _fit(expression, config.expression_steps, config.instrument_lr, expression_loss, log, "expression")

    # pose regressor + identity embedding: whole frames
    pose_id = PoseIdentity(len(ids)).to(device)

    def pose_loss(step: int) -> Tensor:
        idx = rng.integers(n, size=batch)
        x = _augment(to_input(data["frames"][idx], size), rng).to(device)
        pose, emb = pose_id(x)
        cos = emb @ F.normalize(pose_id.classes, dim=-1).T  # [B, ids]
        margin = F.one_hot(labels[idx], len(ids)).to(device) * 0.2
        return F.mse_loss(pose, ((poses[idx] - p_mean) / p_std).to(device)) + 0.5 * F.cross_entropy(
            16 * (cos - margin), labels[idx].to(device)
        )

    p_losses, p_s = _fit(pose_id, config.instrument_steps, config.instrument_lr, pose_loss, log, "pose")

    out = Path(run_dir) / "instruments"
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    exported = {
        "expression": _export(expression.state_dict(), expression.backbone.fc, c_mean, c_std, codes.shape[1]),
        "pose": _export(pose_id.encoder.state_dict(), pose_id.encoder.backbone.fc, p_mean, p_std, 9),
        "identity": _export(pose_id.encoder.state_dict(), pose_id.identity, None, None, 128),
    }
    for key, enc in exported.items():
        tmp = out / f".{FILES[key]}.tmp"
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp))
        tmp.replace(out / FILES[key])
    # model-eval has no landmarks: aed.pt crops the mean face box of the training frames (normalised coordinates)
    height, width = data["frames"].shape[1:3]
    mean_theta = (
        landmark_crop_affine(torch.from_numpy(marks[faces]), height, width, CROP_MARGIN).mean(0, keepdim=True)
        if marks is not None
        else None
    )
    for key, enc, spec_size, zero_one, norm, theta in (
        ("aed", exported["expression"], 224, True, False, mean_theta),
        ("csim", exported["identity"], 112, False, True, None),
    ):
        wrapper = _Scripted(enc, size, zero_one, norm, theta).eval()
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
        "train_identities": len(ids),
        "train_face_frames": int(len(faces)),
        "steps": config.instrument_steps,
        "expression_steps": config.expression_steps,
        "train_s": e_s + p_s,
        "final_loss": float(np.mean(p_losses[-20:])),
        "expression_final_loss": float(np.mean(e_losses[-20:])),
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
def apply(encoder, inputs: Tensor, batch: int = 64) -> Tensor:
    """Encoder outputs [N, D] of network inputs [N, 3, S, S] (`to_input` / `to_face_input`)."""
    device = next(encoder.parameters()).device
    out = [encoder(inputs[i : i + batch].to(device)).float().cpu() for i in range(0, len(inputs), batch)]
    return torch.cat(out) if out else torch.zeros(0, encoder.code_dim)


def validate_instruments(run_dir: Path, split: str, config: ReproConfig, code_mean, pose_mean) -> dict:
    """Each instrument's own error on a held-out split (what AED / pose error / CSIM can resolve)."""
    data = load_frames(run_dir, split)
    size = config.instrument_size
    face = data["face"]
    codes, poses = torch.from_numpy(data["expression"][face]), torch.from_numpy(data["pose"])
    marks = None if data["landmarks"] is None else data["landmarks"][face]
    pred_code = apply(load_instrument(run_dir, "expression"), to_face_input(data["frames"][face], marks, size))
    whole = to_input(data["frames"], size)
    pred_pose = apply(load_instrument(run_dir, "pose"), whole)
    emb = F.normalize(apply(load_instrument(run_dir, "identity"), whole), dim=-1)
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
        "frames": len(poses),
        "face_frames": int(face.sum()),
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
