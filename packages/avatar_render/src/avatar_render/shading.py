"""Lighting baked into Gaussian colours from the guide mesh: ambient occlusion, a key and a fill light.

The paper's avatars have no lighting input: their captures carry the studio's light in the colours. The demo
avatars are grown with flat albedo per region, so we bake a light rig into their colours once, when the avatar is
built (it is part of the avatar, like a capture's lighting; it does not follow the head when it turns):

    colour = albedo * (ambient * ao + key * max(0, n . l_key) * shadow_key + fill * max(0, n . l_fill))

normalised so that a surface facing the camera, unoccluded, lit by both lights head-on keeps its albedo.
- `ao` (ambient occlusion): the cosine-weighted share of directions of the hemisphere around the normal from
  which the point is seen, estimated with depth maps of the mesh (our own rasterizer, `mesh_raster`) from
  `AO_DIRECTIONS` directions on the sphere: a point is seen from a direction when it lies no deeper than the
  mesh's nearest surface there (plus a tolerance of about one depth-map pixel).
- `shadow_key`: the same test toward the key light (soft: averaged over a small cone of directions).
- sheen (view-dependent, SH degree 1): a soft highlight toward the key light's mirror direction,
  + sheen * max(0, n . l_key) * ao * shadow_key * (v . r), r = 2 (n . l_key) n - l_key, v the unit direction from the
  point to the camera. Degree 1 is a linear lobe (brightest seen along r, darkest from -r); it is stored in the
  canonical frame and turns with the skin when the head turns (avatar.py, step 5).
Directions are in the avatar's canonical frame (+Y up, face toward +Z). No ray tracer ships for CPU in our
dependencies (pytorch3d has no wheel), and depth maps of a 9k-triangle mesh at 96 px cost ~50 ms each here (a bust
needs about 200 px for the same pixel size, `DEPTH_PIXEL_M`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

AO_DIRECTIONS = 24
DEPTH_MAP_SIZE = 96  # at least this many pixels across a depth map
# and pixels at most this big (m): 96 px across the head alone; a bust (neck and shoulders) widens the map instead
# of coarsening it, which would loosen the occlusion test around the eyes and mouth
DEPTH_PIXEL_M = 0.0027
SURFACE_OFFSET_M = 0.003  # test visibility 3 mm above each Gaussian, along its normal


@dataclass(frozen=True)
class Lighting:
    """A light rig in the canonical head frame: unit vectors toward the lights and their strengths."""

    key_direction: tuple[float, float, float]
    fill_direction: tuple[float, float, float]
    key: float = 0.75
    fill: float = 0.25
    ambient: float = 0.45
    sheen: float = 0.09  # amplitude of the view-dependent highlight on skin (colour units)


def lighting_for(rng: np.random.Generator) -> Lighting:
    """A key light 20-45 deg to one side and 15-40 deg above, a fill from the other side: per identity."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    azimuth, elevation = math.radians(rng.uniform(20, 45)) * side, math.radians(rng.uniform(15, 40))
    fill_azimuth, fill_elevation = -azimuth * rng.uniform(1.0, 1.8), math.radians(rng.uniform(-5, 15))
    return Lighting(
        key_direction=_unit(azimuth, elevation),
        fill_direction=_unit(fill_azimuth, fill_elevation),
        key=float(rng.uniform(0.65, 0.85)),
        fill=float(rng.uniform(0.2, 0.35)),
        ambient=float(rng.uniform(0.4, 0.5)),
    )


def _unit(azimuth: float, elevation: float) -> tuple[float, float, float]:
    return (
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
        math.cos(elevation) * math.cos(azimuth),
    )


def sphere_directions(count: int) -> Tensor:  # [count, 3] unit, evenly spread (Fibonacci), none exactly vertical
    k = torch.arange(count, dtype=torch.float64) + 0.5
    y = 1 - 2 * k / count
    r = (1 - y**2).sqrt()
    phi = k * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * phi.cos(), y, r * phi.sin()], -1)


