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
# # Explore an SSL4EO-S12-ML archive
#
# Class frequencies, co-occurrence, where the patches are, and a gallery of S2 / Dynamic World /
# S1 patches. Point `SOFTCON_ARCHIVE` at an archive (default: the one `make run` builds).
# Open with `jupytext --to notebook notebooks/explore_archive.py` or run it as a script.

# %%
import os
from pathlib import Path

import matplotlib

if "ipykernel" not in os.environ.get("MPLBACKEND", "") and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from pipeline.bands import DW_CLASSES, DW_PALETTE, LABEL_NODATA
from pipeline.labels import plot_class_frequencies, plot_cooccurrence, summary_statistics
from pipeline.store import STATUS_DONE, open_archive, summarize

ARCHIVE = os.environ.get("SOFTCON_ARCHIVE", str(Path.cwd().parent / "output" / "ssl4eo_s12_ml_mini.zarr")
                         if Path.cwd().name == "notebooks" else "output/ssl4eo_s12_ml_mini.zarr")
FIGURES = Path(os.environ.get("SOFTCON_FIGURES", "notebook_figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
ds = open_archive(ARCHIVE)
summary = summarize(ARCHIVE)
print(f"archive {ARCHIVE}")
print(f"{summary['title']}: {summary['n_patches']} patches × {summary['n_seasons']} seasons, "
      f"source {summary['source']}{' (synthetic)' if summary['synthetic'] else ''}; status {summary['status']}")

# %% [markdown]
# ## Class frequencies and co-occurrence

# %%
stats = summary_statistics(ARCHIVE)
plot_class_frequencies(stats, str(FIGURES / "class_frequencies.png"))
plot_cooccurrence(stats, str(FIGURES / "cooccurrence.png"))
print("labels per image:", dict(enumerate(np.asarray(stats["labels_per_image"]).tolist())))
for name, f in zip(DW_CLASSES, stats["class_frequency"]):
    print(f"{name:>20}: {f:.3f}")

# %% [markdown]
# ## Where the patches are, coloured by their most frequent class

# %%
done = ds["status"].values == STATUS_DONE
frac = ds["label_fraction"].values[done].mean(axis=1)  # mean over seasons
dominant = frac.argmax(axis=1)
fig, ax = plt.subplots(figsize=(10, 5))
ax.scatter(ds["lon"].values[done], ds["lat"].values[done], c=[DW_PALETTE[i] for i in dominant], s=18,
           edgecolors="k", linewidths=0.3)
ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude",
       title="locations (colour: dominant Dynamic World class)")
ax.grid(alpha=0.3)
fig.savefig(FIGURES / "map_dominant_class.png", dpi=80)

# %% [markdown]
# ## Gallery: S2 L1C true colour, Dynamic World, S1 VV

# %%
rng = np.random.default_rng(0)
patches = rng.choice(np.flatnonzero(done), size=min(4, int(done.sum())), replace=False)
modality = "s2_l1c" if "s2_l1c" in ds else "s2_l2a"
bands = list(ds[f"band_{modality}"].values)
rgb_idx = [bands.index(b) for b in ("B4", "B3", "B2")]
cols = 3 if "s1_grd" in ds else 2
fig, axes = plt.subplots(len(patches), cols, figsize=(3 * cols, 3 * len(patches)), squeeze=False)
for row, p in enumerate(patches):
    season = int(rng.integers(0, ds.sizes["season"]))
    rgb = ds[modality][p, season, rgb_idx].values.transpose(1, 2, 0).astype(float)
    axes[row, 0].imshow(np.clip(rgb / 3000, 0, 1))
    axes[row, 0].set_title(f"{ds['patch_id'].values[p]} s{season}", fontsize=8)
    dw = ds["dw_label"][p, season].values.astype(float)
    dw[dw == LABEL_NODATA] = np.nan
    axes[row, 1].imshow(dw, cmap=ListedColormap(DW_PALETTE), vmin=-0.5, vmax=8.5, interpolation="nearest")
    present = [DW_CLASSES[i] for i in np.flatnonzero(ds["multi_hot"][p, season].values)]
    axes[row, 1].set_title(", ".join(present), fontsize=6)
    if cols == 3:
        axes[row, 2].imshow(ds["s1_grd"][p, season, 0].values, cmap="gray", vmin=-25, vmax=0)
        axes[row, 2].set_title("S1 VV (dB)", fontsize=8)
for a in axes.ravel():
    a.axis("off")
fig.tight_layout()
fig.savefig(FIGURES / "gallery.png", dpi=80)

# %% [markdown]
# ## Cloud cover of the chosen S2 scenes

# %%
cloud = ds["cloud_pct"].sel(modality=modality).values[done].ravel()
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(cloud[np.isfinite(cloud)], bins=20, color="#88b053")
ax.set(xlabel="cloudy pixel percentage", ylabel="images", title="S2 cloud cover after the filter")
fig.savefig(FIGURES / "cloud_cover.png", dpi=80)
print("figures written to", FIGURES.resolve())
