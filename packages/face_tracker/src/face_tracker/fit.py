"""Fit the avatar's head rig to per-frame 2-D landmarks: head pose [6] and the rig's blendshape weights.

1. Rigid: per frame, a weak-perspective linear start and Levenberg-Marquardt on the neutral mesh (`rigid.py`).
2. Joint: head poses and rig weights w [T, E] (kept in the rig's range, [0, 1] for ARKit) together, by
   projected Levenberg-Marquardt on, summed over the frames where a face was found,
       E = mean_p |r_tp|^2 + prior_weight |w_t|^2 + smooth_weight |w_t - w_(t-1)|^2,
   r_tp = 100 (projected vertex - landmark) / s_t, in percent of the face's image size s_t (the RMS distance of
   the frame's landmarks from their centroid, px), so the weights below mean the same at any resolution or
   subject distance. The smoothing term joins consecutive frames that both have a face; head poses are not
   smoothed (the rigid fit is well determined by ~150 points).
3. Codes in the avatar's code space: the least-norm codes of the fitted weights (`Avatar.codes_from_rig_weights`,
   exact for the demo kit, whose expression_map rows are orthonormal: codes = w @ expression_map).

Frames without a face (or with fewer than 6 usable points) are not fitted: found False, confidence 0, and NaN in
codes, rig weights, head pose, fitted landmarks and rms_px.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import jacfwd, vmap

from avatar_render import Avatar, Camera, look_at_viewmat
from avatar_render.camera import DEFAULT_FOV_DEG

from .landmarker import Detections
from .rig import LandmarkRig, project
from .rigid import fit_rigid, residuals

MIN_POINTS = 6


@dataclass(frozen=True)
class FitConfig:
    """Fit settings (defaults measured on demo renders, see tests/face_tracker/test_fit.py)."""

    rigid_iterations: int = 15
    iterations: int = 10  # joint Levenberg-Marquardt steps (converged by ~5 on demo renders)
    prior_weight: float = 0.3  # L2 on rig weights (data term in percent^2 of the face size)
    smooth_weight: float = 1.0  # first differences of rig weights between consecutive found frames
    quality_scale: float = 0.05  # fit quality = exp(-(rms / s_t / quality_scale)^2), see TrackResult.confidence


@dataclass
class TrackResult:
    """Per-frame fit of T frames (float32; NaN on frames with found False)."""

    codes: Tensor  # [T, D] expression codes in the avatar's code space
    rig_weights: Tensor  # [T, E] blendshape weights
    head_pose: Tensor  # [T, 6] axis-angle (rad) + translation (m), `Avatar.pose_mesh` convention
    landmarks: Tensor  # [T, P, 2] fitted 2-D positions (px) of the corresponding vertices
    mp_indices: Tensor  # [P] landmarker point index of each fitted landmark
    rms_px: Tensor  # [T] RMS reprojection error over the usable points
    # [T] in [0, 1]: (0.5 + 0.5 detector score) * exp(-(rms_px / s_t / quality_scale)^2), s_t the face's image
    # size (module doc); the detector's score counts half, so a frame the face mesh tracked but the detector
    # missed (score 0) keeps half its fit quality; 0 where not found
    confidence: Tensor
    found: Tensor  # [T] bool


def tracking_camera(
    width: int,
    height: int,
    K: Tensor | None = None,
    fov_deg: float = DEFAULT_FOV_DEG,
    distance_m: float = 0.32,
    head_centre: Sequence[float] = (0.0, -0.03, 0.0),
) -> tuple[Tensor, Tensor]:
    """The fixed tracking camera: K [3,3] (given, or from a horizontal FoV) and viewmat [4,4].

    The camera sits `distance_m` in front of the face (+Z) looking at `head_centre`, as the phone stand-in of
    `datagen render --mode phonecapture` does, so a subject at another distance shows as a head translation.
    """
    centre = torch.tensor(head_centre, dtype=torch.float32)
    viewmat = look_at_viewmat(centre + torch.tensor([0.0, 0.0, distance_m]), centre)
    if K is None:
        K = Camera.from_fov(width, height, fov_deg).K[0]
    return torch.as_tensor(K, dtype=torch.float32), viewmat


def fit_landmarks(
    avatar: Avatar,
    landmarks: Tensor | np.ndarray,
    K: Tensor,
    viewmat: Tensor,
    found: Tensor | np.ndarray | None = None,
    score: Tensor | np.ndarray | None = None,
    config: FitConfig | None = None,
    rig: LandmarkRig | None = None,
) -> TrackResult:
    """Fit T frames of landmarker points [T, N, 2] px (MediaPipe layout, NaN where missing) with a fixed camera.

    All found frames are solved together (the smoothing joins them); memory grows by ~1 MB per frame (measured: the
    Jacobians and their intermediates), so split long videos into segments of a few thousand frames.
    """
    cfg = config or FitConfig()
    rig = rig or LandmarkRig(avatar)
    dt = torch.float64
    lms = torch.as_tensor(np.asarray(landmarks), dtype=dt)
    if lms.dim() != 3 or lms.shape[-1] != 2 or lms.shape[1] <= int(rig.mp_indices.max()):
        raise ValueError(f"fit: landmarks must be [T, N>{int(rig.mp_indices.max())}, 2], got {tuple(lms.shape)}")
    T = lms.shape[0]
    uv_all = lms[:, rig.mp_indices]  # [T, P, 2]
    mask_all = torch.isfinite(uv_all).all(-1)
    ok = mask_all.sum(1) >= MIN_POINTS
    if found is not None:
        found = torch.as_tensor(np.asarray(found), dtype=torch.bool)
        if found.shape != (T,):
            raise ValueError(f"fit: found must be [T={T}], got {tuple(found.shape)}")
        ok &= found
    det_score = torch.ones(T, dtype=dt) if score is None else torch.as_tensor(np.asarray(score), dtype=dt)
    if det_score.shape != (T,):
        raise ValueError(f"fit: score must be [T={T}], got {tuple(det_score.shape)}")
    K, V = torch.as_tensor(K, dtype=dt), torch.as_tensor(viewmat, dtype=dt)

    E, P = rig.num_blendshapes, rig.num_points
    out_w = torch.full((T, E), torch.nan, dtype=dt)
    out_pose = torch.full((T, 6), torch.nan, dtype=dt)
    out_uv = torch.full((T, P, 2), torch.nan, dtype=dt)
    out_rms = torch.full((T,), torch.nan, dtype=dt)
    confidence = torch.zeros(T, dtype=dt)
    idx = ok.nonzero()[:, 0]
    if len(idx):
        uv, mask = uv_all[idx], mask_all[idx]
        scale = _face_scale(uv, mask)
        pose = fit_rigid(rig, uv, mask, scale, K, V, iterations=cfg.rigid_iterations)
        # Consecutive found frames are smoothed together; a gap (no face) breaks the chain.
        linked = (idx[1:] - idx[:-1]) == 1
        pose, w = _fit_joint(rig, uv, mask, scale, K, V, pose, linked, cfg)
        with torch.no_grad():
            pred, _ = project(rig.points(w, pose), K, V)
            err = ((pred - uv.nan_to_num()).square().sum(-1) * mask).sum(1) / mask.sum(1)
            rms = err.sqrt()
        out_w[idx], out_pose[idx], out_uv[idx], out_rms[idx] = w, pose, pred, rms
        quality = torch.exp(-((rms / scale / cfg.quality_scale) ** 2))
        confidence[idx] = ((0.5 + 0.5 * det_score[idx].clamp(0, 1)) * quality).nan_to_num(0.0)
    codes = avatar.codes_from_rig_weights(out_w.float().nan_to_num(0.0))
    codes[~ok] = torch.nan
    return TrackResult(
        codes=codes,
        rig_weights=out_w.float(),
        head_pose=out_pose.float(),
        landmarks=out_uv.float(),
        mp_indices=rig.mp_indices.clone(),
        rms_px=out_rms.float(),
        confidence=confidence.float(),
        found=ok,
    )


def fit_detections(
    avatar: Avatar,
    detections: Detections,
    width: int,
    height: int,
    K: Tensor | None = None,
    fov_deg: float = DEFAULT_FOV_DEG,
    config: FitConfig | None = None,
) -> TrackResult:
    """Fit landmarker output of a video of `width` x `height` px with the fixed camera of `tracking_camera`."""
    K, V = tracking_camera(width, height, K=K, fov_deg=fov_deg)
    return fit_landmarks(
        avatar, detections.landmarks, K, V, found=detections.found, score=detections.score, config=config
    )


def _face_scale(uv: Tensor, mask: Tensor) -> Tensor:
    """RMS distance of each frame's usable landmarks from their centroid, px [T]."""
    m = mask.to(uv.dtype)[..., None]
    centre = (m * uv.nan_to_num()).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    spread = (m * (uv.nan_to_num() - centre)).square().sum((1, 2)) / m[..., 0].sum(1)
    return spread.sqrt().clamp_min(1e-3)


