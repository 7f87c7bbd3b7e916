# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The labels of an SSL4EO-S12-ML archive
#
# What researchers check before training on multi-labels derived from Dynamic World: how often each
# class occurs, how many labels an image has, which classes occur together (and which rare pairs
# stand out), how much of an image a class covers, how labels change through the seasons, where the
# labels come from on the globe, what lies behind them (clouds, no-data), how the presence threshold
# shapes the multi-hot vectors, and how the archive's labels compare with the published ones.
#
# The computations live in `pipeline.figures` (tested); this notebook only calls them.
# Set `SOFTCON_ARCHIVE` to look at another archive (default: the one `make run` builds).

# %%
import os
from pathlib import Path

import numpy as np

from pipeline.figures import label_plots, label_stats, load_label_table, published_comparison, published_status, show

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
ARCHIVE = os.environ.get("SOFTCON_ARCHIVE", str(REPO / "output" / "ssl4eo_s12_ml_mini.zarr"))
PUBLISHED_JSON = os.environ.get("SOFTCON_PUBLISHED_JSON")  # optional: the imported published labels file

table = load_label_table(ARCHIVE)
print(f"archive {ARCHIVE}: {len(table.patch_id)} done of {table.n_patches_total} locations × "
      f"{len(table.reference_dates)} seasons ({', '.join(table.reference_dates)})")
print("label provenance:", (table.provenance or {}).get("source"), "| computed with", table.own_thresholds)

# %% [markdown]
# ## Class frequencies and labels per image

# %%
counts = label_stats.class_counts(table.multi_hot)
for name, n, f in zip(table.classes, counts["counts"], counts["frequency"]):
    print(f"{name:>20}: {n:6d} images ({f:.1%})")
print("labels per image:", dict(enumerate(counts["labels_per_image"].tolist())))
show(label_plots.class_frequency_figure(table))

# %% [markdown]
# ## Co-occurrence: conditional and lift (PMI)
# `P(j | i)` is dominated by frequent classes; PMI = log2 of the lift shows pairs that occur together
# more (red) or less (blue) often than independence predicts, rare pairs included.

# %%
co = label_stats.cooccurrence(table.multi_hot)
off = ~np.eye(len(table.classes), dtype=bool) & np.isfinite(co["pmi"])
i, j = np.unravel_index(np.where(off, co["pmi"], -np.inf).argmax(), co["pmi"].shape)
print(f"strongest association: {table.classes[i]} + {table.classes[j]} (PMI {co['pmi'][i, j]:+.2f} bits, "
      f"{co['counts'][i, j]} images)")
show(label_plots.cooccurrence_figure(table))

# %% [markdown]
# ## How much of an image does a present class cover?

# %%
for name, d in zip(table.classes, label_stats.fraction_distributions(table.fraction, table.multi_hot)):
    if d.size:
        print(f"{name:>20}: median fraction {np.median(d):.3f} over {d.size} images")
show(label_plots.fraction_distribution_figure(table))

# %% [markdown]
# ## Seasons of one location
# Seasons in date order; the transition matrix is for the dominant class between consecutive
# labelled seasons.

# %%
changes = label_stats.season_changes(table.multi_hot, table.fraction, table.season_order)
print(f"{changes['changing_share']:.1%} of {changes['n_locations']} locations change their label set across seasons")
show(label_plots.season_change_figure(table))

# %% [markdown]
# ## Where the labels are: latitude bands and a map

# %%
bands = label_stats.latitude_bands(table.lat, table.multi_hot)
for lo, n in zip(bands["edges"][:-1], bands["n_labelled"]):
    if n:
        print(f"latitude {lo:+5.0f}°…: {n} labelled images")
show(label_plots.latitude_figure(table))
show(label_plots.world_map_figure(table))

# %% [markdown]
# ## What is behind the labels: clouds and no-data

# %%
print(f"median S2 scene cloud cover {np.nanmedian(table.cloud_pct):.1f}%, "
      f"median DW no-data share {np.nanmedian(table.nodata_share):.1%}")
show(label_plots.cloud_nodata_figure(table))

# %% [markdown]
# ## The presence threshold
# The multi-hot vector marks a class present above a share of the valid pixels; the sweep shows what
# other thresholds would give (from the stored fractions).

# %%
sweep = label_stats.threshold_sweep(table.fraction, [0.001, 0.01, 0.05, 0.1])
for t, m in zip(sweep["thresholds"], sweep["mean_labels"]):
    print(f"threshold {t:<6g}: {m:.2f} labels per image")
show(label_plots.threshold_sweep_figure(table))

# %% [markdown]
# ## Published SSL4EO-S12-ML labels vs the archive's own
# Only when the published labels were imported (`softcon import-labels`).

# %%
reason = published_status(table)
if reason:
    print("skipped:", reason)
else:
    cmp = published_comparison(table, PUBLISHED_JSON)
    print(cmp["note"])
    for name, p, r in zip(table.classes, cmp["precision"], cmp["recall"]):
        print(f"{name:>20}: precision {p:.2f} recall {r:.2f}")
    show(label_plots.published_agreement_figure(cmp, table.classes, table.palette))
