"""Step 6: docs/reproduction.md (or any path) from the run folder's step summaries, and its contact sheet."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .config import CONTROL_MODES, ReproConfig
from .data import instrument_identities
from .evaluate import METRICS, SWAPS, safe_name

LABELS = {"full": "Full", "c1": "C1 (no DynamicSweep)", "c2": "C2 (no normal maps)", "c3": "C3 (landmarks)"}
HEAD = {
    "psnr": "PSNR ↑",
    "ssim": "SSIM ↑",
    "csim": "CSIM ↑",
    "aed": "AED ↓",
    "face_psnr": "eye+mouth PSNR ↑",
    "pose_deg": "Pose err (deg) ↓",
}
HIGHER = {"psnr": True, "ssim": True, "csim": True, "aed": False, "face_psnr": True, "pose_deg": False}
TAB2_METRICS = ("psnr", "ssim", "csim", "aed", "face_psnr", "pose_deg")
DYNAMIC_POSE_MODES = ("static-frontal", "static-novel-view", "all-dynamic")
#: Metrics of each swap test; the first is the one the acceptance counts, the others are shown as diagnostics.
#: Expression is judged on the instrument-free eye+mouth PSNR: the trained expression encoder has no resolution
#: across identities at 64 px (its held-out R² is about 0, see the instruments table), so its AED row is shown only.
SWAP_METRICS = {"camera": ("psnr",), "expression": ("face_psnr", "aed"), "normals": ("psnr",), "reference": ("csim",)}


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _fmt(mean: float, std: float | None, metric: str) -> str:
    digits = 2 if metric in ("psnr", "face_psnr", "pose_deg") else 3
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seed_values(run: dict, split: str, modes: list[str] | None, metric: str, key: str = "true") -> list[float]:
    """Per seed: the mean over the given modes (and their clips) of one metric."""
    split_data = run["splits"].get(split, {})
    modes = [m for m in (modes or list(split_data)) if m in split_data and key in split_data[m]]
    if not modes:
        return []
    seeds = list(split_data[modes[0]][key])
    values = [[split_data[m][key][s]["mean"].get(metric, math.nan) for m in modes] for s in seeds]
    return [float(np.nanmean(v)) if not np.isnan(v).all() else math.nan for v in values]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def contact_sheet(run_dir: Path, evals: dict[str, dict], out: Path, clips: int) -> Path | None:
    """Rows: one held-out clip per control mode; columns: reference, ground truth, Full, C1, C2, C3 (mid frame)."""
    from PIL import Image, ImageDraw

    from .data import decode_all

    base = Path(run_dir) / "eval" / "videos"
    split = "heldout_ids"
    full = evals.get("full", {}).get("splits", {}).get(split, {})
    picks = []
    for mode, data in full.items():
        seq = sorted(next(iter(data["true"].values()))["clips"])[0]
        picks.append((mode, seq))
    picks = picks[:clips]
    if not picks:
        return None
    columns = ["reference", "gt", *[v for v in ("full", "c1", "c2", "c3") if v in evals]]
    scale, pad, top = 2, 4, 18
    cells = []
    for mode, seq in picks:
        rel = Path(split) / mode / f"{safe_name(seq)}.mp4"
        row = []
        for col in columns:
            if col == "reference":
                image = np.asarray(Image.open(base / "reference" / rel.with_suffix(".png")).convert("RGB"))
            else:
                path = base / col / rel
                video = decode_all(path) if path.exists() else None
                image = video[len(video) // 2] if video is not None else None
            row.append(image)
        cells.append((mode, seq, row))
    size = next(c for _, _, r in cells for c in r if c is not None).shape[0] * scale
    width = len(columns) * (size + pad) + pad + 150
    height = top + len(cells) * (size + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    names = {"reference": "reference", "gt": "ground truth", "full": "Full", "c1": "C1", "c2": "C2", "c3": "C3"}
    for j, col in enumerate(columns):
        draw.text((150 + pad + j * (size + pad), 3), names[col], fill="black")
    for i, (mode, seq, row) in enumerate(cells):
        y = top + pad + i * (size + pad)
        draw.text((4, y + 4), mode, fill="black")
        draw.text((4, y + 18), seq, fill="gray")
        for j, image in enumerate(row):
            if image is None:
                continue
            tile = Image.fromarray(image).resize((size, size), Image.NEAREST)
            sheet.paste(tile, (150 + pad + j * (size + pad), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(out)
    return out


def write_report(config: ReproConfig, run_dir: Path, report_path: Path, summaries: dict[str, dict]) -> Path:
    from .steps import write_text_atomic

    run_dir, report_path = Path(run_dir), Path(report_path)
    s = {k: v.get("summary", {}) for k, v in summaries.items()}
    walls = {k: v.get("wall_s", 0.0) for k, v in summaries.items()}
    evals = {v: s[f"eval-{v}"] for v in ("full", "c1", "c2", "c3") if "splits" in s.get(f"eval-{v}", {})}
    failed = {k: v["summary"]["error"] for k, v in summaries.items() if v.get("summary", {}).get("error")}
    data = s.get("data-plan", {})
    lines: list[str] = []
    add = lines.append
    add("# Reproduction at CPU scale: the ablation table and the four control modes on held-out data\n")
    add(
        f"Generated by `uv run python pipelines/reproduce.py --preset {config.preset} --out {run_dir}` "
        f"(issue 15). Every number below comes from that run; nothing was tuned on the evaluation data. "
        f"Rerunning the command resumes finished steps and regenerates this page.\n"
    )
    add("## How to rerun\n")
    add("```bash")
    add("uv run python pipelines/reproduce.py --preset cpu --out runs/repro      # this page; 2-core CPU")
    add("uv run python pipelines/reproduce.py --preset gpu --out runs/repro-gpu  # one CUDA GPU, larger (untested)")
    add("uv run python pipelines/reproduce.py --preset micro --out /tmp/m --report /tmp/m/r.md  # seconds per step")
    add("uv run python pipelines/reproduce.py --preset cpu --out runs/x --set vae_steps=1000  # any preset field")
    add("```")
    add(
        "Presets: `packages/model/configs/reproduction/{cpu,gpu,micro}.toml` (typed: "
        "`factorportrait.reproduction.config.ReproConfig`). The run folder holds `data/<split>/<Dataset>/` "
        "(datagen roots), `wan/` (the trained VAE in `vae/` and the prior in `transformer/`: a diffusers Wan "
        "folder for `model-train --wan`), `train/<variant>/stage<k>/` (model-train outputs), `instruments/`, "
        "`eval/` (videos, `model-eval` output) and `steps/*.done.json` (one marker per finished step: a rerun "
        "skips those; delete a marker to redo its step). `--report PATH` writes this page elsewhere.\n"
    )
    # ---------------------------------------------------------------- setup
    add("## Setup\n")
    add(f"- Preset `{config.preset}`: {config.resolution} px frames, device `{config.device}`, seed {config.seed}.")
    add(f"- Train identities: {', '.join(config.train_ids)}.")
    add(f"- Held-out identities (never trained on): {', '.join(config.heldout_ids)}.")
    add(
        f"- Held-out sequences of train identities: {', '.join(config.heldout_sequence_ids)} rendered with plan "
        f"seed {config.heldout_sequence_seed} (training renders use seed {config.seed})."
    )
    if config.instrument_ids > 0:
        extra = instrument_identities(config)
        add(
            f"- Instrument identities (for the instruments only, never for fine-tuning): {len(extra)} generated demo "
            f"avatars ({extra[0]} ... {extra[-1]}) whose face shapes mix only train identities' meshes, with their "
            "own colours and capture tracks; sequences per identity: "
            + ", ".join(f"{k} {v}" for k, v in config.instrument_sequences.items())
            + f", plan seed {config.seed + 2}."
        )
    add(
        f"- Datasets rendered with datagen: {', '.join(data.get('available', [])) or 'none'}"
        + (f"; missing (datagen has no such mode): {', '.join(data['missing'])}" if data.get("missing") else "")
        + f". {config.frames_per_sequence} frames per sequence; sequences per train identity: "
        + ", ".join(f"{k} {v}" for k, v in config.sequences.items())
        + f"; spins sweep {config.spin_sweep_deg:g} deg per sequence."
    )
    vae = s.get("vae", {})
    if vae:
        add(
            f"- VAE: diffusers `AutoencoderKLWan` {vae['config']} ({vae['parameters'] / 1e6:.2f} M parameters, "
            f"{vae['steps']} steps), 16 latent channels, 8x spatial and 4x temporal compression."
        )
    prior = s.get("prior", {})
    if prior:
        c = prior["config"]
        add(
            f"- Prior: `WanTransformer3DModel` with {c['num_layers']} layers, {c['num_attention_heads']} heads x "
            f"{c['attention_head_dim']} ({prior['parameters'] / 1e6:.2f} M parameters), {prior['steps']} steps "
            f"of batch {config.prior_batch} on {prior['train_windows']} {config.prior_frames}-frame training "
            "windows, empty prompt (a plain video prior standing in for Wan 2.1 T2V)."
        )
    add(
        f"- Fine-tuning (`factorportrait.trainer.train`, what `model-train` runs): frames per stage "
        f"{config.stage_frames} (paper 13/25/49/81), iterations {config.stage_iterations} (paper 20k/20k/20k/30k), "
        f"batch {config.train_batch}, learning rates {config.stage_lr}; Tab. 1 mixtures restricted to the rendered "
        "datasets. C1 = Tab. 1 without DynamicSweep (stages 1-2 have none, so C1 starts stage 3 from Full's "
        'stage 2); C2 = `use_normals = false`; C3 = `expression_mode = "landmarks"`.'
    )
    add(
        f"- Evaluation: {config.eval_frames}-frame clips (frames 0..{config.eval_frames - 1}) of held-out sequences, "
        f"up to {config.eval_clips_per_mode} per control mode and split; reference = the identity's held-out "
        "PhoneCapture frame (a frontal photo) when rendered, else the sequence's last frame; conditions from the "
        f"manifest through `ClipDataset`; Euler sampler, {config.eval_steps} steps, seeds {config.eval_seeds}; "
        "numbers are mean ± standard deviation over the seeds of the per-seed mean over clips."
    )
    add(
        "- Metrics: PSNR / SSIM against the ground-truth renders; AED = mean L1 distance between the trained "
        "expression encoder's codes on generated and ground-truth frames; pose error = geodesic angle between the "
        "pose regressor's head rotations on generated and ground-truth frames; CSIM = cosine similarity of the "
        "identity embeddings of generated and ground-truth frames. LPIPS / FID / FVD / IQA need outside weights "
        "and are left out.\n"
    )
    if failed:
        add("**Failed steps** (the rest of the chain ran without them):\n")
        for k, v in failed.items():
            add(f"- `{k}`: {v}")
        add("")
    # ---------------------------------------------------------------- VAE / prior / training
    if vae:
        add("## VAE reconstruction\n")
        rows = []
        for split in ("heldout_ids", "train"):
            for kind in ("rgb", "normals"):
                vals = vae.get(split, {}).get(kind, {})
                if vals:
                    rows.append([split, kind] + [_num(vals.get(d), 2) for d in [*CONTROL_MODES.values(), "all"]])
        add(_table(["split", "video", *CONTROL_MODES.values(), "all"], rows))
        add(
            "\nPSNR in dB of whole videos (8-bit); aim: >= 28 dB on held-out identities. "
            f"Final loss {vae['final_loss']:.4f}.\n"
        )
    if prior:
        add("## Prior\n")
        add(
            f"Flow-matching loss at 5 fixed noise levels: train {prior['fixed_sigma_loss_train']:.4f}, held-out "
            f"identities {prior['fixed_sigma_loss_heldout_ids']:.4f} (a model that predicts zero velocity scores "
            "about 2 on unit-variance latents).\n"
        )
    train_rows = []
    for variant in ("full", "c1", "c2", "c3"):
        for stage in range(1, 5):
            t = s.get(f"train-{variant}-stage{stage}")
            if t and "stage" in t:
                mix = ", ".join(f"{k} {v:.0%}" for k, v in t["mixture"].items())
                train_rows.append(
                    [
                        LABELS[variant],
                        str(stage),
                        str(t["frames"]),
                        str(t["iterations"]),
                        mix,
                        f"{t['first_loss']:.4f}",
                        f"{t['last_loss']:.4f}",
                    ]
                )
    if train_rows:
        add("## Fine-tuning\n")
        add(
            _table(
                ["model", "stage", "frames", "iterations", "mixture", "loss (first 20%)", "loss (last 20%)"], train_rows
            )
        )
        add("")
    # ---------------------------------------------------------------- instruments
    inst = s.get("instruments", {})
    if inst:
        add("## Instruments (trained on the training renders; their own error on held-out data)\n")
        rows = []
        for split, a in inst.get("accuracy", {}).items():
            rows.append(
                [
                    split,
                    f"{a['frames']} ({a.get('face_frames', a['frames'])})",
                    f"{a['expression_l1']:.4f} (mean: {a['expression_l1_predict_train_mean']:.4f}, "
                    f"R² {a['expression_r2']:.2f})",
                    f"{a['rotation_err_deg']:.2f} (mean: {a['rotation_err_deg_predict_train_mean']:.2f})",
                    f"{a['translation_err_mm']:.1f} (mean: {a['translation_err_mm_predict_train_mean']:.1f})",
                    f"{_num(a['csim_same_identity'])} / {_num(a['csim_different_identity'])} "
                    f"(AUC {_num(a['identity_auc'])})",
                ]
            )
        add(
            _table(
                [
                    "split",
                    "frames (with a face)",
                    "expression L1 (predict-the-mean)",
                    "rotation err deg",
                    "translation err mm",
                    "CSIM same / different identity",
                ],
                rows,
            )
        )
        add(
            "\nTwo ResNet34s exported as three `ExpressionEncoder` state dicts "
            f"(`{run_dir}/instruments/`): the expression encoder reads a roll-normalised face crop placed by the "
            "ground truth's landmarks (the same crop for the generated frame) and is trained and scored on frames "
            "that show a face; pose and identity share one trunk on whole frames. `aed.pt` and `csim.pt` are the "
            "TorchScript files `model-eval --weights expression=...,arcface=...` takes (model-eval has no landmarks: "
            "aed.pt crops the mean training face box). The expression L1 is the AED this encoder would report for a "
            "perfect "
            "generator: differences below it are within the instrument's resolution.\n"
        )
    # ---------------------------------------------------------------- Tab. 2
    if evals:
        base = s.get("eval-baselines", {})
        for split, title in (
            ("heldout_ids", "held-out identities"),
            ("heldout_seqs", "held-out sequences of train identities"),
        ):
            if not any(split in e["splits"] for e in evals.values()):
                continue
            add(f"## Tab. 2 shape: ablations on {title} (all control modes pooled)\n")
            rows = []
            for variant, e in evals.items():
                cells = [LABELS[variant]]
                for m in TAB2_METRICS:
                    vals = seed_values(e, split, None, m)
                    cells.append(_fmt(*_stats(vals), m) if vals else "n/a")
                rows.append(cells)
            for name, label in (
                ("vae", "VAE reconstruction of GT (upper bound)"),
                ("reference", "reference repeated (no model)"),
            ):
                b = base.get(name, {}).get(split)
                if b:
                    rows.append(
                        [label] + [_fmt(float(np.nanmean([b[mm][m] for mm in b])), None, m) for m in TAB2_METRICS]
                    )
            add(_table(["Method", *[HEAD[m] for m in TAB2_METRICS]], rows))
            add("")
        # ------------------------------------------------------------ Tab. 3
        add("## Tab. 3 shape: per control mode (held-out identities)\n")
        rows = []
        for mode, dataset in CONTROL_MODES.items():
            for variant, e in evals.items():
                if mode not in e["splits"].get("heldout_ids", {}):
                    continue
                cells = [dataset, mode, LABELS[variant]]
                for m in METRICS:
                    cells.append(_fmt(*_stats(seed_values(e, "heldout_ids", [mode], m)), m))
                rows.append(cells)
            for name, label in (("vae", "VAE recon (upper bound)"), ("reference", "reference repeated")):
                b = base.get(name, {}).get("heldout_ids", {}).get(mode)
                if b:
                    rows.append([dataset, mode, label] + [_fmt(b[m], None, m) for m in METRICS])
        add(_table(["Dataset", "Control mode", "Method", *[HEAD[m] for m in METRICS]], rows))
        add("")
        # ------------------------------------------------------------ swaps
        swap_rows, swap_ok = [], []
        for variant, e in evals.items():
            for mode, data in e["splits"].get("heldout_ids", {}).items():
                for swap in SWAPS:
                    if swap not in data:
                        continue
                    for k, m in enumerate(SWAP_METRICS[swap]):
                        true_vals = seed_values(e, "heldout_ids", [mode], m)
                        swap_vals = seed_values(e, "heldout_ids", [mode], m, key=swap)
                        if not true_vals or not swap_vals or np.isnan(true_vals + swap_vals).any():
                            continue  # e.g. face_psnr of a run without landmarks
                        t_mean, t_std = _stats(true_vals)
                        w_mean, w_std = _stats(swap_vals)
                        worse = (t_mean - w_mean) if HIGHER[m] else (w_mean - t_mean)
                        spread = max(t_std, w_std)
                        ok = worse > spread
                        counted = variant == "full" and k == 0  # acceptance: the Full model's first metric
                        if counted:
                            swap_ok.append(ok)
                        swap_rows.append(
                            [
                                LABELS[variant],
                                mode,
                                swap,
                                HEAD[m] + ("" if k == 0 else " (diagnostic)"),
                                _fmt(t_mean, t_std, m),
                                _fmt(w_mean, w_std, m),
                                f"{worse:+.3f}",
                                f"{spread:.3f}",
                                "yes" if ok else "**no**",
                            ]
                        )
        if swap_rows:
            add("## Swap tests (held-out identities)\n")
            add(
                "The same model, inputs and noise, with one control taken from another clip: camera = the ray maps "
                "of another clip (from the all-dynamic clips for the static modes, where every clip shares one "
                "camera), expression = another clip's codes, normals = another clip's normal maps, reference = "
                "another identity's reference image. 'worse by' is in the metric's bad direction; the verdict asks "
                "for more than the larger seed standard deviation. Expression is judged on the PSNR inside the ground "
                "truth's eye and mouth landmark boxes (no instrument involved); its AED row is a diagnostic because "
                "the expression encoder cannot resolve expressions across identities here (instruments table). "
                "The acceptance check counts the Full model's rows (first metric of each control); "
                "other models' rows (`swap_variants`) are diagnostics: C2 has no normal maps, so its rows show "
                "whether a control is used when the normal maps cannot carry it.\n"
            )
            add(
                _table(
                    [
                        "Model",
                        "Control mode",
                        "swapped control",
                        "metric",
                        "true control",
                        "swapped",
                        "worse by",
                        "seed spread",
                        "worse?",
                    ],
                    swap_rows,
                )
            )
            add("")
            _camera_swap_section(add, run_dir, evals, config.eval_frames)
        # ------------------------------------------------------------ acceptance
        add("## Acceptance checks (issue 15)\n")
        checks = []
        if "full" in evals and "c2" in evals:
            for mode in DYNAMIC_POSE_MODES:
                f = seed_values(evals["full"], "heldout_ids", [mode], "psnr")
                c = seed_values(evals["c2"], "heldout_ids", [mode], "psnr")
                if f and c:
                    checks.append(
                        (
                            f"Full beats C2 on PSNR, {mode}",
                            np.mean(f) > np.mean(c),
                            f"{np.mean(f):.3f} vs {np.mean(c):.3f} dB",
                        )
                    )
        if "full" in evals and "c3" in evals:
            f, c = (
                seed_values(evals["full"], "heldout_ids", None, "aed"),
                seed_values(evals["c3"], "heldout_ids", None, "aed"),
            )
            if f and c:
                checks.append(
                    (
                        "Full beats C3 on AED (all modes)",
                        np.mean(f) < np.mean(c),
                        f"{np.mean(f):.4f} vs {np.mean(c):.4f}",
                    )
                )
            f, c = (
                seed_values(evals["full"], "heldout_ids", None, "face_psnr"),
                seed_values(evals["c3"], "heldout_ids", None, "face_psnr"),
            )
            if f and c and not np.isnan(f + c).any():
                checks.append(
                    (
                        "(extra, instrument-free) Full beats C3 on eye+mouth PSNR (all modes)",
                        np.mean(f) > np.mean(c),
                        f"{np.mean(f):.3f} vs {np.mean(c):.3f} dB",
                    )
                )
        if "full" in evals and "c1" in evals:
            for m in ("psnr", "ssim"):
                f = seed_values(evals["full"], "heldout_ids", ["all-dynamic"], m)
                c = seed_values(evals["c1"], "heldout_ids", ["all-dynamic"], m)
                if f and c:
                    checks.append(
                        (
                            f"Full beats C1 on {m.upper()}, all-dynamic",
                            np.mean(f) > np.mean(c),
                            f"{np.mean(f):.3f} vs {np.mean(c):.3f}",
                        )
                    )
        if swap_ok:
            checks.append(
                (
                    "every swap test worse than the true control by more than the seed spread",
                    all(swap_ok),
                    f"{sum(swap_ok)} of {len(swap_ok)}",
                )
            )
        add(_table(["check", "holds?", "numbers"], [[c, "yes" if ok else "**no**", n] for c, ok, n in checks]))
        add("")
        # ------------------------------------------------------------ condition sensitivity
        sens = s.get("sensitivity", {})
        if sens and "error" not in sens:
            add("## Condition sensitivity: is a control used, and used correctly? (held-out identities)\n")
            add(
                "One-step velocity predictions for fixed noise at noise levels "
                "0.3 and 0.7, every control mode's held-out clips, each control swapped as in the swap tests "
                "(`reproduction/sensitivity.py`). *change*: RMS difference between the predictions with the "
                "swapped and the true control (0 = the input is ignored); *error*: RMS difference from the true "
                "velocity (RMS of the target ~1.4). A control the model uses correctly makes the error grow when "
                "swapped; one it uses without having learnt its meaning changes the prediction but not the "
                "error.\n"
            )
            rows = []
            for variant, r in sens.items():
                for control, v in r["swaps"].items():
                    rows.append(
                        [
                            LABELS.get(variant, variant),
                            control,
                            f"{v['change']:.4f}",
                            f"{r['true_error']:.4f}",
                            f"{v['error']:.4f}",
                            f"{v['error'] - r['true_error']:+.4f}",
                        ]
                    )
            add(
                _table(
                    ["Model", "swapped control", "change", "error (true)", "error (swapped)", "error grows by"], rows
                )
            )
            add("")
        # ------------------------------------------------------------ model-eval cross-check
        me = s.get("model-eval", {})
        if me and "groups" in me:
            add("## `model-eval` on the written mp4s (Full, seed 0, held-out identities)\n")
            rows = [
                [
                    g,
                    f"{r['psnr']:.2f}",
                    f"{r['ssim']:.4f}",
                    f"{r['csim']:.4f}" if r.get("csim") is not None else "n/a",
                    f"{r['aed']:.4f}" if r.get("aed") is not None else "n/a",
                    str(r["n_pairs"]),
                ]
                for g, r in me["groups"].items()
            ]
            add(_table(["group", "PSNR", "SSIM", "CSIM", "AED", "pairs"], rows))
            add(
                "\nSame instruments through `model-eval --weights expression=aed.pt,arcface=csim.pt` on the H.264 "
                "files (compression moves the numbers slightly from the in-memory ones).\n"
            )
        # ------------------------------------------------------------ figure
        fig = contact_sheet(
            run_dir,
            evals,
            report_path.parent / "figures" / "reproduction_contact_sheet.png",
            config.contact_sheet_clips,
        )
        if fig is not None:
            rel = fig.relative_to(report_path.parent).as_posix()
            add("## Contact sheet\n")
            add(f"![reference, ground truth, Full, C1, C2, C3 on held-out identities]({rel})\n")
            add(
                f"Middle frame of one held-out clip per control mode (seed {config.eval_seeds[0]}). All videos: "
                f"`{run_dir}/eval/videos/<model>/<split>/<mode>/*.mp4` (ground truth under `gt/`).\n"
            )
    # ---------------------------------------------------------------- limits
    add("## Limits of this setup (read before the numbers)\n")
    add(
        (
            "- The normal maps show the neutral template mesh posed by the head pose, in the target camera "
            '(`normal_mesh = "neutral"`, the paper\'s template / body-mesh normal maps): they carry head pose and '
            "viewpoint, not the expression, which only the codes (Full) or the landmark maps (C3) can give. They "
            "still carry the viewpoint, so with the true normal maps kept a model can ignore swapped ray maps and "
            "still be right; C2's rows (no normal maps) show whether the rays steer on their own.\n"
            if config.normal_mesh == "neutral"
            else "- The normal maps are rendered from the posed guide mesh, expression included "
            '(`normal_mesh = "tracked"`): they carry the mouth and eyelid shapes as well as the head pose and '
            "the viewpoint, so with the true normal maps kept a model can ignore swapped codes or ray maps and "
            "still be right; C2's rows (no normal maps) show whether the rays and the codes steer on their own.\n"
        )
        + f"- {config.resolution} px frames: a face is about half the frame, so an expression is a few pixels of "
        "mouth and eyelid, and the instruments' own error (above) bounds what AED and the pose error can "
        "resolve.\n"
        + _vae_resolution_line(s.get("eval-baselines", {}))
        + "- The demo avatars are procedural (issue 12: baked light, skin sheen, teeth, strand hair, neck and "
        "shoulders), so appearance "
        "cues for expression and identity are weaker than in photographs.\n"
        "- Wall times are whatever the machine gave: a step that shared the 2 cores with other work took longer "
        "than on an idle machine.\n"
    )
    # ---------------------------------------------------------------- wall time
    add("## Wall time per step\n")
    rows = [[k, f"{walls[k]:.0f}"] for k in sorted(walls, key=lambda k: _started(summaries[k]))]
    total = sum(walls.values())
    rows.append(["**sum of the steps**", f"**{total:.0f}** ({total / 60:.1f} min)"])
    span = elapsed_span(summaries)
    if span is not None:
        rows.append(["**elapsed** (first step's start to last step's end)", f"**{span:.0f}** ({span / 60:.1f} min)"])
    add(_table(["step", "seconds"], rows))
    add(
        f"\nWith `step_parallel = {config.step_parallel}` independent steps run side by side, so the sum of the "
        "steps exceeds the elapsed time; the elapsed time is the run's wall clock when every step ran in one "
        "invocation (steps finished in an earlier invocation keep the times they took then, and the gap between "
        "invocations counts as elapsed).\n"
    )
    return write_text_atomic(report_path, "\n".join(lines) + "\n")


def _camera_swap_section(add, run_dir: Path, evals: dict[str, dict], frames: int) -> None:
    """The per-clip camera swap diagnostic (`swap_diagnostics.py`); skipped when the run has no camera swaps."""
    from .swap_diagnostics import camera_swap_rows, gap_correlation

    try:
        rows = camera_swap_rows(run_dir, evals, frames)
    except (KeyError, OSError, ValueError, StopIteration) as err:  # a diagnostic must not take the report down
        add(f"(Per-clip camera swap diagnostic skipped: {type(err).__name__}: {err})\n")
        return
    if not rows:
        return
    add("### Camera swap per clip (diagnostic)\n")
    add(
        "Each clip of the camera swap runs with its donor: the camera's yaw around the head (0 = frontal, the "
        "reference's view) at the first and last evaluated frame, the mean angle between the true and the donor "
        "camera over the clip, and PSNR (mean ± std over the seeds) with the true and the swapped ray maps. A model "
        "that steers by the rays loses most where the gap is large.\n"
    )
    table = []
    for r in rows:
        table.append(
            [
                LABELS.get(r["variant"], r["variant"]),
                r["mode"],
                r["clip"],
                f"{r['yaw'][0]:+.0f} → {r['yaw'][1]:+.0f}",
                f"{r['donor_yaw'][0]:+.0f} → {r['donor_yaw'][1]:+.0f}",
                f"{r['gap_deg']:.0f}",
                _fmt(*r["true"], "psnr"),
                _fmt(*r["swapped"], "psnr"),
                f"{r['true'][0] - r['swapped'][0]:+.2f}",
            ]
        )
    add(
        _table(
            [
                "Model",
                "Control mode",
                "clip",
                "yaw (deg)",
                "donor yaw",
                "gap (deg)",
                "PSNR true",
                "PSNR swapped",
                "drop",
            ],
            table,
        )
    )
    corr = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        c = gap_correlation([r for r in rows if r["variant"] == variant])
        if math.isfinite(c):
            corr.append(f"{LABELS.get(variant, variant)} {c:+.2f}")
    if corr:
        add(f"\nCorrelation between the camera gap and the PSNR drop over these clips: {', '.join(corr)}.\n")
    else:
        add("")


def _started(record: dict) -> float:
    """A step's start time (POSIX seconds) from its marker; steps without a finish time sort first."""
    from datetime import datetime

    finished = record.get("finished_utc")
    if not finished:
        return float("-inf")
    return datetime.fromisoformat(finished).timestamp() - float(record.get("wall_s", 0.0))


