"""Label statistics and figures of a curated archive (numpy, xarray/zarr and matplotlib; no torch).

* :mod:`.style` — Agg figures without pyplot, font sizes, Dynamic World colours (from :mod:`pipeline.bands`).
* :mod:`.label_data` — :func:`load_label_table`: the label vectors and per-image context of the done patches.
* :mod:`.label_stats` — frequencies, co-occurrence with lift/PMI, seasonal change, latitude bands,
  threshold sweep, precision/recall.
* :mod:`.label_plots` — one figure per statistic.
* :mod:`.gallery` — S2 true/false colour, S1 composite, DW map; :func:`find_patches`.
* :mod:`.published` — published SSL4EO-S12-ML labels against the archive's own.
* :mod:`.render` — :func:`render_label_figures`, what ``softcon plot labels`` writes.
* :mod:`.summary_plots` — class frequencies and co-occurrence from :func:`pipeline.labels.summary_statistics`
  (the curation report), drawn by :mod:`.label_plots`.
* :mod:`.locations` — :func:`~pipeline.figures.locations.plot_locations`, the world map of sampled locations.
"""

from pipeline.figures.gallery import (
    dw_rgb,
    find_patches,
    gallery_figure,
    patch_seasons_figure,
    percentile_stretch,
    s1_composite,
    s2_composite,
)
from pipeline.figures.label_data import LabelTable, load_label_table
from pipeline.figures.published import published_comparison, published_status
from pipeline.figures.render import LABEL_FIGURES, example_patches, render_label_figures
from pipeline.figures.style import (
    DEFAULT_DPI,
    dw_colormap,
    dw_legend_handles,
    new_figure,
    save_png,
    show,
)

__all__ = [
    "DEFAULT_DPI", "LABEL_FIGURES", "LabelTable", "dw_colormap", "dw_legend_handles", "dw_rgb", "example_patches",
    "find_patches", "gallery_figure", "load_label_table", "new_figure", "patch_seasons_figure", "percentile_stretch",
    "published_comparison", "published_status", "render_label_figures", "s1_composite", "s2_composite", "save_png",
    "show",
]
