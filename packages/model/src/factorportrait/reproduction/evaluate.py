"""Step 5: self-reenactment on held-out data in the four control modes, with swap tests.

Clips: the first `eval_frames` frames of held-out sequences, one control mode per dataset (CONVENTIONS' Fig. 1
modes; `config.CONTROL_MODES`); StudioCapture clips are its non-frontal cameras (a fixed novel view). Reference:
the identity's held-out PhoneCapture sequence, last frame (a frontal "photo"; outside every clip) when it exists,
else the clip's own last sequence frame. Conditions come from the manifest through `ClipDataset` (exactly the
training path: the identity's own normal maps, the cameras relative to the reference, codes, landmarks); the model
samples with the Euler flow sampler from seeded noise; metrics compare with the ground-truth renders:
PSNR / SSIM (factorportrait.metrics.pixel), AED (L1 distance of the expression encoder's codes on generated and
ground-truth frames, as MetricSuite computes it), pose error (the pose regressor's rotation on generated vs
ground-truth frames, degrees) and CSIM (cosine of identity embeddings, generated vs ground truth).
Swap tests (Full model): the same inputs and noise with one control taken from another clip.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.clips import ClipDataset, ClipDatasetConfig
from .config import CONTROL_MODES, ReproConfig
from .data import camera_centre, load_sources, split_roots, view_angle_deg
from .instruments import FILES, apply, face_visible, load_instrument, rotation_error_deg, to_face_input, to_input

METRICS = ("psnr", "ssim", "aed", "face_psnr", "pose_deg", "csim")
FACE_MARGIN_PX = 2.0  # around each part's landmark box
SWAPS = ("camera", "expression", "normals", "reference")


class FixedReferenceClips(ClipDataset):
    """One clip per source (frames 0 .. T-1) with an explicitly chosen reference (source, frame) per clip."""

    def __init__(self, sources, config: ClipDatasetConfig, references) -> None:
        super().__init__(sources, config)
        self.references = {s.sequence_id: r for s, r in zip(sources, references, strict=True)}

    def reference_for(self, index: int):
        return self.references[self.clips[index].source.sequence_id]


def _round_robin(sources: list) -> list:
    """Interleave identities so the first k clips span as many identities as possible."""
    by_id: dict[str, list] = defaultdict(list)
    for s in sorted(sources, key=lambda s: s.sequence_id):
        by_id[s.identity].append(s)
    out, queues = [], list(by_id.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def eval_clips(config: ReproConfig, run_dir: Path, split: str) -> dict[str, list[dict[str, Any]]]:
    """{control mode: [clip sample dicts (+ "mode", "reference_frames")]} of a held-out split."""
    roots = split_roots(run_dir, split)
    sources = {name: load_sources({name: root}) for name, root in roots.items()}
    phone = {s.identity: s for s in sorted(sources.get("PhoneCapture", []), key=lambda s: s.sequence_id)}
    out: dict[str, list[dict[str, Any]]] = {}
    for mode, dataset in CONTROL_MODES.items():
        pool = [s for s in sources.get(dataset, []) if s.num_frames > config.eval_frames]
        if dataset == "StudioCapture":  # a fixed *novel* view: cameras away from the frontal phone camera
            pool = [
                s
                for s in pool
                if s.identity not in phone or view_angle_deg(camera_centre(s), camera_centre(phone[s.identity])) > 10
            ]
        pool = _round_robin(pool)[: config.eval_clips_per_mode]
        if not pool:
            continue
        refs = []
        for s in pool:
            ref = phone.get(s.identity, s)
            refs.append((ref, ref.num_frames - 1))
        options = dict(
            frames=config.eval_frames,
            height=config.resolution,
            width=config.resolution,
            stride=config.frames_per_sequence,
            reference="same_sequence",
            seed=config.seed,
        )
        if all(getattr(s, "landmarks", None) is not None for s in pool):
            options["landmarks"] = True  # manifest 1.1: the C3 model's condition
        ds = FixedReferenceClips(pool, ClipDatasetConfig(**options), refs)
        clips = []
        for i in range(len(ds)):
            sample = ds.load(i)
            sample["mode"] = mode
            clips.append(sample)
        out[mode] = clips
    return out


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


class InstrumentSet:
    """The three instruments: the expression encoder on face crops (from the ground truth's landmarks, the same
    crop for a generated frame), pose and identity on whole frames."""

    def __init__(self, run_dir: Path, size: int, device: str = "cpu") -> None:
        self.size = size
        self.nets = {k: load_instrument(run_dir, k, device) for k in ("expression", "pose", "identity")}

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, clip: dict | None = None) -> dict[str, torch.Tensor]:
        """frames uint8 [T, H, W, 3]; `clip` (its "landmarks" / "landmark_visible", those of the ground truth)
        places the face crop and says which frames show a face ("face" [T] bool; all without landmarks)."""
        marks = None if clip is None or "landmarks" not in clip else clip["landmarks"]
        whole = to_input(frames, self.size)
        out = {
            "expression": apply(self.nets["expression"], to_face_input(frames, marks, self.size)),
            "pose": apply(self.nets["pose"], whole),
            "identity": F.normalize(apply(self.nets["identity"], whole), dim=-1),
        }
        visible = None if marks is None else clip.get("landmark_visible")
        out["face"] = torch.from_numpy(face_visible(None if visible is None else np.asarray(visible), len(frames)))
        if marks is not None:
            out["region"] = expression_region(np.asarray(marks), out["face"].numpy(), frames.shape[1], frames.shape[2])
        return out


def expression_region(landmarks: np.ndarray, face: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, H, W] bool: pixels inside the eye and mouth landmark boxes (+ FACE_MARGIN_PX) of frames with a face.

    landmarks [T, 68, 2] in pixels with pixel centres at i + 0.5 (CONVENTIONS 1); face [T] bool."""
    mask = np.zeros((len(landmarks), height, width), bool)
    centres_y, centres_x = np.arange(height) + 0.5, np.arange(width) + 0.5
    for t in np.flatnonzero(face):
        for part in (slice(36, 42), slice(42, 48), slice(48, 68)):
            pts = landmarks[t, part]
            lo, hi = pts.min(0) - FACE_MARGIN_PX, pts.max(0) + FACE_MARGIN_PX
            rows = (centres_y >= lo[1]) & (centres_y <= hi[1])
            cols = (centres_x >= lo[0]) & (centres_x <= hi[0])
            mask[t] |= rows[:, None] & cols[None, :]
    return mask


