"""World map of sampled locations (``locations.png`` of the curation report, ``softcon plot locations``)."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

__all__ = ["plot_locations"]


def plot_locations(
    gdf: gpd.GeoDataFrame,
    path_png: str | Path,
    title: str = "Sampled locations",
    cities: pd.DataFrame | None = None,
) -> Path:
    """World scatter of the centres (lon/lat), saved as PNG with the Agg canvas (no pyplot state).

    City centres are marked: pass ``cities`` (``load_cities`` output) to mark the exact centres of
    the cities that were used; without it each city name with at least 5 samples is marked at
    the median of its samples (approximate: homonymous cities share one marker).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    n = len(gdf)
    lon = np.asarray(gdf["lon"], dtype=np.float64)
    lat = np.asarray(gdf["lat"], dtype=np.float64)

    fig = Figure(figsize=(12, 6.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#f4f7fb")
    alpha = float(np.clip(60.0 / math.sqrt(max(n, 1)), 0.1, 0.9))
    size = float(np.clip(3000.0 / max(n, 1), 1.0, 8.0))
    ax.scatter(lon, lat, s=size, c="#1f5fa8", alpha=alpha, linewidths=0, rasterized=True,
               label=f"{n:,} centres")

    used = gdf["city"].astype(str)
    if cities is not None:
        sel = cities[cities["name"].astype(str).isin(set(used))]
        mlon, mlat, label = sel["lon"].to_numpy(), sel["lat"].to_numpy(), f"{len(sel):,} cities used"
    else:
        grouped = pd.DataFrame({"city": used, "lon": lon, "lat": lat}).groupby("city", sort=True)
        med = grouped.median()[grouped.size() >= 5]
        mlon, mlat = med["lon"].to_numpy(), med["lat"].to_numpy()
        label = f"{len(med):,} cities (median of samples)"
    if len(mlon):
        ax.scatter(mlon, mlat, s=1.5, c="#d62728", marker="o", linewidths=0, alpha=0.7, label=label)

    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(-180, 181, 30))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.grid(True, color="#b0b8c4", linewidth=0.4, alpha=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8, markerscale=3, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path_png, format="png")
    return path_png
