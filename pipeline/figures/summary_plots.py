"""The label figures of the curation report, drawn from :func:`pipeline.labels.summary_statistics`.

The curation report (``archive-report`` in :mod:`flows.curate`) has the archive's summary statistics at
hand, not a :class:`~pipeline.figures.label_data.LabelTable`; these functions turn the statistics into the
shapes :mod:`pipeline.figures.label_stats` returns and draw them with the same figure code as
``softcon plot labels`` (:mod:`pipeline.figures.label_plots`), so both show the same figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bands import DW_PALETTE
from pipeline.figures.label_plots import draw_class_frequencies, draw_cooccurrence
from pipeline.figures.label_stats import cooccurrence_from_counts
from pipeline.figures.style import DEFAULT_DPI, save_png

__all__ = ["plot_class_frequencies", "plot_cooccurrence"]


def _classes_and_palette(stats: dict[str, Any]) -> tuple[tuple[str, ...], list[str]]:
    classes = tuple(stats["classes"])
    return classes, list(stats.get("palette", DW_PALETTE))[: len(classes)]


def plot_class_frequencies(stats: dict[str, Any], path_png: str | Path, dpi: int = DEFAULT_DPI) -> str:
    """Images per class and labels per image (as ``class_frequencies.png`` of ``softcon plot labels``); writes
    a PNG of the summary statistics ``stats`` and returns its path.
    """
    classes, palette = _classes_and_palette(stats)
    n_done = int(stats["n_patches_done"])
    counts = {"counts": np.asarray(stats["class_counts"], dtype=np.int64),
              "frequency": np.asarray(stats["class_frequency"], dtype=np.float64),
              "n_labelled": int(stats["n_labelled"]), "n_images": int(stats["n_patch_seasons"]),
              "labels_per_image": np.asarray(stats["labels_per_image"], dtype=np.int64)}
    n_seasons = int(stats["n_patch_seasons"]) // n_done if n_done else 0
    fig = draw_class_frequencies(counts, classes, palette, n_done, n_seasons)
    return str(save_png(fig, path_png, dpi))


def plot_cooccurrence(stats: dict[str, Any], path_png: str | Path, dpi: int = DEFAULT_DPI) -> str:
    """Conditional co-occurrence and PMI (as ``cooccurrence.png`` of ``softcon plot labels``); writes a PNG of
    the summary statistics ``stats`` and returns its path.
    """
    classes, _ = _classes_and_palette(stats)
    c = cooccurrence_from_counts(np.asarray(stats["cooccurrence"], dtype=np.int64), int(stats["n_labelled"]))
    return str(save_png(draw_cooccurrence(c, classes), path_png, dpi))
