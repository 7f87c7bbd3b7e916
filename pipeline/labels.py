"""Per-image multi-label vectors from Dynamic World label maps (the SSL4EO-S12-ML curation step).

For one label map ``L`` (a ``(y, x)`` array of DW class indices 0..K-1, K = 9, and ``nodata`` = 255
for clouds, shadows and pixels outside the product) with ``H * W`` pixels::

    c_k      = #{pixels p : L[p] == k}                  for k = 0..K-1
    n_valid  = sum_k c_k                                 (pixels that are not nodata)
    labelled = n_valid > 0  and  n_valid / (H * W) >= min_valid_fraction
    f_k      = c_k / n_valid   if labelled, else 0       -> label_fraction
    m_k      = 1 if f_k > presence_threshold, else 0     -> multi_hot

* ``label_fraction`` (float32, ``f``): share of the *valid* pixels in each class; sums to 1 for a
  labelled row and is all 0 for an unlabelled one.
* ``multi_hot`` (uint8, ``m``): a class is present when its fraction is strictly greater than the
  threshold. The comparison is done in float64 (``c_k / n_valid``) before ``f`` is rounded to
  float32.
* **Unlabelled rows** (fewer than ``min_valid_fraction`` of the pixels are valid, or none at all) get
  an all-zero fraction vector and an all-zero multi-hot. In the SSL4EO-S12-ML JSON this is the
  empty class list ("no label for this image").

Thresholds are **our documented choice**, not the published one: in SSL4EO-S12-ML a class is
taken to be present when its pixel count or fraction passes a threshold, but the rule and its value
are not published with the labels (github.com/zhu-xlab/softcon), so this is our choice. The defaults (``presence_threshold = 0.01``, i.e.
a class must cover more than 1 % of the valid pixels, and ``min_valid_fraction = 0.1``) come from
:class:`pipeline.manifest.LabelsConfig`, where they are explained.

Computation: :func:`label_vectors` works on any leading dims. For up to 32 classes (Dynamic World
has 9) it counts each map by one comparison per class, the map staying in cache; for more, with one
``np.bincount`` over the whole batch (bin ``map_index * (K + 1) + class``, nodata in slot ``K``).
:func:`label_vectors_dask` applies it per chunk with ``map_blocks`` (chunks hold whole maps).
:func:`compute_archive_labels` streams it over a Zarr archive, and :func:`summary_statistics`
reduces the stored multi-hot vectors (and fractions, for the mean) with Dask.

A patch-season counts as *labelled* in the statistics and counts when at least one class is
present in its multi-hot vector. With any threshold below 1/K (the default included) every labelled
row has one, so this equals the ``min_valid_fraction`` rule.

**Label provenance.** An archive's label vectors may be rewritten after curation, with other
thresholds (:func:`relabel_archive`, ``softcon labels``) or from the published file
(:func:`pipeline.published_labels.import_published_labels`, ``softcon import-labels``). The root
attribute ``label_provenance`` is the one record of how the current vectors were made::

    {"source": "curation" | "relabel" | "published",
     "presence_threshold": float | None, "min_valid_fraction": float | None,
     "updated": "<UTC ISO time>", "history": [previous records, oldest first], ...details}

The template writes the ``curation`` record (the manifest's ``labels`` thresholds); every later
writer calls :func:`update_label_provenance`, which moves the current record (without its own
``history``) to the end of ``history`` and sets the new one, and mirrors the thresholds into the
``multi_hot`` attributes. A ``published`` record has ``None`` thresholds (the published rule is
unknown) and the details ``file``, ``sha256`` and ``matched`` (patch-seasons replaced): the other
patch-seasons keep the vectors of the previous record (the last ``history`` entry). Patches curated
after a rewrite get the manifest's thresholds again (the curation code does not update the record).
Archives written before the record existed get one rebuilt from their older attributes by
:func:`read_label_provenance` (marked ``"reconstructed": true``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from pipeline.archive import Archive
from pipeline.bands import DW_CLASSES, DW_PALETTE, LABEL_NODATA
from pipeline.manifest import LabelsConfig
from pipeline.store import STATUS_DONE

__all__ = [
    "STATUS_DONE", "label_vectors", "label_vectors_dask", "compute_archive_labels", "relabel_archive", "label_summary",
    "summary_statistics", "plot_class_frequencies", "plot_cooccurrence", "LABEL_PROVENANCE_ATTR",
    "provenance_record", "read_label_provenance", "update_label_provenance",
]

#: Root attribute holding the label-provenance record (see the module docstring).
LABEL_PROVENANCE_ATTR = "label_provenance"
PROVENANCE_SOURCES = ("curation", "relabel", "published")

_LABEL_DIMS = ("patch", "season", "y", "x")
_VECTOR_DIMS = ("patch", "season", "class")


# --------------------------------------------------------------------------- numpy core
def _check_params(n_classes: int, nodata: int, presence_threshold: float, min_valid_fraction: float) -> None:
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if 0 <= nodata < n_classes:
        raise ValueError(f"nodata value {nodata} collides with class indices 0..{n_classes - 1}")
    if not 0 <= presence_threshold < 1:
        raise ValueError(f"presence_threshold must be in [0, 1), got {presence_threshold}")
    if not 0 <= min_valid_fraction <= 1:
        raise ValueError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")


def _check_maps(maps: Any) -> Any:
    """``maps`` (numpy or Dask) if it is a stack ``(..., y, x)`` of integer label maps; else raise."""
    if maps.ndim < 2:
        raise ValueError(f"label maps need at least 2 dims (..., y, x), got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.integer):
        raise TypeError(f"label maps must have an integer dtype, got {maps.dtype}")
    return maps


def label_vectors(
    label_maps: np.ndarray,
    n_classes: int = len(DW_CLASSES),
    nodata: int = LABEL_NODATA,
    presence_threshold: float = 0.01,
    min_valid_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Class fractions and multi-hot vectors of a batch of label maps.

    ``label_maps`` has shape ``(..., y, x)`` with any leading dims (e.g. ``(patch, season, y, x)``)
    and an integer dtype (uint8 in the archive). Returns ``(fractions, multi_hot)`` of shape
    ``(..., n_classes)``, float32 and uint8 (formulas in the module docstring).

    Raises ``ValueError`` naming the offending value(s) when a pixel is neither a class index
    ``0..n_classes-1`` nor ``nodata``, and ``TypeError`` for non-integer input.
    """
    _check_params(n_classes, nodata, presence_threshold, min_valid_fraction)
    a = _check_maps(np.asarray(label_maps))
    lead = a.shape[:-2]
    n_maps = math.prod(lead)
    n_pix = a.shape[-2] * a.shape[-1]

    if n_classes <= _FEW_CLASSES:
        class_counts = _few_class_counts(a.reshape(n_maps, n_pix), n_classes, nodata)
    else:
        class_counts = _general_class_counts(a.reshape(n_maps, n_pix), n_classes, nodata)
    n_valid = class_counts.sum(axis=1)
    labelled = (n_valid > 0) & (n_valid >= min_valid_fraction * n_pix)
    frac64 = np.zeros(class_counts.shape, dtype=np.float64)
    np.divide(class_counts, n_valid[:, None], out=frac64, where=labelled[:, None])
    multi_hot = (frac64 > presence_threshold).astype(np.uint8)  # unlabelled rows: frac64 == 0
    fractions = frac64.astype(np.float32)
    return fractions.reshape(*lead, n_classes), multi_hot.reshape(*lead, n_classes)


