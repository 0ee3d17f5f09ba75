"""Feature networks behind LPIPS, CSIM, AED, FID and FVD, loaded from LOCAL files only, and `MetricSuite`.

No weights ship with this package and nothing is downloaded: every network comes from a path the user gives.

* TorchScript feature networks (`load_feature_network(path, kind)`, `torch.jit.load`):
    - "csim" (ArcFace):              image [N, 3, 112, 112] RGB in [-1, 1] -> identity embedding [N, 512]
    - "aed"  (3DMM expression, e.g. Deep3DFaceRecon's expression head):
                                     image [N, 3, 224, 224] RGB in [0, 1] -> expression coefficients [N, 64]
    - "fid"  (Inception-v3 pool3):   image [N, 3, 299, 299] RGB in [0, 1] -> features [N, 2048]
    - "fvd"  (I3D):                  video [N, 3, T, 224, 224] RGB in [-1, 1] -> logits [N, 400] or features [N, 1024]
  Any normalisation beyond these value ranges (ImageNet mean/std, BGR order, ...) belongs inside the scripted module.

* LPIPS (`LPIPS(weights)`): ONE .pth / .safetensors file holding every weight:
    - `backbone.<i>.weight`, `backbone.<i>.bias`: the keys of `torchvision.models.vgg16().features.state_dict()`
      (conv layers i = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), e.g. ImageNet VGG16 weights;
    - `lin<k>.weight` [1, C_k, 1, 1] for k = 0..4: the LPIPS linear heads on relu1_2, relu2_2, relu3_3, relu4_3,
      relu5_3 (C = 64, 128, 256, 512, 512). The official lpips v0.1 names `lin<k>.model.1.weight` are accepted too.
  Narrower backbones with the same layout (other conv widths) load as well; the widths are read from the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from factorportrait.metrics.frechet import fid_from_features, fvd_from_features
from factorportrait.metrics.pixel import psnr_per_frame, ssim_per_frame, to_frames


@dataclass(frozen=True)
class NetworkSpec:
    size: tuple[int, int]  # (H, W) the frames are resized to (bilinear)
    value_range: tuple[float, float]  # the RGB range the network expects
    description: str


NETWORK_SPECS: dict[str, NetworkSpec] = {
    "csim": NetworkSpec((112, 112), (-1.0, 1.0), "ArcFace: image [N,3,112,112] in [-1,1] -> embedding [N,512]"),
    "aed": NetworkSpec(
        (224, 224), (0.0, 1.0), "3DMM expression regressor: image [N,3,224,224] in [0,1] -> coefficients [N,64]"
    ),
    "fid": NetworkSpec((299, 299), (0.0, 1.0), "Inception-v3: image [N,3,299,299] in [0,1] -> features [N,2048]"),
    "fvd": NetworkSpec((224, 224), (-1.0, 1.0), "I3D: video [N,3,T,224,224] in [-1,1] -> features [N,400] or [N,1024]"),
}

# MetricSuite weight names -> network kind.
WEIGHT_KINDS = {"arcface": "csim", "expression": "aed", "inception": "fid", "i3d": "fvd"}
WEIGHT_NAMES = ("lpips", *WEIGHT_KINDS)


def load_feature_network(path: str | Path | None, kind: str) -> torch.nn.Module:
    """Load the TorchScript network of `kind` ("csim", "aed", "fid", "fvd") from a local file, in eval mode."""
    if kind not in NETWORK_SPECS:
        raise ValueError(f"unknown feature network kind {kind!r}; expected one of {sorted(NETWORK_SPECS)}")
    spec = NETWORK_SPECS[kind]
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"{kind} weights not found: {path} (expected a TorchScript file: {spec.description})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated upstream but is the exchange format
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError / zip errors depending on what the file is
        raise ValueError(f"{path} is not a loadable TorchScript file for {kind} ({spec.description}): {exc}") from exc
    return module.eval()


# ----------------------------------------------------------------------------------------------------------- LPIPS
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer constants (inputs in [-1, 1])
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_BLOCK_CONVS = (2, 2, 3, 3, 3)  # convs per block of torchvision's cfg "D"


def _vgg_layout(widths: tuple[int, ...]) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """(conv (index, out width) list, maxpool indices, tap indices) of vgg16().features for given block widths.

    Taps are the ReLU after the last conv of each block: indices 3, 8, 15, 22, 29 = relu1_2 ... relu5_3.
    """
    convs, pools, taps, i = [], [], [], 0
    for width, n in zip(widths, VGG16_BLOCK_CONVS, strict=True):
        for _ in range(n):
            convs.append((i, width))
            i += 2  # conv + relu
        taps.append(i - 1)
        pools.append(i)
        i += 1
    return convs, pools, taps


def make_lpips_state_dict(widths: tuple[int, ...] = VGG16_WIDTHS, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised state dict in the LPIPS file layout (for tests and as a format example)."""
    gen = torch.Generator().manual_seed(seed)
    convs, _, _ = _vgg_layout(tuple(widths))
    sd, c_in = {}, 3
    for i, c_out in convs:
        sd[f"backbone.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * (2.0 / (9 * c_in)) ** 0.5
        sd[f"backbone.{i}.bias"] = torch.zeros(c_out)
        c_in = c_out
    for k, c in enumerate(widths):
        sd[f"lin{k}.weight"] = torch.rand(1, c, 1, 1, generator=gen) / c  # LPIPS heads are non-negative
    return sd


def load_weights_file(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """A .safetensors or torch .pth state dict from a local file; FileNotFoundError names the path and content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (expected {expected})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (expected {expected})")
    return dict(sd)


LPIPS_FILE_CONTENT = "one state dict with backbone.* (torchvision vgg16().features keys) and lin0..lin4.weight"


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018, VGG variant) with every weight from one local file or state dict."""

    def __init__(self, weights: str | Path | Mapping[str, torch.Tensor]):
        super().__init__()
        sd = weights if isinstance(weights, Mapping) else load_weights_file(weights, LPIPS_FILE_CONTENT)
        # Accept the official lpips head names (lin0.model.1.weight) next to the documented lin0.weight.
        sd = {k.replace(".model.1.", "."): v for k, v in sd.items()}
        source = "state dict" if isinstance(weights, Mapping) else str(weights)

        # Conv widths come from the file so narrow test backbones load; the index layout is fixed (vgg16 "D").
        first_convs, _, _ = _vgg_layout(VGG16_WIDTHS)
        missing = [f"backbone.{i}.{p}" for i, _ in first_convs for p in ("weight", "bias")]
        missing = [k for k in missing + [f"lin{k}.weight" for k in range(5)] if k not in sd]
        if missing:
            raise ValueError(f"LPIPS weights {source} lack keys {missing} (expected {LPIPS_FILE_CONTENT})")
        widths = tuple(int(sd[f"backbone.{i}.weight"].shape[0]) for i, _ in first_convs)
        widths = tuple(widths[sum(VGG16_BLOCK_CONVS[: b + 1]) - 1] for b in range(5))  # last conv of each block
        convs, pools, self.taps = _vgg_layout(widths)
        unexpected = sorted(
            set(sd)
            - {f"backbone.{i}.{p}" for i, _ in convs for p in ("weight", "bias")}
            - {f"lin{k}.weight" for k in range(5)}
        )
        if unexpected:
            raise ValueError(f"LPIPS weights {source} have unexpected keys {unexpected[:10]}")

        layers: list[nn.Module] = []
        c_in = 3
        for i in range(pools[-1]):
            conv = dict(convs).get(i)
            if conv is not None:
                c_out = int(sd[f"backbone.{i}.weight"].shape[0])
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
                c_in = c_out
            elif i in pools:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU())
        self.backbone = nn.Sequential(*layers)  # relu5_3 is the last layer LPIPS needs: the last pool is dropped
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        try:
            self.backbone.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("backbone.")})
            for k, lin in enumerate(self.lins):
                lin.load_state_dict({"weight": sd[f"lin{k}.weight"]})
        except RuntimeError as exc:  # shape mismatches: say which file
            raise ValueError(f"LPIPS weights {source} do not fit the vgg16 layout: {exc}") from exc
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """x, y [N, 3, H, W] RGB in [-1, 1] (in [0, 1] with normalize=True) -> distances [N]."""
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        n = x.shape[0]
        h = (torch.cat([x, y]) - self.shift) / self.scale  # one backbone pass for both images
        dist = x.new_zeros(n)
        k = 0
        for i, layer in enumerate(self.backbone):
            h = layer(h)
            if i == self.taps[k]:
                f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit norm over channels
                dist = dist + self.lins[k]((f[:n] - f[n:]).pow(2)).mean((1, 2, 3))
                k += 1
                if k == len(self.taps):
                    break
        return dist


