"""Shared fixtures: built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_avatar():
    from avatar_render import load_avatar

    return load_avatar("demo-003")