def elapsed_span(summaries: dict[str, dict]) -> float | None:
    """Seconds from the earliest step start to the latest step end, from the markers' `finished_utc` and
    `wall_s`; None when no marker carries a finish time."""
    timed = [r for r in summaries.values() if r.get("finished_utc")]
    if not timed:
        return None
    starts = [_started(r) for r in timed]
    ends = [s + float(r.get("wall_s", 0.0)) for s, r in zip(starts, timed, strict=True)]
    return max(ends) - min(starts)


def _vae_resolution_line(base: dict) -> str:
    """A limits line when the VAE's eye+mouth error exceeds what the expression changes there (pooled modes)."""
    try:
        vae = float(np.nanmean([v["face_psnr"] for v in base["vae"]["heldout_ids"].values()]))
        ref = float(np.nanmean([v["face_psnr"] for v in base["reference"]["heldout_ids"].values()]))
    except (KeyError, TypeError):
        return ""
    if not (math.isfinite(vae) and math.isfinite(ref)) or ref <= vae:
        return ""
    return (
        f"- Inside the eye and mouth boxes the VAE's reconstruction of the ground truth scores {vae:.2f} dB, while "
        f"the reference frame repeated (the right face with the wrong expression) scores {ref:.2f} dB: the "
        "VAE's own error there is larger than the difference an expression makes, so expression control is hard "
        "to see in pixels through this VAE and carries little of the training loss in its latents; a better VAE "
        "(more steps, larger frames) comes first.\n"
    )


def _num(x: Any, digits: int = 3) -> str:
    """A number or n/a (e.g. CSIM of different identities in a split with one identity)."""
    return f"{x:.{digits}f}" if isinstance(x, int | float) and math.isfinite(x) else "n/a"


__all__ = ["write_report", "contact_sheet", "seed_values", "json"]
