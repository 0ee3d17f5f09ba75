"""The avatar's guide mesh reduced to the landmark-corresponding vertices, posed and projected.

Posing follows `avatar_render.Avatar.pose_mesh` exactly, restricted to P vertices:
    v = neutral + sum_e w_e B_e;  x' = R(head_weight_v * theta) (v - head_pivot) + head_pivot + t
Projection follows CONVENTIONS 1: x_c = R_view x' + t_view, u = fx x_c/z_c + cx, v = fy y_c/z_c + cy
(continuous pixel coordinates, the same as the landmarker's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from avatar_render import Avatar
from avatar_render.geometry import axis_angle_to_rotmat

from .correspondence import correspondence


class LandmarkRig:
    """Corresponding guide-mesh vertices of one avatar (float64 for the fit)."""

    def __init__(
        self, avatar: Avatar, mp_indices: list[int] | None = None, vertex_ids: list[int] | None = None
    ) -> None:
        if mp_indices is None or vertex_ids is None:
            mp_indices, vertex_ids = correspondence(avatar.neutral_vertices.shape[0])
        if len(mp_indices) != len(vertex_ids):
            raise ValueError(f"rig: {len(mp_indices)} landmark indices for {len(vertex_ids)} vertices")
        vid = torch.as_tensor(vertex_ids, dtype=torch.long)
        self.mp_indices = torch.as_tensor(mp_indices, dtype=torch.long)  # [P] landmarker point of each pair
        self.vertex_ids = vid  # [P]
        dt = torch.float64
        self.neutral = avatar.neutral_vertices[vid].to(dt)  # [P, 3]
        self.basis = avatar.expression_basis[:, vid].to(dt)  # [E, P, 3]
        self.head_weights = avatar.head_weights[vid].to(dt)  # [P]
        self.pivot = avatar.head_pivot.to(dt)  # [3]
        self.weight_range = avatar.rig_weight_range
        self.labels = list(avatar.expression_labels)

    @property
    def num_points(self) -> int:
        return self.neutral.shape[0]

    @property
    def num_blendshapes(self) -> int:
        return self.basis.shape[0]

    def points(self, weights: Tensor | None, pose: Tensor) -> Tensor:
        """World positions [T, P, 3] for rig weights [T, E] (None: neutral) and head poses [T, 6]."""
        verts = self.neutral.expand(pose.shape[0], -1, -1)
        if weights is not None:
            verts = verts + torch.einsum("te,epc->tpc", weights, self.basis)
        local = (verts - self.pivot).unsqueeze(-1)
        return (self.rotations(pose) @ local).squeeze(-1) + self.pivot + pose[:, None, 3:]

    def rotations(self, pose: Tensor) -> Tensor:
        """Per-vertex head rotations [T, P, 3, 3] (the pose's axis-angle scaled by each vertex's head weight)."""
        return axis_angle_to_rotmat(pose[:, None, :3] * self.head_weights[None, :, None])

    def weight_jacobian(self, weights: Tensor, pose: Tensor, K: Tensor, viewmat: Tensor) -> Tensor:
        """d(projected pixels)/d(rig weights) [T, P, 2, E]: points are linear in w before the projection."""
        cam = self.points(weights, pose) @ viewmat[:3, :3].T + viewmat[:3, 3]
        x, y, z = cam.unbind(-1)
        zero = torch.zeros_like(z)
        fx, fy = K[0, 0], K[1, 1]
        dproj = torch.stack(
            [torch.stack([fx / z, zero, -fx * x / z**2], -1), torch.stack([zero, fy / z, -fy * y / z**2], -1)], -2
        )  # [T, P, 2, 3]
        world = torch.einsum("tpij,epj->tpie", self.rotations(pose), self.basis)  # [T, P, 3, E]
        return dproj @ viewmat[:3, :3] @ world


def project(points: Tensor, K: Tensor, viewmat: Tensor) -> tuple[Tensor, Tensor]:
    """World points [T, P, 3] -> pixels [T, P, 2] and camera depths [T, P] (one fixed camera K [3,3], viewmat [4,4])."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[..., 2]
    # Keep the division finite for points behind the camera (an early iterate); the fit's cost rejects them.
    zs = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    uv = cam[..., :2] / zs[..., None] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    return uv, z
