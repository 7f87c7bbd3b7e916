"""Extra per-patch label products of a source in the archive: a second land-cover nomenclature, or
Dynamic World's class probabilities.

A source may describe label products besides the Dynamic World label map in
``describe()["label_products"]`` (``{name: {"classes": [...], "kind": ..., ...}}``) and compute them
with a ``patch_products(location, windows, grid)`` method returning ``{name: (S, K) float array}``.
Two kinds exist (template: :func:`product_template`, used by :func:`pipeline.store.archive_template`):

* ``kind: fractions`` (the default): class fractions of a second nomenclature. Today the synthetic
  source's ``reference`` (:mod:`pipeline.sources.synthetic.reference`, a CORINE-like 19-class
  product). The archive holds::

    <name>_fraction   [patch, season, <name>_class]  float32 class fractions (sum to 1 for a done patch)
    <name>_multi_hot  [patch, season, <name>_class]  uint8 presence: fraction > presence_threshold

  with the class names in the coordinate ``<name>_class`` and in the ``classes`` attribute of both
  variables. The presence threshold is the manifest's ``labels.presence_threshold`` at curation
  (strictly greater, compared in float64 as for Dynamic World, :mod:`pipeline.labels`); it is
  recorded in the ``presence_threshold`` attribute and is not changed by ``softcon labels``.
* ``kind: probability``: one vector per (patch, season) over the 9 Dynamic World classes, stored as
  is (no multi-hot)::

    <name>            [patch, season, class]         float32, the archive's Dynamic World ``class`` dim

  Today ``dw_probability`` (:data:`DW_PROBABILITY`), declared by the synthetic and Earth Engine
  sources when the manifest's ``labels.dw_probabilities`` is on: the mean of Dynamic World's
  per-class probability bands over the season's valid label pixels (zeros when none is valid).
  Dynamic World's probabilities are the per-pixel class probabilities of its model (Brown et al.
  2022, "Dynamic World, Near real-time global 10 m land use land cover mapping", Scientific Data 9,
  251; bands ``water`` … ``snow_and_ice`` of GOOGLE/DYNAMICWORLD/V1 in the Earth Engine data
  catalog, developers.google.com/earth-engine/datasets/catalog/GOOGLE_DYNAMICWORLD_V1). Pretraining
  may take it as its soft label vector (``loss.labels: dw_probability``).

The probability means need the season's label pixels, so a source computes them while fetching and
returns each with its season (``SeasonSample.dw_probability``, :mod:`pipeline.sources.base`); the patch
assembly (:func:`pipeline.curate.finish_patch`) stacks them with :func:`season_products`. Nothing is
kept on the source between calls.

Sources without products get no such variables; archives written before products existed have
none either, so readers treat them as optional (:func:`product_classes` returns None,
:func:`archive_products` lists what an archive has).

Fractions products are evaluation targets (``ArchiveTask(target="reference")``); pretraining never
reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA

#: The product that the study evaluates as a transfer task.
REFERENCE = "reference"
#: The mean Dynamic World class probabilities (kind ``probability``), when ``labels.dw_probabilities`` is on.
DW_PROBABILITY = "dw_probability"
#: Product kinds: class fractions of a second nomenclature, or a probability vector over the DW classes.
KINDS = ("fractions", "probability")


def dw_probability_product() -> dict[str, Any]:
    """The ``label_products`` entry a source declares for :data:`DW_PROBABILITY`."""
    return {"kind": "probability", "classes": list(DW_CLASSES),
            "description": "mean Dynamic World class probability over the season's valid label pixels "
                           "(zeros when none is valid)"}


def product_variables(name: str) -> tuple[str, str]:
    """``(<name>_fraction, <name>_multi_hot)``: the archive variables of one label product."""
    return f"{name}_fraction", f"{name}_multi_hot"


def described_products(source_description: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The label products a source description declares (``{}`` for sources without any)."""
    products = source_description.get("label_products") or {}
    return {str(k): dict(v) for k, v in products.items()}


