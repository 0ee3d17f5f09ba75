"""`model-eval`: score generated videos against ground truth (paper Sec. 5.1, Tab. 3).

Pairs every pred/<rel>.mp4 with gt/<rel>.mp4. Ground truths without a prediction are listed and refused (exit 2)
unless --allow-partial, which scores the pairs that exist and records the missing ones in results.json. An
optional pred/<rel>.json sidecar with a "control_mode" key puts the pair in that row (else "all"). Networks load
from local files only; metrics without weights print as "n/a".

Example:
  model-eval --pred out/phone --gt data/phone_gt \\
      --weights lpips=/w/lpips_vgg.pth,arcface=/w/arcface.pt,expression=/w/exp.pt,inception=/w/incep.pt,i3d=/w/i3d.pt

Weight files (see factorportrait.metrics.networks): lpips = one .pth/.safetensors with backbone.* (torchvision
vgg16().features keys) and lin0..lin4.weight; arcface / expression / inception / i3d = TorchScript files.
IQA has no open implementation with local weights specified here: it is always reported as "n/a".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import uuid
from pathlib import Path

COLUMNS = ("psnr", "ssim", "lpips", "csim", "aed", "iqa", "fid", "fvd")
HEADERS = ("PSNR", "SSIM", "LPIPS", "CSIM", "AED", "IQA", "FID", "FVD")
FORMATS = {"psnr": ".2f", "ssim": ".4f", "lpips": ".4f", "csim": ".4f", "aed": ".4f", "fid": ".2f", "fvd": ".3f"}


def parse_weights(specs: list[str] | None) -> dict[str, str]:
    """["lpips=a.pth,arcface=b.pt", ...] -> {"lpips": "a.pth", "arcface": "b.pt"}."""
    out: dict[str, str] = {}
    for spec in specs or []:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise ValueError(f"--weights entries must be NAME=PATH, got {item!r}")
            out[name.strip()] = path.strip()
    return out


def read_video(path: Path):
    """Decode all frames of a video with PyAV -> uint8 [T, H, W, 3]."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames)


def missing_predictions(pred_dir: Path, gt_dir: Path) -> list[str]:
    """Relative names of the gt/<rel>.mp4 videos that have no pred/<rel>.mp4, sorted."""
    return sorted(
        gt.relative_to(gt_dir).as_posix()
        for gt in gt_dir.rglob("*.mp4")
        if not (pred_dir / gt.relative_to(gt_dir)).is_file()
    )


def find_pairs(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path, str]]:
    """[(relative name, pred path, gt path, control mode)] sorted by name; a missing gt raises FileNotFoundError."""
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
    pairs = []
    for pred in sorted(pred_dir.rglob("*.mp4")):
        rel = pred.relative_to(pred_dir)
        gt = gt_dir / rel
        if not gt.is_file():
            raise FileNotFoundError(f"ground truth missing for {pred}: expected {gt}")
        mode = "all"
        sidecar = pred.with_suffix(".json")
        if sidecar.is_file():
            mode = str(json.loads(sidecar.read_text()).get("control_mode", "all"))
        pairs.append((rel.as_posix(), pred, gt, mode))
    if not pairs:
        raise FileNotFoundError(f"no .mp4 videos under {pred_dir}")
    return pairs


def format_value(key: str, value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return format(value, FORMATS.get(key, ".4f"))


def markdown_table(rows: list[tuple[str, str, dict]]) -> str:
    """Tab. 3 shape: | Dataset | Control mode | PSNR | SSIM | LPIPS | CSIM | AED | IQA | FID | FVD |."""
    lines = [
        "| Dataset | Control mode | " + " | ".join(HEADERS) + " |",
        "|---|---|" + "---|" * len(HEADERS),
    ]
    for dataset, mode, res in rows:
        lines.append(f"| {dataset} | {mode} | " + " | ".join(format_value(k, res.get(k)) for k in COLUMNS) + " |")
    return "\n".join(lines)


def _json_safe(x):
    """inf / nan are not JSON: write them as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def write_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then os.replace, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="model-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pred", type=Path, required=True, help="folder of generated .mp4 videos")
    parser.add_argument("--gt", type=Path, required=True, help="folder of ground-truth .mp4 videos (same names)")
    parser.add_argument(
        "--weights",
        action="append",
        help="NAME=PATH[,NAME=PATH...], NAME in lpips, arcface, expression, inception, i3d",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for results.json / results.md")
    parser.add_argument("--group-by", choices=["mode", "none"], default="mode", help="rows per control mode or one row")
    parser.add_argument("--dataset", help="dataset name in the table (default: the --pred folder name)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="score the pairs there are even if some ground truths lack a prediction",
    )
    args = parser.parse_args(argv)

    try:
        weights = parse_weights(args.weights)
        pairs = find_pairs(args.pred, args.gt)
        missing = missing_predictions(args.pred, args.gt)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            if not args.allow_partial:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(missing) + len(pairs)} ground-truth videos under {args.gt} have no "
                    f"prediction under {args.pred}: {shown}; generate them, or pass --allow-partial to score the rest"
                )
            print(f"model-eval: warning: scoring {len(pairs)} pairs; no prediction for {shown}", file=sys.stderr)

        import torch

        from factorportrait.metrics import MetricSuite

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        suite = MetricSuite(weights, device=device, batch_size=args.batch_size)
        per_pair = {}
        for name, pred_path, gt_path, mode in pairs:
            pred, gt = read_video(pred_path), read_video(gt_path)
            if pred.shape[0] != gt.shape[0]:
                raise ValueError(f"{name}: frame counts differ, pred {pred.shape[0]} ({pred_path}) vs gt {gt.shape[0]}")
            if pred.shape[1:] != gt.shape[1:]:
                raise ValueError(
                    f"{name}: frame sizes differ, pred {pred.shape[2]}x{pred.shape[1]} ({pred_path}) vs gt "
                    f"{gt.shape[2]}x{gt.shape[1]}"
                )
            group = mode if args.group_by == "mode" else "all"
            per_pair[name] = {"control_mode": mode, **suite.evaluate_pair(pred, gt, group=group, name=name)}
            print(
                f"{name}: " + ", ".join(f"{k}={format_value(k, v)}" for k, v in per_pair[name].items() if k in COLUMNS),
                file=sys.stderr,
            )
    except (FileNotFoundError, ValueError) as exc:
        print(f"model-eval: error: {exc}", file=sys.stderr)
        return 2

    dataset = args.dataset or args.pred.resolve().name
    groups = suite.groups
    summary = {g: suite.finish(g) for g in groups}
    if len(groups) > 1:
        summary["all"] = suite.finish()  # overall row, FID/FVD pooled over every pair
    rows = [(dataset, g, res) for g, res in summary.items()]
    table = markdown_table(rows)
    notes = list(dict.fromkeys(n for res in summary.values() for n in res["notes"]))
    print(table)
    print("\n".join(f"note: {n}" for n in notes))

    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "dataset": dataset,
        "pred": str(args.pred),
        "gt": str(args.gt),
        "weights": weights,
        "groups": summary,
        "pairs": per_pair,
        "missing_predictions": missing,
        "notes": notes,
    }
    write_atomic(args.out / "results.json", json.dumps(_json_safe(results), indent=2) + "\n")
    write_atomic(args.out / "results.md", table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
