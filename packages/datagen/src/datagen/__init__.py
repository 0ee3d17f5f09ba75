"""Synthetic ViewSweep / DynamicSweep data generation: trajectories, plans, rendering with Ray, manifests."""

__version__ = "0.1.0"
