"""Every console script answers --help without importing torch (heavy imports are lazy)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLIS = [
    "avatar_render.cli",
    "datagen.cli",
    "factorportrait.cli.train",
    "factorportrait.cli.infer",
    "factorportrait.cli.evaluate",
    "factorportrait.cli.cache_latents",
]

PROBE = """
import runpy, sys
sys.argv = ["prog", "--help"]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = sorted(m for m in ("torch", "diffusers", "ray", "av", "gsplat") if m in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize("module", CLIS)
def test_help_does_not_import_heavy_libraries(module):
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
