"""Write every label figure of an archive as PNGs (``softcon plot labels``, ``make figures``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.figures import label_plots as lp
from pipeline.figures.gallery import find_patches, gallery_figure, patch_seasons_figure
from pipeline.figures.label_data import LabelTable, load_label_table
from pipeline.figures.published import published_comparison, published_status
from pipeline.figures.style import DEFAULT_DPI, save_png

#: File name → figure builder taking the label table (in the order they are written).
LABEL_FIGURES: dict[str, Callable[[LabelTable], Any]] = {
    "class_frequencies": lp.class_frequency_figure,
    "cooccurrence": lp.cooccurrence_figure,
    "label_fractions": lp.fraction_distribution_figure,
    "season_changes": lp.season_change_figure,
    "latitude_bands": lp.latitude_figure,
    "world_map": lp.world_map_figure,
    "cloud_nodata": lp.cloud_nodata_figure,
    "threshold_sweep": lp.threshold_sweep_figure,
}


def example_patches(table: LabelTable, n: int = 4, seed: int = 0) -> list[int]:
    """Up to ``n`` archive patch indices with different dominant classes first (seeded), for galleries."""
    rng = np.random.default_rng(seed)
    candidates = [int(i) for i in rng.permutation(len(table.patch_index)) if table.dominant[i] >= 0]
    chosen, seen = [], set()
    for i in candidates:  # one per dominant class first
        if table.dominant[i] not in seen:
            chosen.append(i)
            seen.add(table.dominant[i])
    chosen += [i for i in candidates if i not in chosen]
    return [int(table.patch_index[i]) for i in chosen[:n]]


def render_label_figures(store: str, out_dir: str | Path, dpi: int = DEFAULT_DPI,
                         published_json: str | Path | None = None, storage_options: dict | None = None,
                         log: Callable[[str], None] | None = None) -> list[Path]:
    """Write the label figures of ``store`` into ``out_dir``; returns the PNG paths.

    :data:`LABEL_FIGURES`, ``gallery.png`` (four locations, first season), ``patch_seasons.png`` (one
    location through its seasons) and, when published labels are the archive's current vectors,
    ``published_agreement.png``; ``log`` receives one line per figure written or skipped.
    """
    say = log or (lambda _line: None)
    table = load_label_table(store, storage_options)
    out = Path(out_dir)
    written = [save_png(build(table), out / f"{name}.png", dpi) for name, build in LABEL_FIGURES.items()]
    patches = example_patches(table)
    if patches:
        gallery = gallery_figure(store, patches, storage_options=storage_options)
        written.append(save_png(gallery, out / "gallery.png", dpi))
        water_built = find_patches(table, with_labels=["water", "built"])
        one = int(water_built[0]) if water_built.size else patches[0]
        written.append(save_png(patch_seasons_figure(store, one, storage_options), out / "patch_seasons.png", dpi))
    else:
        say("gallery: skipped, no labelled location")
    reason = published_status(table)
    if reason is None:
        cmp = published_comparison(table, published_json)
        written.append(save_png(lp.published_agreement_figure(cmp, table.classes, table.palette),
                                out / "published_agreement.png", dpi))
    else:
        say(f"published_agreement: skipped, {reason}")
    for p in written:
        say(f"wrote {p}")
    return written
