"""Figures of an archive's labels, built from a :class:`~pipeline.figures.label_data.LabelTable`.

Each ``*_figure`` function returns a matplotlib :class:`~matplotlib.figure.Figure` (its own Agg
canvas, :mod:`pipeline.figures.style`); classes are always drawn in the Dynamic World palette.
Statistics come from :mod:`pipeline.figures.label_stats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps

from pipeline.figures import label_stats as ls
from pipeline.figures.label_data import LabelTable
from pipeline.figures.style import (
    ANNOTATION_SIZE,
    dw_legend_handles,
    new_figure,
    pretty,
    styled,
)


def _class_axis(ax, classes: tuple[str, ...], axis: str = "y") -> None:
    names = [pretty(c) for c in classes]
    if axis == "y":
        ax.set_yticks(np.arange(len(classes)), names)
    else:
        ax.set_xticks(np.arange(len(classes)), names, rotation=40, ha="right")


def class_frequency_figure(table: LabelTable):
    """Images per class (count and share of labelled images) and the labels-per-image histogram."""
    return draw_class_frequencies(ls.class_counts(table.multi_hot), table.classes, table.palette,
                                  len(table.patch_id), table.multi_hot.shape[1])


@styled
def draw_class_frequencies(c: dict[str, Any], classes: tuple[str, ...], palette: list[str], n_locations: int,
                           n_seasons: int):
    """:func:`class_frequency_figure` from counts shaped as :func:`~pipeline.figures.label_stats.class_counts`
    returns them, for callers that have counts but no label table (:mod:`pipeline.figures.summary_plots`).
    """
    fig = new_figure(11, 4.2)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.4, 1])
    y = np.arange(len(classes))
    ax.barh(y, c["counts"], color=palette, edgecolor="0.3", linewidth=0.5)
    _class_axis(ax, classes)
    ax.invert_yaxis()
    top = max(1, int(c["counts"].max(initial=0)))
    ax.set_xlim(0, top * 1.35)
    for yy, n, f in zip(y, c["counts"], np.nan_to_num(c["frequency"])):
        ax.text(n, yy, f" {n} ({f:.0%})", va="center", fontsize=ANNOTATION_SIZE)
    ax.set(xlabel="labelled images where the class is present", title="Class frequency")
    k = np.arange(len(c["labels_per_image"]))
    ax2.bar(k, c["labels_per_image"], color="#5b7fa6", edgecolor="0.3", linewidth=0.5)
    ax2.set_xticks(k)
    ax2.set(xlabel="classes present in the image (0 = unlabelled)", ylabel="images", title="Labels per image")
    fig.suptitle(f"{c['n_labelled']} labelled of {c['n_images']} images ({n_locations} locations × "
                 f"{n_seasons} seasons)")
    return fig


def _matrix(ax, values: np.ndarray, counts: np.ndarray, classes: tuple[str, ...], cmap: str, vmin: float,
            vmax: float, fmt: str, label: str, fig) -> None:
    im = ax.imshow(np.ma.masked_invalid(values), cmap=colormaps[cmap].with_extremes(bad="0.85"), vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    _class_axis(ax, classes, "x")
    _class_axis(ax, classes, "y")
    mid = (vmin + vmax) / 2
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = values[i, j]
            text = "–" if counts[i, j] == 0 else format(v, fmt) if np.isfinite(v) else ""
            dark = np.isfinite(v) and (v < mid if cmap == "viridis" else abs(v - mid) > 0.6 * (vmax - mid))
            ax.text(j, i, text, ha="center", va="center", fontsize=ANNOTATION_SIZE,
                    color="white" if dark else "black")


def cooccurrence_figure(table: LabelTable):
    """Co-occurrence: P(column | row) and PMI (log2 lift), so pairs of rare classes stay visible."""
    return draw_cooccurrence(ls.cooccurrence(table.multi_hot), table.classes)


@styled
def draw_cooccurrence(c: dict[str, Any], classes: tuple[str, ...]):
    """:func:`cooccurrence_figure` from statistics shaped as :func:`~pipeline.figures.label_stats.cooccurrence`
    returns them.
    """
    fig = new_figure(13, 5.8)
    ax1, ax2 = fig.subplots(1, 2)
    _matrix(ax1, c["conditional"], c["counts"], classes, "viridis", 0.0, 1.0, ".2f",
            "P(column present | row present)", fig)
    ax1.set_title("Conditional co-occurrence")
    pmi = np.where(np.isneginf(c["pmi"]), np.nan, c["pmi"])
    finite = np.abs(pmi[np.isfinite(pmi)])
    lim = float(max(1.0, finite.max(initial=0)))
    _matrix(ax2, pmi, c["counts"], classes, "RdBu_r", -lim, lim, "+.1f",
            "PMI = log2 P(i,j) / (P(i) P(j))  [bits]", fig)
    ax2.set_title("Lift as PMI (– : never together)")
    fig.suptitle(f"Class co-occurrence over {c['n_labelled']} labelled images")
    return fig


@styled
def fraction_distribution_figure(table: LabelTable):
    """Distribution of each class's pixel fraction in the images where it is present (box plots)."""
    dists = ls.fraction_distributions(table.fraction, table.multi_hot)
    fig = new_figure(9, 4.6)
    ax = fig.subplots()
    y = np.arange(len(table.classes))
    keep = [i for i, d in enumerate(dists) if d.size]
    if keep:
        bp = ax.boxplot([dists[i] for i in keep], positions=y[keep], orientation="horizontal", widths=0.6,
                        patch_artist=True, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
        for patch, i in zip(bp["boxes"], keep):
            patch.set(facecolor=table.palette[i], edgecolor="0.2")
        for med in bp["medians"]:
            med.set(color="black")
    _class_axis(ax, table.classes)
    ax.set_ylim(len(table.classes) - 0.5, -0.5)
    ax.set_xlim(0, 1.12)
    for i, d in enumerate(dists):
        ax.text(1.01, i, f"n={d.size}", va="center", fontsize=ANNOTATION_SIZE)
    t = table.own_thresholds["presence_threshold"]
    ax.axvline(t, color="0.3", ls="--", lw=1)
    ax.set(xlabel=f"fraction of the image's valid pixels (dashed: presence threshold {t:g})",
           title="Label fraction where the class is present")
    return fig


@styled
def season_change_figure(table: LabelTable):
    """Dominant-class transitions between consecutive labelled seasons and per-class gains/losses."""
    order = table.season_order
    s = ls.season_changes(table.multi_hot, table.fraction, order)
    fig = new_figure(13, 5.4)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.1, 1])
    _matrix(ax1, s["dominant_transition_rate"], s["dominant_transitions"], table.classes, "viridis", 0.0, 1.0,
            ".2f", "P(next dominant = column | dominant = row)", fig)
    ax1.set(title=f"Dominant class, season to next season ({s['n_pairs']} pairs)", ylabel="dominant now",
            xlabel="dominant in the next labelled season")
    y = np.arange(len(table.classes))
    h = 0.27
    ax2.barh(y - h, s["kept"], h, color=table.palette, edgecolor="0.3", linewidth=0.5, label="kept")
    ax2.barh(y, s["gains"], h, color="#2c7fb8", label="appears")
    ax2.barh(y + h, s["losses"], h, color="#d95f0e", label="disappears")
    _class_axis(ax2, table.classes)
    ax2.invert_yaxis()
    right = max(1, int(max(s["kept"].max(initial=0), s["gains"].max(initial=0), s["losses"].max(initial=0))))
    ax2.set_xlim(0, right * 1.3)
    for i, a in enumerate(s["always_present"]):
        if np.isfinite(a):
            ax2.text(right * 1.02, i, f"all seasons {a:.0%}", va="center", fontsize=ANNOTATION_SIZE)
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=3)
    ax2.set(xlabel="consecutive season pairs", title="Class kept / appears / disappears")
    dates = " → ".join(table.reference_dates[i] for i in order)
    fig.suptitle(f"Seasons in date order {dates}: {s['changing_share']:.0%} of {s['n_locations']} locations "
                 "change their label set")
    return fig


