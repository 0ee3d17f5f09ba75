"""Animatable Gaussian head avatars: a guide mesh with an expression rig and a head/neck pose rig,
and Gaussians bound to its triangles (CONVENTIONS 3, the GaussianAvatars binding).

Posing, for T frames at once:
1. rig weights  w = clamp(expression_map @ code, *rig_weight_range)      [T, E] (E blendshapes, e.g. 52 ARKit)
2. expression   v = neutral + sum_e w_e B_e                               [T, V, 3]
3. head pose    each vertex rotates by head_weight_v * theta about `head_pivot` (the rotation's axis-angle
                scaled per vertex: 1 on the skull, fading along the neck, so the neck twists smoothly),
                then the whole mesh translates by the pose's translation.
4. binding      triangle frames (R_f, c_f, s_f) of the posed mesh carry each Gaussian:
                mu = s_f R_f mu_local + c_f; scale = exp(log_scale) s_f; q = quat(R_f) * n(q_local).
5. colour       SH coefficients are stored in the canonical frame (neutral mesh, zero pose); with degree >= 1
                each Gaussian's view-dependent colour turns with its triangle, R_f(posed) R_f(neutral)^T, so a
                sheen stays on the skin when the head turns (degree 0 needs nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .gaussians import GaussianSet
from .geometry import axis_angle_to_rotmat, quat_multiply, rotmat_to_quat, triangle_frames
from .landmarks import LandmarkLayout, default_layout, project_landmarks
from .sh import rotate_sh


@dataclass
class PosedAvatar:
    """T posed frames: Gaussians (means, quats, log_scales per frame; opacity and canonical SH shared) and mesh.

    With SH degree >= 1, `sh_rotations` [T, F, 3, 3] (each triangle's rotation from the neutral mesh) and
    `binding` [N] turn the view-dependent colour of frame t in `frame(t)`.
    """

    means: Tensor  # [T, N, 3]
    quats: Tensor  # [T, N, 4]
    log_scales: Tensor  # [T, N, 3]
    opacity_logits: Tensor  # [N]
    sh: Tensor  # [N, K, 3]
    vertices: Tensor  # [T, V, 3]
    faces: Tensor  # [F, 3]
    landmark_layout: LandmarkLayout | None = None
    sh_rotations: Tensor | None = None  # [T, F, 3, 3]
    binding: Tensor | None = None  # [N]

    def landmarks(
        self, Ks: Tensor, viewmats: Tensor, width: int, height: int, pair_frames: bool = False
    ) -> tuple[Tensor, Tensor]:
        """2D landmarks of every frame in cameras Ks [C,3,3] / viewmats [C,4,4]: uv [T,C,K,2] px, visible [T,C,K].

        With `pair_frames` (C == T, camera t sees frame t): uv [T,K,2], visible [T,K]. See `landmarks.py`.
        """
        if self.landmark_layout is None:
            raise ValueError(
                "this avatar has no landmark layout (its file stores none and its topology has no default)"
            )
        return project_landmarks(
            self.vertices, self.faces, self.landmark_layout, Ks, viewmats, width, height, pair_frames=pair_frames
        )

    def __len__(self) -> int:
        return self.means.shape[0]

    def frame(self, t: int) -> GaussianSet:
        """The Gaussians of frame t."""
        return GaussianSet(
            means=self.means[t],
            quats=self.quats[t],
            log_scales=self.log_scales[t],
            opacity_logits=self.opacity_logits,
            sh=self.sh if self.sh_rotations is None else rotate_sh(self.sh, self.sh_rotations[t], self.binding),
        )


@dataclass
class Avatar:
    """An animatable Gaussian head avatar.

    Guide mesh: neutral_vertices [V,3], faces [F,3]. Expression rig: expression_basis [E,V,3] (blendshape
    offsets, metres), expression_map [E,D] (code -> rig weights), rig_weight_range. Pose rig: head_weights [V]
    in [0,1], head_pivot [3]. Bound Gaussians: binding [N] (triangle index), local_means [N,3],
    local_quats [N,4] (wxyz), local_log_scales [N,3], opacity_logits [N], sh [N,K,3].
    Capture track: capture_codes [T,D], capture_poses [T,6] at capture_fps.
    """

    name: str
    neutral_vertices: Tensor
    faces: Tensor
    expression_basis: Tensor
    expression_map: Tensor
    head_weights: Tensor
    head_pivot: Tensor
    binding: Tensor
    local_means: Tensor
    local_quats: Tensor
    local_log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor
    capture_codes: Tensor
    capture_poses: Tensor
    capture_fps: float = 25.0
    rig_weight_range: tuple[float, float] = (0.0, 1.0)
    expression_labels: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    # 2D landmark points on the guide mesh; None -> the default layout of the topology (if it has one)
    landmark_layout: LandmarkLayout | None = None

    def __post_init__(self) -> None:
        if self.landmark_layout is None:
            self.landmark_layout = default_layout(self.neutral_vertices.shape[0])
        elif max(self.landmark_layout.vertex_ids) >= self.neutral_vertices.shape[0]:
            raise ValueError(
                f"avatar '{self.name}': landmark layout '{self.landmark_layout.name}' indexes vertex "
                f"{max(self.landmark_layout.vertex_ids)} but the guide mesh has {self.neutral_vertices.shape[0]}"
            )

    def __repr__(self) -> str:
        return (
            f"Avatar(name={self.name!r}, vertices={self.neutral_vertices.shape[0]}, "
            f"triangles={self.faces.shape[0]}, gaussians={self.num_gaussians}, "
            f"expression_dim={self.expression_dim}, capture_frames={self.num_capture_frames})"
        )

    # ------------------------------------------------------------------ sizes
    @property
    def expression_dim(self) -> int:
        """D, the size of the expression code (128 for the demo avatars)."""
        return self.expression_map.shape[1]

    @property
    def num_gaussians(self) -> int:
        return self.binding.shape[0]

    @property
    def num_capture_frames(self) -> int:
        return self.capture_codes.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Avatar:
        """Move float tensors to `device` / `dtype` (index tensors keep their integer dtype)."""
        moved = {}
        for name, value in self.__dict__.items():
            if isinstance(value, Tensor):
                keep_dtype = not value.is_floating_point()
                moved[name] = value.to(device=device, dtype=None if keep_dtype else dtype)
            else:
                moved[name] = value
        return Avatar(**moved)

    # ------------------------------------------------------------------ rig
    def rig_weights(self, codes: Tensor) -> Tensor:  # [T, D] -> [T, E]
        """Blendshape weights of expression codes."""
        if codes.shape[-1] != self.expression_dim:
            raise ValueError(
                f"avatar '{self.name}': expression codes must have {self.expression_dim} "
                f"dimensions, got shape {tuple(codes.shape)}"
            )
        low, high = self.rig_weight_range
        return (codes @ self.expression_map.T).clamp(low, high)

    def codes_from_rig_weights(self, weights: Tensor) -> Tensor:  # [T, E] -> [T, D]
        """Least-norm codes that reproduce in-range rig weights (exact when the map's rows are orthonormal)."""
        return torch.linalg.lstsq(self.expression_map, weights.T).solution.T

    def pose_mesh(self, expression: Tensor, head_pose: Tensor, with_expression: bool = True) -> Tensor:
        """Posed guide-mesh vertices [T, V, 3] for codes [T, D] and head poses [T, 6] (axis-angle, metres).

        `with_expression=False` poses the neutral template (the codes are ignored): the head-pose-only mesh that
        the paper's body-mesh tracking gives, whose normal maps carry pose and viewpoint but no expression.
        """
        expression, head_pose = self._check_pose_inputs(expression, head_pose)
        vertices = self.neutral_vertices.expand(len(head_pose), -1, -1)
        if with_expression:
            weights = self.rig_weights(expression)
            vertices = vertices + torch.einsum("te,evc->tvc", weights, self.expression_basis)
        # Per-vertex fraction of the head rotation: one Rodrigues matrix per (frame, vertex).
        rot = axis_angle_to_rotmat(head_pose[:, None, :3] * self.head_weights[None, :, None])  # [T, V, 3, 3]
        local = (vertices - self.head_pivot).unsqueeze(-1)
        vertices = (rot @ local).squeeze(-1) + self.head_pivot
        return vertices + head_pose[:, None, 3:]

    def bind(self, vertices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Bound Gaussians on a posed mesh [T, V, 3] -> means [T,N,3], quats [T,N,4], log_scales [T,N,3]."""
        rot, centre, scale = triangle_frames(vertices, self.faces)
        rot, centre, scale = rot[:, self.binding], centre[:, self.binding], scale[:, self.binding]
        means = scale[..., None] * (rot @ self.local_means[..., None]).squeeze(-1) + centre
        local_quats = F.normalize(self.local_quats, dim=-1).expand(rot.shape[:-2] + (4,))
        quats = quat_multiply(rotmat_to_quat(rot), local_quats)
        log_scales = self.local_log_scales + scale.log()[..., None]
        return means, quats, log_scales

    def pose(self, expression: Tensor, head_pose: Tensor) -> PosedAvatar:
        """Pose T frames at once: expression codes [T, D], head poses [T, 6] -> `PosedAvatar`."""
        vertices = self.pose_mesh(expression, head_pose)
        means, quats, log_scales = self.bind(vertices)
        sh_rotations = None
        if self.sh.shape[1] > 1:  # view-dependent colour turns with its triangle (module docstring, step 5)
            posed_rot = triangle_frames(vertices, self.faces)[0]
            neutral_rot = triangle_frames(self.neutral_vertices, self.faces)[0]
            sh_rotations = posed_rot @ neutral_rot.transpose(-1, -2)
        return PosedAvatar(
            means=means,
            quats=quats,
            log_scales=log_scales,
            opacity_logits=self.opacity_logits,
            sh=self.sh,
            vertices=vertices,
            faces=self.faces,
            landmark_layout=self.landmark_layout,
            sh_rotations=sh_rotations,
            binding=None if sh_rotations is None else self.binding,
        )

    def canonical(self) -> PosedAvatar:
        """The avatar with a zero expression code and the identity head pose (one frame)."""
        zeros = self.neutral_vertices.new_zeros
        return self.pose(zeros(1, self.expression_dim), zeros(1, 6))

    def capture_segment(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """Codes [length, D] and poses [length, 6] of the capture track from frame `start`."""
        if start < 0 or length <= 0 or start + length > self.num_capture_frames:
            raise ValueError(
                f"avatar '{self.name}': capture segment [{start}, {start + length}) is outside its "
                f"{self.num_capture_frames}-frame capture track"
            )
        return self.capture_codes[start : start + length], self.capture_poses[start : start + length]

    def _check_pose_inputs(self, expression: Tensor, head_pose: Tensor) -> tuple[Tensor, Tensor]:
        expression = torch.as_tensor(expression, dtype=self.neutral_vertices.dtype, device=self.neutral_vertices.device)
        head_pose = torch.as_tensor(head_pose, dtype=self.neutral_vertices.dtype, device=self.neutral_vertices.device)
        if expression.dim() == 1:
            expression = expression[None]
        if head_pose.dim() == 1:
            head_pose = head_pose[None]
        if head_pose.shape[-1] != 6:
            raise ValueError(
                f"avatar '{self.name}': head poses must be [T, 6] (axis-angle, translation), "
                f"got {tuple(head_pose.shape)}"
            )
        if expression.shape[0] != head_pose.shape[0]:
            raise ValueError(
                f"avatar '{self.name}': {expression.shape[0]} expression codes for {head_pose.shape[0]} head poses"
            )
        if not (torch.isfinite(expression).all() and torch.isfinite(head_pose).all()):
            raise ValueError(f"avatar '{self.name}': expression codes and head poses must be finite")
        return expression, head_pose