def _bad_values_error(values: np.ndarray, n_classes: int, nodata: int) -> ValueError:
    shown = ", ".join(str(v) for v in values[:10]) + (", …" if values.size > 10 else "")
    return ValueError(f"label value(s) {shown} outside the class indices 0..{n_classes - 1} "
                      f"and not the nodata value {nodata}")


_FEW_CLASSES = 32  # up to this many classes, counting by comparison beats np.bincount


def _few_class_counts(maps: np.ndarray, n_classes: int, nodata: int) -> np.ndarray:
    """Per-map class counts of ``maps`` ``(n, pixels)`` by one comparison per class and map.

    Each map stays in cache while its ``n_classes + 1`` comparisons run, with no widening of the
    pixels to 64-bit indices as ``np.bincount`` needs: 1.5–2.7× faster than a bincount per map
    for Dynamic World's 9 classes (benchmarks/bench_curation.py). Pixels that are neither a class
    nor ``nodata`` show up as a shortfall of the counts and are then named.
    """
    n, n_pix = maps.shape
    counts = np.empty((n, n_classes), dtype=np.int64)
    for i in range(n):
        m = maps[i]
        for c in range(n_classes):
            counts[i, c] = np.count_nonzero(m == c)
        if int(counts[i].sum()) + np.count_nonzero(m == nodata) != n_pix:
            values = np.unique(m)
            bad = values[((values < 0) | (values >= n_classes)) & (values != nodata)]
            raise _bad_values_error(bad, n_classes, nodata)
    return counts