def _fit_joint(
    rig: LandmarkRig,
    uv: Tensor,
    mask: Tensor,
    scale: Tensor,
    K: Tensor,
    V: Tensor,
    pose: Tensor,
    linked: Tensor,
    cfg: FitConfig,
) -> tuple[Tensor, Tensor]:
    """Projected Levenberg-Marquardt on head poses and rig weights of the found frames (module doc's objective).

    Each frame solves its own 6 + E unknowns with its neighbours' weights held at the last iterate (a Jacobi
    sweep over the smoothing term: at convergence this is the joint optimum); weights are clipped to the rig's
    range after each step (projection), a step is kept where it lowers that frame's cost.
    """
    low, high = rig.weight_range
    T, E = pose.shape[0], rig.num_blendshapes
    norm = 100.0 / mask.sum(1).clamp_min(1).sqrt()  # data term = mean over points of |r|^2, r in percent

    def data_res(x: Tensor) -> Tensor:  # [T, 2P]
        r = residuals(rig, x[:, 6:], x[:, :6], uv, mask, scale, K, V)
        return r.reshape(T, -1) * norm[:, None]

    def pose_res(p: Tensor, w: Tensor, u: Tensor, mk: Tensor, s: Tensor, nm: Tensor) -> Tensor:
        return residuals(rig, w[None], p[None], u[None], mk[None], s[None], K, V).reshape(-1) * nm

    pose_jac = vmap(jacfwd(pose_res, argnums=0))

    def jacobian(x: Tensor) -> Tensor:  # [T, 2P, 6 + E]: pose by forward mode, weights in closed form
        j_pose = pose_jac(x[:, :6], x[:, 6:], uv, mask, scale, norm)
        j_w = rig.weight_jacobian(x[:, 6:], x[:, :6], K, V) * (mask / scale[:, None] * norm[:, None])[..., None, None]
        return torch.cat([j_pose, j_w.reshape(T, -1, E)], -1)

    link = linked.to(pose.dtype)
    prev_link = torch.cat([link.new_zeros(1), link])  # frame t is linked to t-1
    next_link = torch.cat([link, link.new_zeros(1)])  # frame t is linked to t+1

    def frame_cost(x: Tensor, w_prev: Tensor, w_next: Tensor) -> Tensor:
        r = data_res(x)
        w = x[:, 6:]
        smooth = prev_link * (w - w_prev).square().sum(1) + next_link * (w - w_next).square().sum(1)
        return r.square().sum(1) + cfg.prior_weight * w.square().sum(1) + cfg.smooth_weight * smooth

    x = torch.cat([pose, torch.zeros(T, E, dtype=pose.dtype).clamp(low, high)], -1)
    damping = torch.full((T,), 1e-3, dtype=pose.dtype)
    eye = torch.eye(6 + E, dtype=pose.dtype)
    for _ in range(cfg.iterations):
        w = x[:, 6:]
        w_prev = torch.cat([w[:1], w[:-1]])
        w_next = torch.cat([w[1:], w[-1:]])
        current = frame_cost(x, w_prev, w_next)
        r = data_res(x)
        J = jacobian(x)
        curv = cfg.prior_weight + cfg.smooth_weight * (prev_link + next_link)  # [T] on the weights' diagonal
        prior_diag = torch.zeros(T, 6 + E, dtype=x.dtype)
        prior_diag[:, 6:] = curv[:, None]
        H = J.transpose(1, 2) @ J + torch.diag_embed(prior_diag)
        g = (J.transpose(1, 2) @ r[..., None])[..., 0]
        g[:, 6:] += cfg.prior_weight * w + cfg.smooth_weight * (
            prev_link[:, None] * (w - w_prev) + next_link[:, None] * (w - w_next)
        )
        H = H + damping[:, None, None] * (H.diagonal(dim1=1, dim2=2)[..., None] * eye + 1e-9 * eye)
        trial = x - torch.linalg.solve(H, g[..., None])[..., 0]
        trial[:, 6:] = trial[:, 6:].clamp(low, high)
        new = frame_cost(trial, w_prev, w_next)
        better = new < current
        x = torch.where(better[:, None], trial, x)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-7, 1e7)
    return x[:, :6], x[:, 6:]