def visibility(vertices: Tensor, faces: Tensor, points: Tensor, directions: Tensor) -> Tensor:
    """[N, D] float: 1 where point n is seen from far away along direction d (depth-map test), else 0."""
    from .camera import Camera
    from .mesh_raster import rasterize_mesh

    vertices, points, directions = vertices.float(), points.float(), directions.float()
    centre = 0.5 * (vertices.min(0).values + vertices.max(0).values)
    radius = float((vertices - centre).norm(dim=-1).max())
    distance = 20 * radius  # nearly orthographic
    fov = math.degrees(2 * math.atan(1.05 * radius / (distance - radius)))
    size = max(DEPTH_MAP_SIZE, math.ceil(2 * radius * 1.05 / DEPTH_PIXEL_M))
    camera = Camera.look_at(centre + distance * directions, centre, size, size, fov_deg=fov)
    fragments = rasterize_mesh(vertices, faces, camera.viewmat, camera.K, size, size)
    depth = torch.where(fragments.face_ids >= 0, fragments.depth, torch.full_like(fragments.depth, float("inf")))
    # Nearest surface over each pixel's 3x3 neighbourhood (the farthest of them): tolerant of surface slope.
    padded = torch.nn.functional.pad(depth[:, None], (1, 1, 1, 1), value=float("inf"))
    depth = torch.nn.functional.max_pool2d(padded.nan_to_num(posinf=1e9), 3, stride=1)[:, 0]
    cam_points = torch.einsum("dij,nj->dni", camera.viewmat[:, :3, :3], points) + camera.viewmat[:, None, :3, 3]
    z = cam_points[..., 2]
    u = camera.K[:, None, 0, 0] * cam_points[..., 0] / z + camera.K[:, None, 0, 2]
    v = camera.K[:, None, 1, 1] * cam_points[..., 1] / z + camera.K[:, None, 1, 2]
    col = u.floor().long().clamp(0, size - 1)
    row = v.floor().long().clamp(0, size - 1)
    surface = depth[torch.arange(len(directions))[:, None], row, col]  # [D, N]
    tolerance = 1.5 * (2 * radius * 1.05) / size  # about 1.5 depth-map pixels
    return (z <= surface + tolerance).float().T


def ambient_occlusion(vertices: Tensor, faces: Tensor, points: Tensor, normals: Tensor) -> Tensor:  # -> [N] in [0,1]
    """Cosine-weighted visible share of the hemisphere around each normal (1 = nothing in the way)."""
    directions = sphere_directions(AO_DIRECTIONS)
    cosine = (normals.double() @ directions.T).clamp_min(0.0)  # [N, D]
    seen = visibility(vertices, faces, points, directions).double()
    return ((cosine * seen).sum(-1) / cosine.sum(-1).clamp_min(1e-9)).float()


def key_shadow(vertices: Tensor, faces: Tensor, points: Tensor, direction: Tensor, spread_deg: float = 6.0) -> Tensor:
    """[N] in [0, 1]: share of a small cone of directions around the key light from which each point is seen."""
    direction = direction.double() / direction.double().norm()
    helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    a = torch.linalg.cross(direction, helper)
    a = a / a.norm()
    b = torch.linalg.cross(direction, a)
    t = math.tan(math.radians(spread_deg))
    offsets = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    cone = torch.stack([direction + t * (i * a + j * b) for i, j in offsets])
    cone = cone / cone.norm(dim=-1, keepdim=True)
    return visibility(vertices, faces, points, cone).mean(-1)


def bake_lighting(
    albedo: Tensor,  # [N, 3] in [0, 1]
    points: Tensor,  # [N, 3] Gaussian centres, canonical frame
    normals: Tensor,  # [N, 3] unit surface normals at the Gaussians
    vertices: Tensor,  # [V, 3] the guide mesh (neutral)
    faces: Tensor,  # [F, 3]
    lighting: Lighting,
    triangles: Tensor | None = None,  # [N] binding triangle of each Gaussian: ao / shadow are smoothed over the mesh
) -> Tensor:  # [N, 3] lit colours in [0, 1]
    """The module docstring's formula; with `triangles`, ao and shadow are averaged per triangle and blurred over
    two rings of neighbouring triangles (the depth-map test is noisy at grazing angles)."""
    n, ao, shadow = light_terms(points, normals, vertices, faces, lighting, triangles)
    return shade(albedo, n, ao, shadow, lighting)


