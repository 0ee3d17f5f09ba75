"""Contact sheet of one rendered sequence: RGB frames, normal maps and the camera path around the head."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sequence_sheet(root: str | Path, seq_id: str, out: str | Path, columns: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .manifest import read_rows
    from .video import read_video

    root = Path(root)
    rows = {row.sequence_id: row for row in read_rows(root)}
    if seq_id not in rows:
        known = ", ".join(sorted(rows)[:8])
        raise KeyError(f"{root}: no sequence '{seq_id}' in the manifest (first ids: {known})")
    row = rows[seq_id]
    picks = np.linspace(0, row.num_frames - 1, min(columns, row.num_frames)).round().astype(int)
    rgb = read_video(root / row.rgb_path)
    normals = read_video(root / row.normal_path) if row.normal_path else np.zeros_like(rgb)
    c2w = np.linalg.inv(row.viewmat.astype(np.float64))
    centres = c2w[:, :3, 3]
    forward = c2w[:, :3, 2]

    fig = plt.figure(figsize=(2.2 * len(picks), 2.2 * 2 + 3.2))
    grid = fig.add_gridspec(3, len(picks), height_ratios=[1, 1, 1.5])
    for col, t in enumerate(picks):
        for r, images in enumerate((rgb, normals)):
            ax = fig.add_subplot(grid[r, col])
            ax.imshow(images[t])
            ax.set_axis_off()
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
    for col, (a, b, name) in enumerate(((0, 2, "top view (x, z)"), (2, 1, "side view (z, y)"))):
        ax = fig.add_subplot(grid[2, col * len(picks) // 2 : (col + 1) * len(picks) // 2])
        ax.add_patch(plt.Circle((0, 0), 0.09, color="0.8"))
        ax.plot(centres[:, a], centres[:, b], "-", color="tab:blue", lw=1)
        ax.plot(centres[0, a], centres[0, b], "o", color="tab:green", label="start")
        ax.plot(centres[-1, a], centres[-1, b], "s", color="tab:red", label="end")
        step = max(1, len(centres) // 12)
        ax.quiver(
            centres[::step, a],
            centres[::step, b],
            forward[::step, a],
            forward[::step, b],
            angles="xy",
            scale=12,
            width=0.004,
            color="tab:blue",
        )
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{seq_id}  ({row.dataset}, {row.trajectory}, {row.num_frames} frames, {row.width}px)", fontsize=10)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out
