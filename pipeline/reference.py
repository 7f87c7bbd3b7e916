"""Extra per-patch label products of a source (a second, finer land-cover nomenclature) in the archive.

A source may describe label products besides Dynamic World in ``describe()["label_products"]``
(``{name: {"classes": [...], ...}}``) and compute them with a ``patch_products(location, windows,
grid)`` method returning ``{name: (S, K) float fractions}``. Today only the synthetic source has one,
``reference`` (:mod:`pipeline.sources.synthetic.reference`, a CORINE-like 19-class product). For a
product ``name`` the archive holds (template: :func:`product_template`, used by
:func:`pipeline.store.archive_template`)::

    <name>_fraction   [patch, season, <name>_class]  float32 class fractions (sum to 1 for a done patch)
    <name>_multi_hot  [patch, season, <name>_class]  uint8 presence: fraction > presence_threshold

with the class names in the coordinate ``<name>_class`` and in the ``classes`` attribute of both
variables. The presence threshold is the manifest's ``labels.presence_threshold`` at curation
(strictly greater, compared in float64 as for Dynamic World, :mod:`pipeline.labels`); it is recorded
in the ``presence_threshold`` attribute and is not changed by ``softcon labels``.

Sources without products (local SSL4EO-S12, Earth Engine, STAC) get no such variables; archives
written before products existed have none either, so readers treat them as optional
(:func:`product_classes` returns None).

Pretraining never reads these variables (it reads images, ``multi_hot`` and ``label_fraction``);
they are evaluation targets (``ArchiveTask(target="reference")``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: The product that the study evaluates as a transfer task.
REFERENCE = "reference"


def product_variables(name: str) -> tuple[str, str]:
    """``(<name>_fraction, <name>_multi_hot)``: the archive variables of one label product."""
    return f"{name}_fraction", f"{name}_multi_hot"


def described_products(source_description: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The label products a source description declares (``{}`` for sources without any)."""
    products = source_description.get("label_products") or {}
    return {str(k): dict(v) for k, v in products.items()}


def product_template(source_description: Mapping[str, Any], presence_threshold: float):
    """The template entries of a source's label products, for :func:`pipeline.store.archive_template`.

    Args:
        source_description: The source's ``describe()``.
        presence_threshold: The manifest's presence threshold (recorded on the multi-hot variable).

    Yields:
        ``(variable, dims, class_dim, classes, dtype, attrs)`` for every variable of every product.
    """
    for name, spec in described_products(source_description).items():
        classes = [str(c) for c in spec["classes"]]
        frac, multi = product_variables(name)
        dims = ("patch", "season", f"{name}_class")
        common = {"classes": classes, "product": name, "description": spec.get("description", "")}
        yield frac, dims, classes, "float32", {**common, "units": "fraction of the patch's pixels"}
        yield multi, dims, classes, "uint8", {**common, "presence_threshold": presence_threshold}


def patch_products(source: Any, manifest: Any, location: Any, windows: list,
                   presence_threshold: float) -> dict[str, np.ndarray]:
    """The product arrays of one patch for :class:`pipeline.store.PatchResult` (``{}`` without products).

    Args:
        source: The source; products come from its optional ``patch_products`` method.
        manifest: The manifest (its ``patch`` section gives the location's grid).
        location: The location.
        windows: Its season windows, in season order.
        presence_threshold: A class is present when its fraction is strictly greater.

    Returns:
        ``{variable: (S, K) array}``: ``<name>_fraction`` float32 and ``<name>_multi_hot`` uint8.
    """
    compute = getattr(source, "patch_products", None)
    if compute is None:
        return {}
    from pipeline.grid import PatchGrid

    patch = manifest.patch
    grid = PatchGrid.for_location(location, patch.size_px, patch.resolution_m, patch.lattice_m)
    out: dict[str, np.ndarray] = {}
    for name, fraction in compute(location, windows, grid).items():
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
