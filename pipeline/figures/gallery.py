"""Patches as pictures: S2 true and false colour, an S1 composite and the Dynamic World map.

Composites (our choices, common practice for Sentinel imagery):

* **S2 true colour** B4/B3/B2 and **false colour** (colour infrared) B8/B4/B3: the archive's DN
  (reflectance × 10000, 0 = no data) are stretched linearly between the 2nd and 98th percentile of
  the clear values (pixels with a Dynamic World class, so bright clouds do not set the range) of the
  three bands together (one range for all three, so colours keep their balance), then clipped to
  [0, 1]. A fixed divisor (e.g. /3000) leaves most scenes dark; the percentile stretch adapts to each
  patch.
* **S1** R = VV, G = VH, B = VV/VH (the ratio, i.e. VV − VH in dB), each band stretched between its
  own 2nd and 98th percentile; no-data (NaN) pixels are black.
* **Dynamic World**: class colours of :data:`pipeline.bands.DW_PALETTE`, white for pixels without a
  label, with a legend.

:func:`find_patches` selects locations by the classes present in their multi-hot vectors.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.figures.label_data import LabelTable
from pipeline.figures.style import (
    dw_legend_handles,
    dw_lookup_table,
    new_figure,
    styled,
)

TRUE_COLOUR = ("B4", "B3", "B2")
FALSE_COLOUR = ("B8", "B4", "B3")
STRETCH_PERCENTILES = (2.0, 98.0)


def percentile_stretch(values: np.ndarray, valid: np.ndarray | None = None,
                       percentiles: tuple[float, float] = STRETCH_PERCENTILES,
                       reference: np.ndarray | None = None) -> np.ndarray:
    """``values`` scaled linearly so that its ``percentiles`` map to 0 and 1, clipped; invalid → 0.

    The percentiles are taken over the valid entries selected by ``reference`` too (e.g. the clear
    pixels, so bright clouds do not set the range of a dark scene), over all valid entries when
    ``reference`` is None or selects none.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) if valid is None else (valid & np.isfinite(v))
    if not ok.any():
        return np.zeros_like(v)
    ref = ok if reference is None else (ok & reference)
    lo, hi = np.percentile(v[ref if ref.any() else ok], percentiles)
    out = np.clip((v - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    out[~ok] = 0.0
    return out


def s2_composite(image: np.ndarray, bands: Sequence[str], rgb: Sequence[str] = TRUE_COLOUR,
                 clear: np.ndarray | None = None) -> np.ndarray:
    """``(H, W, 3)`` float RGB in [0, 1] from an S2 ``(band, H, W)`` DN array (module docstring);
    ``clear`` (``(H, W)`` bool, e.g. pixels with a Dynamic World label) restricts the stretch range.
    """
    bands = list(bands)
    missing = [b for b in rgb if b not in bands]
    if missing:
        raise KeyError(f"bands {missing} not among {bands}")
    stack = np.stack([np.asarray(image[bands.index(b)], dtype=np.float64) for b in rgb], axis=-1)
    valid = (stack > 0).all(axis=-1, keepdims=True) & np.ones_like(stack, dtype=bool)
    ref = None if clear is None else np.broadcast_to(np.asarray(clear, dtype=bool)[..., None], stack.shape)
    return percentile_stretch(stack, valid, reference=ref)


def s1_composite(vv_db: np.ndarray, vh_db: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB: VV, VH and VV/VH (dB difference), each percentile-stretched; NaN pixels black."""
    vv, vh = np.asarray(vv_db, dtype=np.float64), np.asarray(vh_db, dtype=np.float64)
    ok = np.isfinite(vv) & np.isfinite(vh)
    return np.stack([percentile_stretch(c, ok) for c in (vv, vh, vv - vh)], axis=-1)


def dw_rgb(label_map: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB of a Dynamic World label map in the DW palette (no label: white)."""
    return dw_lookup_table()[np.asarray(label_map, dtype=np.uint8)]


def find_patches(table: LabelTable, with_labels: Sequence[str] = (), without: Sequence[str] = (),
                 season: int | None = None, all_seasons: bool = False) -> np.ndarray:
    """Archive patch indices of the locations whose labels match a query.

    An image (location, season) matches when every class of ``with_labels`` is present and no class of
    ``without`` is. A location matches when one of its seasons does (``season`` given: that season;
    ``all_seasons``: every labelled season, and it has one). Unknown class names raise
    :class:`~pipeline.errors.BadInput`.

    Example: ``find_patches(table, with_labels=["water", "built"], without=["snow_and_ice"])``.
    """
    mh = table.multi_hot.astype(bool)
    want = [table.class_index(c) for c in with_labels]
    avoid = [table.class_index(c) for c in without]
    ok = mh[..., want].all(axis=-1) & ~mh[..., avoid].any(axis=-1) & mh.any(axis=-1)  # (P, S)
    if season is not None:
        hit = ok[:, season]
    elif all_seasons:
        lab = mh.any(axis=-1)
        hit = (ok | ~lab).all(axis=1) & lab.any(axis=1)
    else:
        hit = ok.any(axis=1)
    return table.patch_index[hit]


def _class_list(classes: Sequence[str], multi_hot: np.ndarray, width: int = 34) -> str:
    """Short names of the classes present (first word), wrapped to ``width`` characters."""
    names = ", ".join(classes[k].split("_")[0] for k in np.flatnonzero(multi_hot)) or "unlabelled"
    return textwrap.fill(names, width)


def _s2_modality(group) -> str | None:
    names = group.attrs.get("band_names", {})
    return next((m for m in ("s2_l1c", "s2_l2a") if m in names), None)


@styled
def patch_seasons_figure(store: str, patch: int, storage_options: dict | None = None):
    """One location, its seasons in date order as columns; rows S2 true colour, S2 false colour
    (B8/B4/B3), S1 VV/VH/ratio and the Dynamic World map with a legend. ``patch`` is an archive index.
    """
    from pipeline.archive import Archive

    group = Archive.of(store, storage_options).open()
    dates = [str(d) for d in group["reference_date"][:]]
    order = np.argsort(np.asarray(dates, dtype=str), kind="stable")
    s2 = _s2_modality(group)
    dw = np.asarray(group["dw_label"][patch])
    clear = dw != LABEL_NODATA  # (S, y, x): Dynamic World has a class where the scene is clear
    rows = []
    if s2:
        s2_bands = list(group.attrs["band_names"][s2])
        img = np.asarray(group[s2][patch])  # (S, band, y, x)
        rows += [("S2 true colour\nB4/B3/B2", [s2_composite(img[s], s2_bands, clear=clear[s])
                                               for s in range(len(dates))])]
        if all(b in s2_bands for b in FALSE_COLOUR):
            rows += [("S2 false colour\nB8/B4/B3", [s2_composite(img[s], s2_bands, FALSE_COLOUR, clear[s])
                                                    for s in range(len(dates))])]
    if "s1_grd" in group:
        s1_bands = list(group.attrs["band_names"]["s1_grd"])
        sar = np.asarray(group["s1_grd"][patch])
        if {"VV", "VH"} <= set(s1_bands):
            vv, vh = s1_bands.index("VV"), s1_bands.index("VH")
            rows += [("S1 VV/VH/ratio", [s1_composite(sar[s, vv], sar[s, vh]) for s in range(len(dates))])]
    rows += [("Dynamic World", [dw_rgb(dw[s]) for s in range(len(dates))])]
    classes = tuple(str(c) for c in group.attrs.get("class_names", DW_CLASSES))
    mh = np.asarray(group["multi_hot"][patch])
    cloud = np.asarray(group["cloud_pct"][patch])  # (S, modality)
    modalities = [str(m) for m in group["modality"][:]]
    fig = new_figure(2.3 * len(dates) + 1.2, 2.35 * len(rows) + 1.0)
    axes = fig.subplots(len(rows), len(dates), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c, s in enumerate(order):
            ax = axes[r, c]
            ax.imshow(images[s], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                cc = cloud[s, modalities.index(s2)] if s2 else np.nan
                ax.set_title(f"{dates[s]}" + (f"\ncloud {cc:.0f}%" if np.isfinite(cc) else ""), fontsize=9)
            if r == len(rows) - 1:
                nod = float((dw[s] == LABEL_NODATA).mean())
                ax.set_xlabel(f"{_class_list(classes, mh[s])}\nno label {nod:.0%}", fontsize=8)
    fig.legend(handles=dw_legend_handles(classes, nodata=True), loc="outside lower center", ncols=5, fontsize=8)
    pid = str(group["patch_id"][patch])
    fig.suptitle(f"location {pid} ({float(group['lat'][patch]):.2f}°, {float(group['lon'][patch]):.2f}°)"
                 + (f", {group['city'][patch]}" if "city" in group and str(group["city"][patch]) else ""))
    return fig


@styled
def gallery_figure(store: str, patches: Sequence[int], season: int = 0, storage_options: dict | None = None):
    """Several locations in one season: a row per location with S2 true colour, false colour, S1 and DW."""
    from pipeline.archive import Archive

    group = Archive.of(store, storage_options).open()
    s2 = _s2_modality(group)
    s2_bands = list(group.attrs["band_names"][s2]) if s2 else []
    s1_bands = list(group.attrs["band_names"].get("s1_grd", []))
    classes = tuple(str(c) for c in group.attrs.get("class_names", DW_CLASSES))
    cols = (["S2 true colour", "S2 false colour"] if s2 else []) + (["S1 VV/VH/ratio"] if s1_bands else []) \
        + ["Dynamic World"]
    fig = new_figure(2.4 * len(cols) + 0.4, 2.4 * max(1, len(patches)) + 1.0)
    axes = fig.subplots(max(1, len(patches)), len(cols), squeeze=False)
    date = str(group["reference_date"][season])
    for r, p in enumerate(patches):
        images = []
        dw = np.asarray(group["dw_label"][p, season])
        if s2:
            img = np.asarray(group[s2][p, season])
            clear = dw != LABEL_NODATA
            images += [s2_composite(img, s2_bands, clear=clear), s2_composite(img, s2_bands, FALSE_COLOUR, clear)]
        if s1_bands:
            sar = np.asarray(group["s1_grd"][p, season])
            images.append(s1_composite(sar[s1_bands.index("VV")], sar[s1_bands.index("VH")]))
        images.append(dw_rgb(dw))
        present_mh = np.asarray(group["multi_hot"][p, season])
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=10)
        axes[r, 0].set_ylabel(str(group["patch_id"][p]), fontsize=9)
        axes[r, -1].set_xlabel(_class_list(classes, present_mh), fontsize=8)
    fig.legend(handles=dw_legend_handles(classes, nodata=True), loc="outside lower center", ncols=5, fontsize=8)
    fig.suptitle(f"{len(patches)} locations, season {date}")
    return fig