# ------------------------------------------------------------------------------------------------------ the suite
PAIR_METRICS = ("psnr", "ssim", "lpips", "csim", "aed")


@dataclass
class _PairRecord:
    name: str | None
    group: str
    metrics: dict[str, float | None]
    fid: tuple[np.ndarray, np.ndarray] | None = None  # (pred, gt) Inception features [T, 2048]
    fvd: tuple[np.ndarray, np.ndarray] | None = None  # (pred, gt) I3D features [clips, D]
    extra: dict = field(default_factory=dict)


class MetricSuite:
    """Every metric of the paper's Tab. 3 over (pred, gt) video pairs, with optional local weights.

    weights: {"lpips": path, "arcface": path, "expression": path, "inception": path, "i3d": path}, each optional;
    a metric whose weights are not given is reported as None. A given path that does not exist raises
    FileNotFoundError naming it.
    """

    def __init__(
        self,
        weights: Mapping[str, str | Path | None] | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        fvd_clip_len: int = 16,
    ):
        weights = {k: v for k, v in (weights or {}).items() if v}
        unknown = sorted(set(weights) - set(WEIGHT_NAMES))
        if unknown:
            raise ValueError(f"unknown weight names {unknown}; expected some of {list(WEIGHT_NAMES)}")
        self.device = torch.device(device)
        self.batch_size, self.fvd_clip_len = batch_size, fvd_clip_len
        self.lpips = LPIPS(weights["lpips"]).to(self.device) if "lpips" in weights else None
        self.nets = {
            kind: load_feature_network(weights[name], kind).to(self.device)
            for name, kind in WEIGHT_KINDS.items()
            if name in weights
        }
        self.records: list[_PairRecord] = []

    @property
    def groups(self) -> list[str]:
        """Group names in first-seen order."""
        return list(dict.fromkeys(r.group for r in self.records))

    def _resize(self, frames: torch.Tensor, kind: str) -> torch.Tensor:
        """frames [N, 3, H, W] in [0, 1] -> [N, 3, h, w] at the network's size and value range."""
        spec = NETWORK_SPECS[kind]
        if tuple(frames.shape[-2:]) != spec.size:
            frames = F.interpolate(frames, size=spec.size, mode="bilinear", align_corners=False)
        lo, hi = spec.value_range
        return frames * (hi - lo) + lo

    def _run_frames(self, kind: str, frames: torch.Tensor) -> torch.Tensor:
        """frames [T, 3, H, W] in [0, 1] -> network outputs [T, D], in batches."""
        out = [
            self.nets[kind](self._resize(frames[i : i + self.batch_size].to(self.device), kind)).float().flatten(1)
            for i in range(0, frames.shape[0], self.batch_size)
        ]
        return torch.cat(out)

    def _run_clips(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [T, 3, H, W] in [0, 1] -> I3D features [clips, D]: non-overlapping clips of fvd_clip_len frames
        (one clip of all frames when the video is shorter)."""
        t = frames.shape[0]
        length = min(self.fvd_clip_len, t)
        feats = []
        for start in range(0, t - length + 1, length):
            clip = self._resize(frames[start : start + length].to(self.device), "fvd")  # [L, 3, 224, 224]
            feats.append(self.nets["fvd"](clip.permute(1, 0, 2, 3)[None]).float().flatten(1))  # [1, 3, L, h, w]
        return torch.cat(feats)

    @torch.no_grad()
    def evaluate_pair(self, pred_frames, gt_frames, group: str = "all", name: str | None = None) -> dict:
        """pred/gt uint8 [T, H, W, 3] (or float [T, 3, H, W] in [0, 1]) -> {psnr, ssim, lpips, csim, aed}.

        Metrics without weights are None; Inception / I3D features are kept for `finish()`.
        """
        p, g = to_frames(pred_frames), to_frames(gt_frames)  # float64 [T, 3, H, W] in [0, 1]
        if p.shape != g.shape:
            raise ValueError(f"{name or 'pair'}: pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
        p, g = p.to(self.device), g.to(self.device)
        m: dict[str, float | None] = {
            "psnr": float(psnr_per_frame(p, g).mean()),
            "ssim": float(ssim_per_frame(p, g).mean()),
            "lpips": None,
            "csim": None,
            "aed": None,
        }
        p32, g32 = p.float(), g.float()
        if self.lpips is not None:
            d = [
                self.lpips(p32[i : i + self.batch_size], g32[i : i + self.batch_size], normalize=True)
                for i in range(0, p32.shape[0], self.batch_size)
            ]
            m["lpips"] = float(torch.cat(d).mean())
        if "csim" in self.nets:
            m["csim"] = float(F.cosine_similarity(self._run_frames("csim", p32), self._run_frames("csim", g32)).mean())
        if "aed" in self.nets:
            # AED: L1 distance of expression coefficients, averaged over coefficients and frames.
            m["aed"] = float((self._run_frames("aed", p32) - self._run_frames("aed", g32)).abs().mean())
        record = _PairRecord(name, group, m)
        if "fid" in self.nets:
            record.fid = (self._run_frames("fid", p32).cpu().numpy(), self._run_frames("fid", g32).cpu().numpy())
        if "fvd" in self.nets:
            record.fvd = (self._run_clips(p32).cpu().numpy(), self._run_clips(g32).cpu().numpy())
        self.records.append(record)
        return dict(m)

    def finish(self, group: str | None = None) -> dict:
        """Means over the pairs (of `group`, or all) of the per-pair metrics, plus fid/fvd over pooled features.

        Returns {"n_pairs", "psnr", "ssim", "lpips", "csim", "aed", "iqa", "fid", "fvd", "notes"}; None = missing.
        """
        records = [r for r in self.records if group is None or r.group == group]
        if not records:
            raise ValueError(f"no evaluated pairs{'' if group is None else f' in group {group!r}'}")
        out: dict = {"n_pairs": len(records)}
        for key in PAIR_METRICS:
            values = [r.metrics[key] for r in records]
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
        notes = ["iqa: no open IQA model with local weights is specified; reported as n/a"]
        out["iqa"] = None
        for key, fn, what in (("fid", fid_from_features, "frames"), ("fvd", fvd_from_features, "clips")):
            feats = [getattr(r, key) for r in records]
            if any(f is None for f in feats):
                out[key] = None
                notes.append(f"{key}: no weights given")
                continue
            pred, gt = np.concatenate([f[0] for f in feats]), np.concatenate([f[1] for f in feats])
            if min(len(pred), len(gt)) < 2:
                out[key] = None
                notes.append(f"{key}: needs at least 2 {what}, got {len(pred)}")
                continue
            if min(len(pred), len(gt)) <= pred.shape[1]:
                # Fewer samples than feature dimensions: singular covariances, the value is biased and noisy.
                notes.append(
                    f"{key}: only {len(pred)} {what} for {pred.shape[1]}-d features; the estimate is unreliable"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular products: see the note
                out[key] = fn(pred, gt)
        out["notes"] = notes
        return out


__all__ = [
    "LPIPS",
    "LPIPS_FILE_CONTENT",
    "NETWORK_SPECS",
    "WEIGHT_NAMES",
    "MetricSuite",
    "load_feature_network",
    "load_weights_file",
    "make_lpips_state_dict",
]
