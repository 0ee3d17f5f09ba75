"""Inference: camera paths, driving signals and the FactorPortrait sampling pipeline."""