def region_psnr(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None) -> float:
    """PSNR (dB, 8-bit) over the pixels of `region` [T, H, W] pooled over the clip; NaN for an empty region."""
    if region is None or not region.any():
        return float("nan")
    diff = pred.astype(np.float64)[region] - gt.astype(np.float64)[region]
    mse = float((diff**2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _nanmean(values: list[float]) -> float:
    """Mean over clips, skipping NaN (AED of a clip without a visible face); NaN when every value is."""
    arr = np.asarray(values, float)
    return float(arr[~np.isnan(arr)].mean()) if (~np.isnan(arr)).any() else float("nan")


def clip_metrics(pred: np.ndarray, gt: np.ndarray, pred_inst: dict, gt_inst: dict) -> dict[str, float]:
    """Per-clip metrics; AED over the frames whose ground truth shows a face (NaN when none does); face_psnr over
    the ground truth's eye and mouth boxes (an instrument-free expression metric; NaN without landmarks)."""
    from ..metrics import psnr_per_frame, ssim_per_frame, to_frames

    p, g = to_frames(pred), to_frames(gt)
    face = gt_inst["face"]
    expression_l1 = (pred_inst["expression"] - gt_inst["expression"]).abs().mean(-1)[face]
    return {
        "psnr": float(psnr_per_frame(p, g).mean()),
        "ssim": float(ssim_per_frame(p, g).mean()),
        "aed": float(expression_l1.mean()) if len(expression_l1) else float("nan"),
        "face_psnr": region_psnr(pred, gt, gt_inst.get("region")),
        "pose_deg": float(rotation_error_deg(pred_inst["pose"], gt_inst["pose"]).mean()),
        "csim": float((pred_inst["identity"] * gt_inst["identity"]).sum(-1).mean()),
    }


class Conditions:
    """Model inputs of a list of clips, built as training builds them (`trainer.encode_batch` and
    `trainer.condition_inputs`), encoded once and reused for every seed, model and swap."""

    def __init__(self, clips: list[dict], vae, device) -> None:
        from ..data.clips import collate_clips
        from ..trainer import encode_batch

        self.clips, self.device = clips, device
        self.batch = collate_clips([{k: v for k, v in c.items() if k != "mode"} for c in clips])
        self.latents = encode_batch(vae, self.batch, device, torch.float32)

    def inputs(
        self, model, dtype, swap: str | None = None, donors: list[int] | None = None, source: Conditions | None = None
    ) -> dict[str, Any]:
        """Condition keyword arguments; with `swap`, that control comes from clip donors[i] of `source`."""
        from types import SimpleNamespace

        from ..trainer import condition_inputs

        batch, latents = dict(self.batch), dict(self.latents)
        if swap is not None:
            src, idx = source or self, torch.as_tensor(donors)
            if swap == "camera":
                batch["ray_features"] = src.batch["ray_features"][idx]
            elif swap == "expression":
                for key in ("expression", "landmarks", "landmark_visible"):
                    if key in batch:
                        batch[key] = src.batch[key][idx]
            elif swap == "normals":
                latents["normal_latents"] = src.latents["normal_latents"][idx]
            elif swap == "reference":
                latents["reference_latent"] = src.latents["reference_latent"][idx]
            else:
                raise ValueError(f"unknown swap {swap!r}; expected one of {SWAPS}")
        if model.config.expression_mode == "landmarks" and "landmarks" not in batch:
            raise ValueError("the C3 model needs landmarks, but the evaluation clips carry none (manifest < 1.1?)")
        options = SimpleNamespace(use_normals=model.config.use_normals, expression_mode=model.config.expression_mode)
        return condition_inputs(latents, batch, options, self.device, dtype)


@torch.no_grad()
def generate(model, vae, inputs: dict, shape: tuple[int, ...], steps: int, seed: int, dtype) -> torch.Tensor:
    """Euler flow sampling from seeded noise -> decoded videos [B, 3, T, H, W] in [-1, 1]."""
    from ..training.flow_matching import euler_sample, sigma_schedule

    device = next(model.parameters()).device
    args = {k: (v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}

    def velocity(x, t):
        return model(latents=x.to(dtype), timestep=t.to(device), **args).sample.float()

    x0 = euler_sample(velocity, shape, sigma_schedule(steps, 3.0), torch.Generator().manual_seed(seed), device=device)
    return torch.cat([vae.decode(x0[i : i + 1].to(vae.dtype)).float().cpu() for i in range(len(x0))])


def donor_indices(clips: list[dict], kind: str, all_dynamic: list[dict] | None) -> tuple[list[int], list[dict]]:
    """For each clip the index of the clip lending the swapped control, and the list it indexes."""
    n = len(clips)
    if kind == "camera" and all_dynamic and clips[0]["mode"] in ("static-frontal", "static-novel-view"):
        # static modes share one camera: a swap inside the mode would change nothing by construction
        return [i % len(all_dynamic) for i in range(n)], all_dynamic
    donors = []
    for i, clip in enumerate(clips):
        order = [(i + k) % n for k in range(1, n)]
        other_id = [j for j in order if clips[j]["sequence_id"].split("/")[0] != clip["sequence_id"].split("/")[0]]
        donors.append((other_id or order or [i])[0])
    return donors, clips


def safe_name(sequence_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", sequence_id)


def evaluate_model(
    config: ReproConfig,
    run_dir: Path,
    variant: str,
    model_dir: Path,
    splits: dict[str, dict[str, list[dict]]],
    swaps: bool,
    log=print,
) -> dict:
    """Metrics per split / mode / seed (means over clips), per clip for seed 0, and swap tests when asked."""
    from ..transformer import FactorPortraitTransformer
    from ..vae import WanVideoVAE
    from ..video_io import write_mp4

    device = torch.device(config.device)
    dtype = torch.bfloat16 if config.mixed_precision == "bf16" and device.type == "cuda" else torch.float32
    model = FactorPortraitTransformer.from_pretrained(str(model_dir)).to(device, dtype).eval()
    vae = WanVideoVAE.from_pretrained(Path(run_dir) / "wan").to(device)
    instruments = InstrumentSet(run_dir, config.instrument_size, config.device)
    result: dict[str, Any] = {"model": str(model_dir), "splits": {}, "swaps": {}}
    for split, modes in splits.items():
        split_out: dict[str, Any] = {}
        for mode, clips in modes.items():
            cond = Conditions(clips, vae, device)
            gts = [to_uint8(c["video"]) for c in clips]
            gt_inst = [instruments(g, c) for g, c in zip(gts, clips, strict=True)]
            shape = tuple(cond.latents["latents"].shape)
            runs = [None] + (list(SWAPS) if swaps and split == "heldout_ids" else [])
            mode_out: dict[str, Any] = {}
            for swap in runs:
                if swap is None:
                    inputs = cond.inputs(model, dtype)
                else:
                    donors, donor_clips = donor_indices(clips, swap, modes.get("all-dynamic"))
                    source = cond if donor_clips is clips else Conditions(donor_clips, vae, device)
                    inputs = cond.inputs(model, dtype, swap, donors, source)
                per_seed = {}
                for seed in config.eval_seeds:
                    videos = generate(model, vae, inputs, shape, config.eval_steps, seed, dtype)
                    per_clip = []
                    for i, clip in enumerate(clips):
                        pred = to_uint8(videos[i])
                        per_clip.append(clip_metrics(pred, gts[i], instruments(pred, clip), gt_inst[i]))
                        if seed == config.eval_seeds[0] and swap is None:
                            base = Path(run_dir) / "eval" / "videos"
                            rel = Path(split) / mode / f"{safe_name(clip['sequence_id'])}.mp4"
                            for kind, frames in ((variant, pred), ("gt", gts[i])):
                                path = base / kind / rel
                                if kind == "gt" and path.exists():
                                    continue
                                path.parent.mkdir(parents=True, exist_ok=True)
                                write_mp4(frames, path, fps=25.0, crf=10)
                                path.with_suffix(".json").write_text(json.dumps({"control_mode": mode}))
                            ref_path = base / "reference" / rel.with_suffix(".png")
                            if not ref_path.exists():
                                from PIL import Image

                                ref_path.parent.mkdir(parents=True, exist_ok=True)
                                Image.fromarray(to_uint8(clip["reference"])[0]).save(ref_path)
                    per_seed[seed] = {
                        "mean": {m: _nanmean([c[m] for c in per_clip]) for m in METRICS},
                        "clips": {clips[i]["sequence_id"]: c for i, c in enumerate(per_clip)},
                    }
                key = "true" if swap is None else swap
                mode_out[key] = per_seed
                log(
                    f"eval {variant} {split} {mode} {key}: "
                    + ", ".join(f"{m}={np.mean([s['mean'][m] for s in per_seed.values()]):.3f}" for m in METRICS)
                )
            split_out[mode] = mode_out
        result["splits"][split] = split_out
    return result


@torch.no_grad()
def baselines(config: ReproConfig, run_dir: Path, splits: dict[str, dict[str, list[dict]]]) -> dict:
    """Seed-free reference points: the VAE's reconstruction of the ground truth (an upper bound for every
    model, which decodes through it) and the reference frame repeated (what ignoring every control scores)."""
    from ..vae import WanVideoVAE

    device = torch.device(config.device)
    vae = WanVideoVAE.from_pretrained(Path(run_dir) / "wan").to(device)
    instruments = InstrumentSet(run_dir, config.instrument_size, config.device)
    out: dict[str, Any] = {}
    for split, modes in splits.items():
        for mode, clips in modes.items():
            rows = defaultdict(list)
            for clip in clips:
                gt = to_uint8(clip["video"])
                gt_inst = instruments(gt, clip)
                recon = to_uint8(vae.decode(vae.encode_video(clip["video"][None].to(device))).float().cpu()[0])
                ref = np.repeat(to_uint8(clip["reference"]), len(gt), axis=0)
                for name, pred in (("vae", recon), ("reference", ref)):
                    rows[name].append(clip_metrics(pred, gt, instruments(pred, clip), gt_inst))
            for name, values in rows.items():
                out.setdefault(name, {}).setdefault(split, {})[mode] = {
                    m: _nanmean([v[m] for v in values]) for m in METRICS
                }
    return out


def run_model_eval(run_dir: Path, variant: str, split: str = "heldout_ids") -> dict:
    """`model-eval` on the written seed-0 mp4s with the instruments as its weights (shows the CLI takes them)."""
    from ..cli.evaluate import main

    base = Path(run_dir) / "eval" / "videos"
    out = Path(run_dir) / "eval" / f"model_eval_{variant}"
    inst = Path(run_dir) / "instruments"
    rc = main(
        [
            "--pred",
            str(base / variant / split),
            "--gt",
            str(base / "gt" / split),
            "--weights",
            f"arcface={inst / FILES['csim']},expression={inst / FILES['aed']}",
            "--out",
            str(out),
            "--dataset",
            f"{variant}-{split}",
            "--device",
            "cpu",
        ]
    )
    if rc != 0:
        raise RuntimeError(f"model-eval exited with {rc}")
    return json.loads((out / "results.json").read_text())["groups"]
