"""How much does an expression change the pixels the reproduction scores? (issue 15: why the expression swap fails.)

The reproduction's expression swap test (docs/reproduction.md) gives the model another clip's expression codes and
asks whether the PSNR inside the ground truth's eye and mouth boxes drops. This script measures what a *perfect*
generator would score in that test, by re-rendering the very clips the test uses with the avatar renderer:

  * true:      the clip re-rendered with its own codes, pose and cameras (a round trip: it must match the
               ground-truth video up to H.264 loss, which validates the re-render);
  * swapped:   the same clip re-rendered with the donor clip's codes (the swap test's donor), same pose and cameras;
  * through the VAE: both re-renders encoded and decoded by the run's VAE, the decoder every model output goes
               through, so "VAE(swapped) vs VAE(true)" is the swap test of a perfect latent generator.

Also the spread over seeds the swap test compares against is in the report; a perfect generator's margin below it
means the test cannot pass at this resolution whatever the model learns.

    uv run python benchmarks/expression_signal.py --run runs/repro [--split heldout_ids] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def render_clip(avatar, source, codes: np.ndarray, frames: int, background: torch.Tensor) -> np.ndarray:
    """uint8 [T, H, W, 3]: `source`'s first `frames` cameras and head poses with `codes` [T, D]."""
    from avatar_render import Camera, render

    cameras = Camera(
        K=torch.from_numpy(np.asarray(source.K[:frames], np.float32)),
        viewmat=torch.from_numpy(np.asarray(source.viewmat[:frames], np.float32)),
        width=source.width,
        height=source.height,
    )
    posed = avatar.pose(
        torch.from_numpy(np.asarray(codes[:frames], np.float32)),
        torch.from_numpy(np.asarray(source.head_pose[:frames], np.float32)),
    )
    out = []
    for t in range(frames):
        rgb = render(posed.frame(t), cameras[t], backend="cpu", background=background).rgb[0]
        out.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    return np.stack(out)


def through_vae(vae, frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> the VAE's reconstruction, uint8."""
    from factorportrait.reproduction.evaluate import to_uint8

    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # [3, T, H, W]
    with torch.no_grad():
        return to_uint8(vae.decode(vae.encode_video(video[None])).float()[0])


def backgrounds_of(root: Path) -> dict[str, torch.Tensor]:
    """{sequence id: render background} of a datagen root (datagen records it under plan.render.background)."""
    import pyarrow.parquet as pq

    table = pq.read_table(root / "manifest" / "manifest.parquet", columns=["sequence_id", "plan"])
    return {
        sid: torch.tensor(json.loads(plan)["render"]["background"], dtype=torch.float32)
        for sid, plan in zip(table["sequence_id"].to_pylist(), table["plan"].to_pylist(), strict=True)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished reproduction run folder")
    parser.add_argument("--split", default="heldout_ids")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)

    from avatar_render.demo import load_demo_avatar
    from factorportrait.reproduction.config import ReproConfig
    from factorportrait.reproduction.data import load_sources, split_roots
    from factorportrait.reproduction.evaluate import donor_indices, eval_clips, expression_region, region_psnr, to_uint8
    from factorportrait.vae import WanVideoVAE

    torch.set_grad_enabled(False)
    config = ReproConfig.from_dict(json.loads((args.run / "config.json").read_text()), str(args.run / "config.json"))
    sources = {s.sequence_id: s for s in load_sources(split_roots(args.run, args.split))}
    vae = WanVideoVAE.from_pretrained(args.run / "wan")
    frames = config.eval_frames
    rows, avatars, backgrounds = [], {}, {}
    for mode, clips in eval_clips(config, args.run, args.split).items():
        donors, _ = donor_indices(clips, "expression", None)
        for clip, donor in zip(clips, donors, strict=True):
            source = sources[clip["sequence_id"]]
            donor_codes = sources[clips[donor]["sequence_id"]].expression
            if source.identity not in avatars:
                avatars[source.identity] = load_demo_avatar(source.identity)
            if source.root not in backgrounds:
                backgrounds[source.root] = backgrounds_of(source.root)
            avatar, background = avatars[source.identity], backgrounds[source.root][source.sequence_id]
            gt = to_uint8(clip["video"])
            marks = np.asarray(clip["landmarks"])
            face = np.asarray(clip["landmark_visible"]).any(-1)
            region = expression_region(marks, face, gt.shape[1], gt.shape[2])
            true = render_clip(avatar, source, source.expression, frames, background)
            swapped = render_clip(avatar, source, donor_codes, frames, background)
            vae_true, vae_swapped = through_vae(vae, true), through_vae(vae, swapped)
            rows.append(
                {
                    "mode": mode,
                    "clip": clip["sequence_id"],
                    "region_share": float(region.mean()),
                    "true_vs_gt": region_psnr(true, gt, region),
                    "swapped_vs_gt": region_psnr(swapped, gt, region),
                    "vae_true_vs_gt": region_psnr(vae_true, gt, region),
                    "vae_swapped_vs_gt": region_psnr(vae_swapped, gt, region),
                }
            )
            r = rows[-1]
            print(
                f"{mode:26s} {clip['sequence_id']:40s} render true {r['true_vs_gt']:5.1f} swapped "
                f"{r['swapped_vs_gt']:5.1f} | VAE true {r['vae_true_vs_gt']:5.1f} swapped {r['vae_swapped_vs_gt']:5.1f}"
            )
    lines = [
        "| control mode | clips | eye+mouth share of frame | re-render true vs GT | re-render swapped vs GT "
        "| VAE(true) vs GT | VAE(swapped) vs GT | perfect generator's margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sub = [r for r in rows if r["mode"] == mode]
        mean = {k: float(np.mean([r[k] for r in sub])) for k in sub[0] if k not in ("mode", "clip")}
        lines.append(
            f"| {mode} | {len(sub)} | {mean['region_share']:.1%} | {mean['true_vs_gt']:.2f} "
            f"| {mean['swapped_vs_gt']:.2f} "
            f"| {mean['vae_true_vs_gt']:.2f} | {mean['vae_swapped_vs_gt']:.2f} "
            f"| {mean['vae_true_vs_gt'] - mean['vae_swapped_vs_gt']:+.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.markdown.with_suffix(".tmp")
        tmp.write_text(table + "\n")
        tmp.replace(args.markdown)


if __name__ == "__main__":
    main()
