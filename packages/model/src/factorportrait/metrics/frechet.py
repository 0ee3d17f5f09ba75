"""Fréchet distance between Gaussians fitted to network features (FID on Inception frames, FVD on I3D clips)."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mean [D], covariance [D, D]) in float64; needs N >= 2 for a covariance."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as in pytorch-fid."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"inconsistent statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Singular product (few samples, rank-deficient covariances): regularise the diagonal as pytorch-fid does.
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        # sqrtm of a PSD product is real up to round-off; a large imaginary part means broken statistics.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm gave an imaginary component of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _distance(features_a, features_b) -> float:
    mu1, s1 = feature_statistics(features_a)
    mu2, s2 = feature_statistics(features_b)
    return frechet_distance(mu1, s1, mu2, s2)


def fid_from_features(pred_features, gt_features) -> float:
    """FID from Inception pool features of generated and real frames, each [N, 2048]."""
    return _distance(pred_features, gt_features)


def fvd_from_features(pred_features, gt_features) -> float:
    """FVD from I3D features of generated and real clips, each [N, 400] (logits) or [N, 1024] (pool)."""
    return _distance(pred_features, gt_features)


__all__ = ["feature_statistics", "fid_from_features", "frechet_distance", "fvd_from_features"]
