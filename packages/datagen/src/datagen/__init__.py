"""Synthetic ViewSweep / DynamicSweep data generation."""
