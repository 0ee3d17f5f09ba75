"""Animatable 3D Gaussian head avatars."""
