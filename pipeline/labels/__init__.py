"""Per-image multi-label vectors from Dynamic World label maps (the SSL4EO-S12-ML curation step).

* :mod:`.vectors` — :func:`label_vectors` (numpy) and :func:`label_vectors_dask`: class fractions and
  multi-hot vectors of label maps (the formulas and the thresholds are documented there).
* :mod:`.provenance` — the ``label_provenance`` record of how an archive's vectors were made.
* :mod:`.archive` — :func:`compute_archive_labels` / :func:`relabel_archive`: the vectors of a whole archive.
* :mod:`.summary` — :func:`summary_statistics` and :func:`label_summary`.

The figures of the statistics, :func:`plot_class_frequencies` and :func:`plot_cooccurrence`, live in
:mod:`pipeline.figures.summary_plots`; they are importable from here too, loaded on first use so that
importing this package does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

from pipeline.labels.archive import CODEC_BATCH, compute_archive_labels, relabel_archive
from pipeline.labels.provenance import (
    LABEL_PROVENANCE_ATTR,
    PROVENANCE_SOURCES,
    provenance_record,
    read_label_provenance,
    update_label_provenance,
)
from pipeline.labels.summary import label_summary, summary_statistics
from pipeline.labels.vectors import label_vectors, label_vectors_dask
from pipeline.store import STATUS_DONE

__all__ = [
    "STATUS_DONE", "label_vectors", "label_vectors_dask", "compute_archive_labels", "relabel_archive", "label_summary",
    "summary_statistics", "plot_class_frequencies", "plot_cooccurrence", "LABEL_PROVENANCE_ATTR",
    "provenance_record", "read_label_provenance", "update_label_provenance", "CODEC_BATCH", "PROVENANCE_SOURCES",
]

_PLOTS = ("plot_class_frequencies", "plot_cooccurrence")


def __getattr__(name: str) -> Any:
    """The plot functions of :mod:`pipeline.figures.summary_plots`, imported on first access."""
    if name in _PLOTS:
        from pipeline.figures import summary_plots

        return getattr(summary_plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
