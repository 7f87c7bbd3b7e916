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
# # A gallery of patches
#
# S2 true colour (B4/B3/B2) and false colour (B8/B4/B3) with a percentile stretch, the S1 VV/VH/ratio
# composite and the Dynamic World map in its official palette, for the seasons of a location side
# by side. `find_patches` selects locations by the classes present in their labels.
# Set `SOFTCON_ARCHIVE` to look at another archive (default: the one `make run` builds).

# %%
import os
from pathlib import Path


from pipeline.figures import (
    example_patches, find_patches, gallery_figure, load_label_table, patch_seasons_figure, show)

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
ARCHIVE = os.environ.get("SOFTCON_ARCHIVE", str(REPO / "output" / "ssl4eo_s12_ml_mini.zarr"))

table = load_label_table(ARCHIVE, nodata=False)
print(f"archive {ARCHIVE}: {len(table.patch_id)} done locations, seasons {', '.join(table.reference_dates)}")

# %% [markdown]
# ## A few locations with different dominant classes (first season)

# %%
examples = example_patches(table, n=4)
print("locations:", [str(table.patch_id[list(table.patch_index).index(p)]) for p in examples])
show(gallery_figure(ARCHIVE, examples))

# %% [markdown]
# ## Query by label: water and built-up land, no snow

# %%
hits = find_patches(table, with_labels=["water", "built"], without=["snow_and_ice"])
print(f"{len(hits)} locations have a season with water and built and no snow")
chosen = int(hits[0]) if len(hits) else examples[0]
print("showing archive patch", chosen, "through its seasons")
show(patch_seasons_figure(ARCHIVE, chosen))

# %% [markdown]
# ## Locations that keep crops in every labelled season

# %%
crops = find_patches(table, with_labels=["crops"], all_seasons=True)
print(f"{len(crops)} locations have crops in every labelled season")
if len(crops):
    show(gallery_figure(ARCHIVE, [int(p) for p in crops[:3]], season=int(table.season_order[-1])))