def mean_class_probability(probability: np.ndarray, label: np.ndarray, nodata: int = LABEL_NODATA) -> np.ndarray:
    """The mean class probability vector of one season over its valid label pixels.

    Args:
        probability: (K, H, W) per-pixel class probabilities; a pixel with a non-finite or negative
            value is left out (no probability there).
        label: (H, W) label map; ``nodata`` pixels are left out.
        nodata: The label map's no-label value.

    Returns:
        (K,) float64 mean over the pixels left, zeros when none is left.
    """
    probability = np.asarray(probability, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = (np.asarray(label) != nodata) & (np.isfinite(probability) & (probability >= 0)).all(axis=0)
    if not valid.any():
        return np.zeros(probability.shape[0])
    return probability[:, valid].mean(axis=1)


def product_kind(spec: Mapping[str, Any]) -> str:
    """The kind of a declared product (``fractions`` when the declaration does not say)."""
    kind = str(spec.get("kind", "fractions"))
    if kind not in KINDS:
        raise ValueError(f"unknown label product kind {kind!r}; known: {list(KINDS)}")
    return kind


def product_template(source_description: Mapping[str, Any], presence_threshold: float):
    """The template entries of a source's label products, for :func:`pipeline.store.archive_template`.

    Args:
        source_description: The source's ``describe()``.
        presence_threshold: The manifest's presence threshold (recorded on the multi-hot variable).

    Yields:
        ``(variable, dims, classes, dtype, attrs)`` for every variable of every product.
    """
    for name, spec in described_products(source_description).items():
        classes = [str(c) for c in spec["classes"]]
        if product_kind(spec) == "probability":
            if classes != list(DW_CLASSES):
                raise ValueError(f"label product {name}: a probability product is over the Dynamic World classes")
            yield name, ("patch", "season", "class"), classes, "float32", {
                "classes": classes, "product": name, "kind": "probability",
                "description": spec.get("description", ""), "units": "probability (0..1)"}
            continue
        frac, multi = product_variables(name)
        dims = ("patch", "season", f"{name}_class")
        common = {"classes": classes, "product": name, "description": spec.get("description", "")}
        yield frac, dims, classes, "float32", {**common, "units": "fraction of the patch's pixels"}
        yield multi, dims, classes, "uint8", {**common, "presence_threshold": presence_threshold}


def season_products(samples: Sequence[Any]) -> dict[str, np.ndarray]:
    """The products one patch's seasons carried: ``{DW_PROBABILITY: (S, 9) float64}``, or ``{}``.

    Args:
        samples: The patch's :class:`~pipeline.sources.base.SeasonSample` objects, in season order.

    Raises:
        RuntimeError: Some seasons carry a ``dw_probability`` and others none (a source's bug).
    """
    rows = [sample.dw_probability for sample in samples]
    missing = [season for season, row in enumerate(rows) if row is None]
    if len(missing) == len(rows):
        return {}
    if missing:
        raise RuntimeError(f"{DW_PROBABILITY}: the source returned no row for season(s) {missing} of a patch "
                           "whose other seasons have one")
    width = len(DW_CLASSES)
    return {DW_PROBABILITY: np.stack([np.asarray(row, dtype=np.float64).reshape(width) for row in rows])}


def patch_products(source: Any, manifest: Any, location: Any, windows: list, presence_threshold: float,
                   fetched: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The product arrays of one patch for :class:`pipeline.store.PatchResult` (``{}`` without products).

    Args:
        source: The source; products come from its optional ``patch_products`` method.
        manifest: The manifest (its ``patch`` section gives the location's grid).
        location: The location.
        windows: Its season windows, in season order.
        presence_threshold: A class is present when its fraction is strictly greater.
        fetched: Products the seasons' samples carried (:func:`season_products`), ``{name: (S, K)}``.

    Returns:
        ``{variable: (S, K) array}``: ``<name>_fraction`` float32 and ``<name>_multi_hot`` uint8 for a
        fractions product, ``<name>`` float32 for a probability product.
    """
    arrays = dict(fetched or {})
    compute = getattr(source, "patch_products", None)
    if compute is not None:
        from pipeline.grid import PatchGrid

        patch = manifest.patch
        grid = PatchGrid.for_location(location, patch.size_px, patch.resolution_m, patch.lattice_m)
        arrays.update(compute(location, windows, grid) or {})
    if not arrays:
        return {}
    declared = described_products(source.describe())
    out: dict[str, np.ndarray] = {}
    for name, fraction in arrays.items():
        if product_kind(declared.get(name, {})) == "probability":
            out[name] = np.asarray(fraction, dtype=np.float32)
            continue
        fraction = np.asarray(fraction, dtype=np.float64)
        frac, multi = product_variables(name)
        out[frac] = fraction.astype(np.float32)
        out[multi] = (fraction > presence_threshold).astype(np.uint8)
    return out


def product_classes(group: Any, name: str = REFERENCE) -> tuple[str, ...] | None:
    """The class names of a product in an open archive group, or None when the archive has none."""
    frac, _ = product_variables(name)
    if frac not in group:
        return None
    return tuple(str(c) for c in group[frac].attrs.get("classes", ()))


def archive_products(group: Any) -> dict[str, dict[str, Any]]:
    """The label products an open archive group holds: ``{name: {"kind", "variables", "classes"}}``.

    Found from the variables' ``product`` attribute, so archives written before products existed give ``{}``.
    """
    found: dict[str, dict[str, Any]] = {}
    for variable in sorted(group.array_keys()):
        attrs = group[variable].attrs
        name = attrs.get("product")
        if not name:
            continue
        entry = found.setdefault(str(name), {"kind": str(attrs.get("kind", "fractions")), "variables": [],
                                              "classes": len(attrs.get("classes", ()))})
        entry["variables"].append(variable)
    return found