@styled
def latitude_figure(table: LabelTable, width_deg: float = 15.0):
    """Labelled images per latitude band and the class frequency in each band."""
    b = ls.latitude_bands(table.lat, table.multi_hot, width_deg)
    edges = b["edges"]
    names = [f"{lo:+.0f}° … {hi:+.0f}°" for lo, hi in zip(edges[:-1], edges[1:])]
    fig = new_figure(12, 5.2)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.6])
    y = np.arange(len(names))
    ax1.barh(y, b["n_labelled"], color="#5b7fa6")
    ax1.set_yticks(y, names)
    ax1.set_ylim(-0.5, len(names) - 0.5)
    for yy, n, loc in zip(y, b["n_labelled"], b["n_locations"]):
        if loc:
            ax1.text(n, yy, f" {n} ({loc} loc.)", va="center", fontsize=ANNOTATION_SIZE)
    ax1.set_xlim(0, max(1, int(b["n_labelled"].max(initial=0))) * 1.4)
    ax1.set(xlabel="labelled images", ylabel="latitude band", title="Coverage by latitude")
    im = ax2.imshow(np.ma.masked_invalid(b["frequency"]), aspect="auto", origin="lower",
                    cmap=colormaps["viridis"].with_extremes(bad="0.9"), vmin=0, vmax=1)
    fig.colorbar(im, ax=ax2, label="share of the band's labelled images with the class")
    _class_axis(ax2, table.classes, "x")
    ax2.set_yticks(y, names)
    ax2.set_title("Class frequency by latitude band (grey: no images)")
    return fig