def light_terms(
    points: Tensor,  # [N, 3]
    normals: Tensor,  # [N, 3]
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    lighting: Lighting,
    triangles: Tensor | None = None,  # [N]
) -> tuple[Tensor, Tensor, Tensor]:  # unit normals [N, 3], ao [N], key shadow [N] (float64)
    """What the light of every Gaussian depends on besides its albedo (the costly depth-map tests)."""
    key = torch.tensor(lighting.key_direction, dtype=torch.float64)
    n = normals.double() / normals.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lifted = points.double() + SURFACE_OFFSET_M * n  # off the surface it lies on: no self-shadowing speckle
    ao = ambient_occlusion(vertices, faces, lifted, n).double()
    shadow = key_shadow(vertices, faces, lifted, key).double()
    if triangles is not None:
        ao, shadow = (smooth_over_mesh(x, triangles, faces, len(vertices)) for x in (ao, shadow))
    return n, ao, shadow


def shade(albedo: Tensor, n: Tensor, ao: Tensor, shadow: Tensor, lighting: Lighting) -> Tensor:  # -> [N, 3]
    """Lit colours in [0, 1] from albedo [N, 3] and `light_terms`."""
    key = torch.tensor(lighting.key_direction, dtype=torch.float64)
    fill = torch.tensor(lighting.fill_direction, dtype=torch.float64)
    light = (
        lighting.ambient * ao + lighting.key * (n @ key).clamp_min(0) * shadow + lighting.fill * (n @ fill).clamp_min(0)
    )
    frontal = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    norm = lighting.ambient + lighting.key * float(frontal @ key) + lighting.fill * max(float(frontal @ fill), 0.0)
    return (albedo.double() * (light / norm)[:, None]).clamp(0.0, 1.0).to(albedo.dtype)


def sheen_coefficients(n: Tensor, ao: Tensor, shadow: Tensor, lighting: Lighting) -> Tensor:  # -> [N, 3, 3]
    """Degree-1 SH coefficients (gsplat's order, the same for the 3 colours) of the module docstring's sheen.

    gsplat evaluates SH at d = mean - camera = -v, where the degree-1 basis is C1 (-d_y, d_z, -d_x); coefficients
    w (r_y, -r_z, r_x) / C1 give sum_m a_m Y_m(d) = -w (d . r) = w (v . r)."""
    from .sh import _C1

    key = torch.tensor(lighting.key_direction, dtype=torch.float64)
    facing = n @ key  # [N]
    mirror = 2.0 * facing[:, None] * n - key
    weight = lighting.sheen * facing.clamp_min(0) * ao * shadow
    coeffs = torch.stack([mirror[:, 1], -mirror[:, 2], mirror[:, 0]], dim=-1) * (weight / _C1)[:, None]
    return coeffs[:, :, None].expand(-1, -1, 3).clone()


def smooth_over_mesh(values: Tensor, triangles: Tensor, faces: Tensor, num_vertices: int, rings: int = 2) -> Tensor:
    """Per-Gaussian values [N] -> per-triangle means, blurred `rings` times (triangle -> its vertices -> the
    triangles around them), read back per Gaussian. Triangles without Gaussians take their neighbours' values."""
    values = values.double()
    num_faces = len(faces)
    total = torch.zeros(num_faces, dtype=torch.float64).index_add_(0, triangles, values)
    count = torch.zeros(num_faces, dtype=torch.float64).index_add_(0, triangles, torch.ones_like(values))
    corners = faces.reshape(-1)
    for _ in range(rings):
        v_total = torch.zeros(num_vertices, dtype=torch.float64).index_add_(0, corners, total.repeat_interleave(3))
        v_count = torch.zeros(num_vertices, dtype=torch.float64).index_add_(0, corners, count.repeat_interleave(3))
        total, count = v_total[faces].sum(-1), v_count[faces].sum(-1)
    per_face = total / count.clamp_min(1e-12)
    return per_face[triangles].float()