def _general_class_counts(maps: np.ndarray, n_classes: int, nodata: int) -> np.ndarray:
    """Per-map class counts for any integer dtype: offsets per map, one bincount over the batch."""
    n_maps = maps.shape[0]
    n_slots = n_classes + 1  # classes 0..K-1, then nodata in slot K
    codes = maps.astype(np.intp)  # always a fresh copy, modified in place below
    is_nodata = codes == nodata
    bad = ~is_nodata & ((codes < 0) | (codes >= n_classes))
    if bad.any():
        raise _bad_values_error(np.unique(codes[bad]), n_classes, nodata)
    codes[is_nodata] = n_classes
    codes += (np.arange(n_maps, dtype=np.intp) * n_slots)[:, None]
    counts = np.bincount(codes.ravel(), minlength=n_maps * n_slots).reshape(n_maps, n_slots)
    return counts[:, :n_classes]


# --------------------------------------------------------------------------- dask
def _vectors_block(block: np.ndarray, n_classes: int, nodata: int,
                   presence_threshold: float, min_valid_fraction: float) -> np.ndarray:
    frac, mh = label_vectors(block, n_classes, nodata, presence_threshold, min_valid_fraction)
    return np.concatenate([frac, mh.astype(np.float32)], axis=-1)


def label_vectors_dask(
    dw_label: da.Array,
    n_classes: int = len(DW_CLASSES),
    nodata: int = LABEL_NODATA,
    presence_threshold: float = 0.01,
    min_valid_fraction: float = 0.1,
) -> tuple[da.Array, da.Array]:
    """Lazy :func:`label_vectors` over a Dask array ``(..., y, x)``, one task per chunk.

    Chunks must hold whole maps; ``y``/``x`` are rechunked to a single chunk when they are not.
    The outputs ``(..., n_classes)`` (float32 fractions, uint8 multi-hot) keep the input chunking
    along the leading dims, with the class axis in one chunk. Each chunk is counted once: the
    block function returns fractions and multi-hot side by side and the two are sliced apart.
    """
    _check_params(n_classes, nodata, presence_threshold, min_valid_fraction)
    x = _check_maps(dw_label if isinstance(dw_label, da.Array) else da.asarray(dw_label))
    nd = x.ndim
    if len(x.chunks[-1]) != 1 or len(x.chunks[-2]) != 1:
        x = x.rechunk({nd - 2: -1, nd - 1: -1})
    # The x axis is dropped and the (single-chunk) y axis becomes the 2K-long value axis.
    both = x.map_blocks(
        _vectors_block,
        n_classes, nodata, presence_threshold, min_valid_fraction,
        drop_axis=nd - 1,
        chunks=x.chunks[:-2] + ((2 * n_classes,),),
        dtype=np.float32,
        meta=np.empty((0,) * (nd - 1), dtype=np.float32),
    )
    fractions = both[..., :n_classes]
    multi_hot = both[..., n_classes:].astype(np.uint8)
    return fractions, multi_hot


# --------------------------------------------------------------------------- provenance
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _threshold(value: Any) -> float | None:
    return None if value is None else float(value)


def provenance_record(source: str, presence_threshold: float | None, min_valid_fraction: float | None,
                      updated: str | None = None, history: list[dict] | None = None, **details: Any) -> dict[str, Any]:
    """One label-provenance record (module docstring); ``updated`` defaults to now (UTC).

    ``details`` are extra JSON values (e.g. the published file's name and sha256).
    """
    if source not in PROVENANCE_SOURCES:
        raise ValueError(f"label provenance source must be one of {PROVENANCE_SOURCES}, got {source!r}")
    return {"source": source, "presence_threshold": _threshold(presence_threshold),
            "min_valid_fraction": _threshold(min_valid_fraction), "updated": updated or _now(),
            "history": [dict(h) for h in (history or [])], **details}


