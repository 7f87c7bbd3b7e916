"""The exploration notebook runs end to end (as a notebook, through a Jupyter kernel) on a small archive."""

from __future__ import annotations

from pathlib import Path

import pytest

from archive_helpers import synthetic_archive

REPO = Path(__file__).resolve().parents[1]


def test_explore_notebook_executes(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    from nbclient import NotebookClient

    synthetic_archive(tmp_path / "a.zarr", n_locations=6, size_px=32, patches_per_shard=3)
    nb = jupytext.read(REPO / "notebooks" / "explore_archive.py")
    monkeypatch.setenv("SOFTCON_ARCHIVE", str(tmp_path / "a.zarr"))
    monkeypatch.setenv("SOFTCON_FIGURES", str(tmp_path / "figs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for name in ("class_frequencies.png", "cooccurrence.png", "map_dominant_class.png", "gallery.png",
                 "cloud_cover.png"):
        assert (tmp_path / "figs" / name).stat().st_size > 1000, name