@styled
def world_map_figure(table: LabelTable):
    """Locations on a lon/lat grid (no basemap), coloured by their dominant Dynamic World class."""
    fig = new_figure(11, 5.6)
    ax = fig.subplots()
    dom = table.dominant
    palette = np.asarray(table.palette + ["#ffffff"], dtype=object)
    ax.scatter(table.lon, table.lat, c=list(palette[dom]), s=22, edgecolors="0.15", linewidths=0.4, zorder=3)
    ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude (°)", ylabel="latitude (°)", aspect="equal")
    ax.set_xticks(np.arange(-180, 181, 60))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.grid(alpha=0.35, zorder=0)
    ax.axhline(0, color="0.6", lw=0.8)
    present = [table.classes[i] for i in sorted(set(dom.tolist()) - {-1})]
    handles = dw_legend_handles(present)
    if (dom == -1).any():
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="#ffffff", edgecolor="0.15", label="no labelled season"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), title="dominant class")
    ax.set_title(f"{len(table.lon)} locations, coloured by the class with the largest mean fraction")
    return fig


@styled
def cloud_nodata_figure(table: LabelTable):
    """What is behind the labels: S2 scene cloud cover, share of DW pixels without a label, labelled share."""
    fig = new_figure(12, 4.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    cloud = table.cloud_pct[np.isfinite(table.cloud_pct)]
    ax1.hist(cloud, bins=20, range=(0, max(20.0, float(cloud.max(initial=0)))), color="#8aa8c8", edgecolor="0.3")
    ax1.set(xlabel="scene cloudy-pixel percentage (%)", ylabel="images", title="S2 scene cloud cover")
    nod = table.nodata_share[np.isfinite(table.nodata_share)] * 100
    ax2.hist(nod, bins=20, range=(0, 100), color="#b0b0b0", edgecolor="0.3")
    mvf = table.own_thresholds["min_valid_fraction"]
    ax2.axvline((1 - mvf) * 100, color="#d95f0e", ls="--", lw=1.2, label=f"unlabelled above {(1 - mvf):.0%}")
    ax2.legend(loc="upper right")
    ax2.set(xlabel="label-map pixels without a class (%)", ylabel="images", title="Dynamic World no-data")
    order = table.season_order
    lab = table.labelled[:, order].mean(axis=0) * 100 if len(table.labelled) else np.zeros(len(order))
    x = np.arange(len(order))
    ax3.bar(x, lab, color="#5b7fa6")
    ax3.set_xticks(x, [table.reference_dates[i] for i in order], rotation=20)
    ax3.set_ylim(0, 105)
    for xx, v in zip(x, lab):
        ax3.text(xx, v, f"{v:.0f}%", ha="center", va="bottom", fontsize=ANNOTATION_SIZE)
    ax3.set(ylabel="labelled images (%)", title="Labelled share per season")
    return fig


@styled
def threshold_sweep_figure(table: LabelTable, thresholds: np.ndarray | None = None):
    """Class frequency and labels per image as the presence threshold varies (current one dashed)."""
    t = np.geomspace(1e-3, 0.5, 40) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    sw = ls.threshold_sweep(table.fraction, t)
    fig = new_figure(12, 4.6)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.5, 1])
    for j, name in enumerate(table.classes):
        ax1.plot(t, sw["frequency"][:, j], color=table.palette[j], lw=2, label=pretty(name))
    ax2.plot(t, sw["mean_labels"], color="0.2", lw=2)
    cur = table.own_thresholds["presence_threshold"]
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.axvline(cur, color="0.4", ls="--", lw=1)
        ax.grid(alpha=0.3)
    ax1.set(xlabel="presence threshold (fraction of valid pixels)", ylabel="share of images with the class",
            ylim=(0, 1.02), title=f"Class frequency vs threshold (dashed: {cur:g})")
    ax1.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax2.set(xlabel="presence threshold", ylabel="classes per image",
            title=f"Mean labels per image ({sw['n_images']} images)")
    return fig


@styled
def published_agreement_figure(comparison: dict[str, Any], classes: tuple[str, ...], palette: list[str]):
    """Per-class precision and recall of the archive's own labels against the published ones."""
    fig = new_figure(10, 4.4)
    ax = fig.subplots()
    x = np.arange(len(classes))
    w = 0.38
    ax.bar(x - w / 2, np.nan_to_num(comparison["precision"]), w, color=palette, edgecolor="0.2", label="precision")
    ax.bar(x + w / 2, np.nan_to_num(comparison["recall"]), w, color=palette, edgecolor="0.2", hatch="//",
           label="recall")
    _class_axis(ax, classes, "x")
    ax.set_ylim(0, 1.1)
    ax.legend(loc="upper right", ncols=2)
    ax.set(ylabel="score", title=f"Own labels (fraction > {comparison['presence_threshold']:g}) vs published: "
                                 f"{comparison['n']} images, {comparison['exact']:.0%} identical vectors")
    return fig