def _reconstructed(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """A record for an archive written before ``label_provenance`` existed, from its older attributes:
    the manifest's thresholds at creation, then ``labels_recomputed`` and ``published_labels`` in time
    order (each of those only tells the *last* run of its kind). None without any of them."""
    steps: list[dict[str, Any]] = []
    labels = attrs.get("manifest", {}).get("labels") if isinstance(attrs.get("manifest"), dict) else None
    if isinstance(labels, dict):
        cfg = LabelsConfig.model_validate(labels)
        steps.append(provenance_record("curation", cfg.presence_threshold, cfg.min_valid_fraction,
                                       updated=str(attrs.get("created") or ""), reconstructed=True))
    later = []
    rec = attrs.get("labels_recomputed")
    if isinstance(rec, dict):
        later.append(provenance_record("relabel", rec.get("presence_threshold"), rec.get("min_valid_fraction"),
                                       updated=str(rec.get("at") or ""), reconstructed=True))
    pub = attrs.get("published_labels")
    if isinstance(pub, dict):
        later.append(provenance_record("published", None, None, updated=str(pub.get("imported") or ""),
                                       reconstructed=True, file=pub.get("file"), sha256=pub.get("sha256")))
    steps += sorted(later, key=lambda r: r["updated"])  # ISO UTC times of one format sort as strings
    if not steps:
        return None
    for r in steps:
        r.pop("history")
    current = steps[-1]
    current["history"] = steps[:-1]
    return current


def read_label_provenance(group: zarr.Group) -> dict[str, Any] | None:
    """The archive's label-provenance record: the ``label_provenance`` attribute, or one rebuilt from the
    older attributes for an archive written before it existed (None when nothing is known)."""
    attrs = dict(group.attrs)
    current = attrs.get(LABEL_PROVENANCE_ATTR)
    if isinstance(current, dict):
        return current
    return _reconstructed(attrs)


def update_label_provenance(group: zarr.Group, source: str, presence_threshold: float | None,
                            min_valid_fraction: float | None, **details: Any) -> dict[str, Any]:
    """Set a new label-provenance record (after the vectors are written); the current record, without its
    ``history``, is appended to the history. The thresholds are mirrored into the ``multi_hot``
    attributes. Returns the new record."""
    previous = read_label_provenance(group)
    history: list[dict[str, Any]] = []
    if previous is not None:
        previous = dict(previous)
        history = list(previous.pop("history", []) or []) + [previous]
    record = provenance_record(source, presence_threshold, min_valid_fraction, history=history, **details)
    group.attrs[LABEL_PROVENANCE_ATTR] = record
    if "multi_hot" in group:
        group["multi_hot"].attrs.update({"presence_threshold": record["presence_threshold"],
                                         "min_valid_fraction": record["min_valid_fraction"],
                                         "provenance": f"root attribute {LABEL_PROVENANCE_ATTR}"})
    return record


# --------------------------------------------------------------------------- archive
def _check_group_layout(group: zarr.Group) -> int:
    """Check the archive's label variables and dims; returns the number of classes."""
    for name, dims in (("dw_label", _LABEL_DIMS), ("label_fraction", _VECTOR_DIMS),
                       ("multi_hot", _VECTOR_DIMS), ("status", ("patch",))):
        if name not in group:
            raise ValueError(f"archive has no variable {name!r}")
        found = tuple(group[name].metadata.dimension_names or ())
        if found != dims:
            raise ValueError(f"archive variable {name!r} has dims {found}, expected {dims}")
    n_classes = int(group["label_fraction"].shape[-1])
    if "class" in group and [str(c) for c in group["class"][:]] != list(DW_CLASSES)[:n_classes]:
        raise ValueError(f"archive class coordinate {list(group['class'][:])} is not the DW order {list(DW_CLASSES)}")
    return n_classes


def _write_chunk_len(arr) -> int:
    """Patch-axis length of one independently writable unit (a shard if sharded, else a chunk)."""
    shards = getattr(arr, "shards", None)
    return int((shards or arr.chunks)[0])


# Chunks decoded per batch by zarr's codec pipeline (its default, 1, decodes a shard's inner chunks one
# by one); 64 = a 16-patch shard's 4 seasons. Measured 25–40 % faster shard reads here.
#: Chunks zarr decodes per batch when the label step reads maps (zarr's ``codec_pipeline.batch_size``).
CODEC_BATCH = 64


def _label_region(dw: da.Array, frac_arr: zarr.Array, mh_arr: zarr.Array, p0: int, p1: int, sel: np.ndarray,
                  n_classes: int, nodata: int, presence_threshold: float, min_valid_fraction: float) -> int:
    """Label vectors of the done patches ``sel`` in ``[p0, p1)``, written as one region; returns the
    number of labelled patch-seasons. Patches that are not done keep their stored vectors."""
    block = dw[p0:p1] if sel.size == p1 - p0 else dw[sel]
    frac_d, mh_d = label_vectors_dask(block, n_classes, nodata, presence_threshold, min_valid_fraction)
    frac_new, mh_new = dask.compute(frac_d, mh_d)
    if sel.size == p1 - p0:
        frac_blk, mh_blk = frac_new, mh_new
    else:
        frac_blk = np.asarray(frac_arr[p0:p1])
        mh_blk = np.asarray(mh_arr[p0:p1])
        frac_blk[sel - p0] = frac_new
        mh_blk[sel - p0] = mh_new
    frac_arr[p0:p1] = frac_blk.astype(frac_arr.dtype, copy=False)
    mh_arr[p0:p1] = mh_blk.astype(mh_arr.dtype, copy=False)
    return int(mh_new.any(axis=-1).sum())


def compute_archive_labels(
    store: str,
    presence_threshold: float = 0.01,
    min_valid_fraction: float = 0.1,
    nodata: int = LABEL_NODATA,
    batch_patches: int = 256,
    storage_options: dict[str, Any] | None = None,
    on_region: Callable[[int, int], None] | None = None,
    provenance_source: str = "relabel",
) -> dict[str, int]:
    """Compute and store ``label_fraction`` / ``multi_hot`` for every *done* patch of an archive.

    The archive is processed in patch batches aligned to the write chunks (shards) of the two
    output arrays and at least ``batch_patches`` long. In each batch the ``dw_label`` chunks of the
    done patches are turned into label vectors with :func:`label_vectors_dask` (one Dask task per
    chunk, on the current Dask scheduler) and the batch's region is written with zarr. Patches
    that are not done keep their stored vectors. Memory stays at one batch of label vectors plus
    the chunks in flight; ``dw_label`` is never loaded whole.

    Returns counts: ``patches``, ``patches_done``, ``patches_skipped`` (not done),
    ``patch_seasons_labelled`` / ``patch_seasons_unlabelled`` (over done patches) and
    ``regions_written``. ``on_region(patches_through, n_patches)`` is called after each region
    (e.g. to advance a progress bar). Once every region is written, the thresholds are recorded as the
    archive's label provenance (:func:`update_label_provenance`, source ``provenance_source``).
    """
    if batch_patches < 1:
        raise ValueError(f"batch_patches must be >= 1, got {batch_patches}")
    group = Archive.of(store, storage_options).open("r+")
    n_classes = _check_group_layout(group)
    _check_params(n_classes, nodata, presence_threshold, min_valid_fraction)
    status = np.asarray(group["status"][:])
    n_patch = status.shape[0]
    n_seasons = int(group["dw_label"].shape[1])
    done = np.flatnonzero(status == STATUS_DONE)

    frac_arr, mh_arr = group["label_fraction"], group["multi_hot"]
    # Read dw_label one shard (or chunk) per Dask task: zarr then fetches each shard in one request
    # instead of decoding its inner chunks one task at a time.
    dw_arr = group["dw_label"]
    read_unit = _write_chunk_len(dw_arr)
    dw = da.from_zarr(dw_arr, chunks=(read_unit,) + tuple(dw_arr.shape[1:]))
    unit = math.lcm(read_unit, _write_chunk_len(frac_arr), _write_chunk_len(mh_arr))
    step = unit * max(1, -(-batch_patches // unit))

    n_labelled = n_regions = 0
    with zarr.config.set({"codec_pipeline.batch_size": CODEC_BATCH}):
        for p0 in range(0, n_patch, step):
            p1 = min(p0 + step, n_patch)
            sel = done[(done >= p0) & (done < p1)]
            if sel.size:
                n_labelled += _label_region(dw, frac_arr, mh_arr, p0, p1, sel, n_classes, nodata,
                                            presence_threshold, min_valid_fraction)
                n_regions += 1
            if on_region is not None:
                on_region(p1, n_patch)

    # reopened: the attributes are rewritten whole, so start from what is on disk now
    update_label_provenance(Archive.of(store, storage_options).open("r+"), provenance_source, presence_threshold,
                            min_valid_fraction)
    n_done_ps = int(done.size) * n_seasons
    return {
        "patches": int(n_patch),
        "patches_done": int(done.size),
        "patches_skipped": int(n_patch - done.size),
        "patch_seasons_labelled": n_labelled,
        "patch_seasons_unlabelled": n_done_ps - n_labelled,
        "regions_written": n_regions,
    }


def relabel_archive(
    store: str,
    presence_threshold: float | None = None,
    min_valid_fraction: float | None = None,
    batch_patches: int = 256,
    storage_options: dict[str, Any] | None = None,
    on_region: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """:func:`compute_archive_labels` with the archive's own thresholds (its manifest's ``labels``
    section) unless others are given; the thresholds used become the archive's ``label_provenance``
    record (source ``relabel``, the previous record moved to its history), after the vectors are
    written. The older attribute ``labels_recomputed`` (thresholds and time of the last run) is still
    written for readers of older archives. Returns the counts plus the thresholds. Patches curated
    later get the manifest's thresholds again.
    """
    group = Archive.of(store, storage_options).open("r+")
    stored = LabelsConfig.model_validate(group.attrs.get("manifest", {}).get("labels", {}))
    used = {
        "presence_threshold": float(stored.presence_threshold if presence_threshold is None else presence_threshold),
        "min_valid_fraction": float(stored.min_valid_fraction if min_valid_fraction is None else min_valid_fraction),
    }
    counts = compute_archive_labels(store, batch_patches=batch_patches, storage_options=storage_options,
                                    on_region=on_region, provenance_source="relabel", **used)
    group = Archive.of(store, storage_options).open("r+")  # reopened: the attributes changed meanwhile
    group.attrs["labels_recomputed"] = {**used, "at": group.attrs[LABEL_PROVENANCE_ATTR]["updated"]}
    return {**counts, **used}


# --------------------------------------------------------------------------- statistics
def summary_statistics(store: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Label statistics over the done patches of an archive, reduced with Dask (streaming).

    Returned keys (K = number of classes; "labelled" = at least one class present):

    ``classes``, ``palette``
        Class names and DW colours.
    ``n_patches_done``, ``n_patch_seasons``
        Done patches and their patch-seasons (done × seasons).
    ``n_labelled``
        Labelled patch-seasons.
    ``class_counts`` (K,)
        Labelled patch-seasons where each class is present.
    ``class_frequency`` (K,)
        ``class_counts / n_labelled``.
    ``mean_class_fraction`` (K,)
        Mean of ``label_fraction`` over the labelled patch-seasons.
    ``cooccurrence`` (K, K)
        ``C[i, j]`` = patch-seasons where classes i and j are both present (diagonal = class counts).
    ``cooccurrence_normalized`` (K, K)
        ``C[i, j] / C[i, i]`` = P(j present | i present); NaN rows for classes never present.
    ``labels_per_image`` (K + 1,)
        Number of done patch-seasons with exactly k classes present (k = 0 is unlabelled).
    ``mean_labels_per_labelled_image``
        Mean number of classes over the labelled patch-seasons.

    Ratios with a zero denominator are NaN.
    """
    group = Archive.of(store, storage_options).open("r")
    n_classes = _check_group_layout(group)
    status = np.asarray(group["status"][:])
    done = np.flatnonzero(status == STATUS_DONE)
    mh = da.from_zarr(group["multi_hot"])[done].astype(np.int64)  # (p, s, K)
    frac = da.from_zarr(group["label_fraction"])[done].astype(np.float64)

    n_lab_per = mh.sum(axis=-1)  # (p, s)
    labelled = n_lab_per > 0
    (n_labelled, class_counts, frac_sum, cooc, per_k) = dask.compute(
        labelled.sum(),
        mh.sum(axis=(0, 1)),
        da.where(labelled[..., None], frac, 0.0).sum(axis=(0, 1)),
        da.tensordot(mh, mh, axes=([0, 1], [0, 1])),
        (n_lab_per[..., None] == np.arange(n_classes + 1)).sum(axis=(0, 1)),
    )
    n_labelled = int(n_labelled)
    class_counts = np.asarray(class_counts, dtype=np.int64)
    cooc = np.asarray(cooc, dtype=np.int64)
    per_k = np.asarray(per_k, dtype=np.int64)

    def ratio(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
        num = np.asarray(num, dtype=np.float64)
        den = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
        out = np.full(num.shape, np.nan)
        np.divide(num, den, out=out, where=den > 0)
        return out

    diag = np.diag(cooc)
    return {
        "classes": list(DW_CLASSES)[:n_classes],
        "palette": list(DW_PALETTE)[:n_classes],
        "n_patches_done": int(done.size),
        "n_patch_seasons": int(done.size) * int(group["multi_hot"].shape[1]),
        "n_labelled": n_labelled,
        "class_counts": class_counts,
        "class_frequency": ratio(class_counts, n_labelled),
        "mean_class_fraction": ratio(np.asarray(frac_sum), n_labelled),
        "cooccurrence": cooc,
        "cooccurrence_normalized": ratio(cooc, diag[:, None]),
        "labels_per_image": per_k,
        "mean_labels_per_labelled_image": float(ratio(np.dot(np.arange(n_classes + 1), per_k), n_labelled)),
    }


def label_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of :func:`summary_statistics` for an archive summary (``softcon inspect``):
    ``labelled_images`` and ``class_frequency`` by class name (0.0 when nothing is labelled)."""
    freq = np.nan_to_num(np.asarray(stats["class_frequency"], dtype=np.float64), nan=0.0)
    return {"labelled_images": int(stats["n_labelled"]),
            "class_frequency": {c: float(f) for c, f in zip(stats["classes"], freq)}}


# --------------------------------------------------------------------------- plots
def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    return fig


def plot_class_frequencies(stats: dict[str, Any], path_png: str) -> str:
    """Bar charts of class frequency and mean class fraction, in the DW palette; writes a PNG."""
    classes = list(stats["classes"])
    colours = list(stats.get("palette", DW_PALETTE))[: len(classes)]
    fig = _figure((10, 4))
    axes = fig.subplots(1, 2)
    panels = (
        ("class_frequency", "Share of labelled images where present"),
        ("mean_class_fraction", "Mean fraction of valid pixels"),
    )
    ypos = np.arange(len(classes))
    for ax, (key, title) in zip(axes, panels):
        values = np.nan_to_num(np.asarray(stats[key], dtype=np.float64))
        ax.barh(ypos, values, color=colours, edgecolor="0.3", linewidth=0.5)
        ax.set_yticks(ypos, classes)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1e-9, float(values.max(initial=0))) * 1.15)
        ax.set_title(title, fontsize=10)
        for y, v in zip(ypos, values):
            ax.text(v, y, f" {v:.1%}", va="center", fontsize=8)
    fig.suptitle(f"Dynamic World classes over {stats['n_labelled']} labelled patch-seasons")
    fig.savefig(path_png, dpi=100)
    return str(path_png)


def plot_cooccurrence(stats: dict[str, Any], path_png: str) -> str:
    """Heat map of P(column class present | row class present), DW colours on the axes; writes a PNG."""
    from matplotlib.patches import Rectangle

    classes = list(stats["classes"])
    colours = list(stats.get("palette", DW_PALETTE))[: len(classes)]
    k = len(classes)
    norm = np.asarray(stats["cooccurrence_normalized"], dtype=np.float64)
    counts = np.asarray(stats["cooccurrence"])
    fig = _figure((7.5, 6.5))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(norm), vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(im, ax=ax, label="P(column present | row present)")
    ax.set_xticks(np.arange(k), classes, rotation=45, ha="right")
    ax.set_yticks(np.arange(k), classes)
    for i in range(k):
        for j in range(k):
            if np.isfinite(norm[i, j]):
                ax.text(j, i, f"{norm[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] < 0.6 else "black")
    # DW colour swatches just outside the left and top edges of the matrix.
    for i, c in enumerate(colours):
        ax.add_patch(Rectangle((-0.95, i - 0.5), 0.4, 1.0, color=c, clip_on=False))
        ax.add_patch(Rectangle((i - 0.5, -0.95), 1.0, 0.4, color=c, clip_on=False))
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_title(f"Class co-occurrence over {stats['n_labelled']} labelled patch-seasons", fontsize=10, pad=18)
    fig.savefig(path_png, dpi=100)
    return str(path_png)
