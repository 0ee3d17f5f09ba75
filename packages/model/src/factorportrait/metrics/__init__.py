"""Evaluation metrics of FactorPortrait (paper Sec. 5.1): PSNR, SSIM, LPIPS, CSIM, AED, FID, FVD.

Networks load from local files only (see `networks`); without weights a metric is reported as None.
"""

from factorportrait.metrics.frechet import feature_statistics, fid_from_features, frechet_distance, fvd_from_features
from factorportrait.metrics.networks import (
    LPIPS,
    NETWORK_SPECS,
    WEIGHT_NAMES,
    MetricSuite,
    load_feature_network,
    load_weights_file,
    make_lpips_state_dict,
)
from factorportrait.metrics.pixel import psnr, psnr_per_frame, ssim, ssim_per_frame, to_frames

__all__ = [
    "LPIPS",
    "NETWORK_SPECS",
    "WEIGHT_NAMES",
    "MetricSuite",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "fvd_from_features",
    "load_feature_network",
    "load_weights_file",
    "make_lpips_state_dict",
    "psnr",
    "psnr_per_frame",
    "ssim",
    "ssim_per_frame",
    "to_frames",
]
