"""The test command checks the code style too: ruff (pyflakes, pycodestyle, import order, Google docstrings),
configured in pyproject.toml; `make lint` runs the same check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check . (make lint) found problems:\n{proc.stdout}{proc.stderr}"
