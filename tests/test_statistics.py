"""Archive statistics (pipeline.statistics): computed without torch, re-exported by train.data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm")


def test_pipeline_statistics_imports_without_torch():
    code = ("import sys, pipeline.statistics; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"pipeline.statistics imported {done.stdout.strip()}"


def test_train_data_reexports_the_same_function():
    import pipeline.statistics
    import train.data

    assert train.data.compute_archive_statistics is pipeline.statistics.compute_archive_statistics
