"""Published SSL4EO-S12-ML labels against the archive's own, per class.

After ``softcon import-labels`` (:mod:`pipeline.published_labels`) the archive's ``multi_hot`` holds the
published vectors of the matched images while ``label_fraction`` keeps the fractions computed from the
Dynamic World maps. The archive's *own* vectors are therefore ``label_fraction > t`` with the presence
threshold ``t`` of the computed labels (:func:`pipeline.figures.label_data.own_thresholds`). With the
published file at hand the comparison is restricted to the images it matches exactly (location id and
S2 L1C image id, as the import matches them); without it, every image with computed fractions is
compared, and images the file did not cover agree by construction (the result says how many).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.figures.label_data import LabelTable
from pipeline.figures.label_stats import agreement


def published_status(table: LabelTable) -> str | None:
    """None when the archive's current ``multi_hot`` holds imported published labels, else why not."""
    source = (table.provenance or {}).get("source")
    if table.published is None and source != "published":
        return "no published SSL4EO-S12-ML labels were imported into this archive (softcon import-labels)"
    if source != "published":
        return (f"published labels were imported ({(table.published or {}).get('file')}) but the label vectors "
                f"were rewritten since (label provenance: {source}); import them again to compare")
    return None


def _matched_mask(table: LabelTable, published_json: str | Path) -> np.ndarray:
    from pipeline.published_labels import read_published_labels

    labels = read_published_labels(published_json)
    mask = np.zeros(table.s2_image_id.shape, dtype=bool)
    for p, loc in enumerate(table.patch_id):
        entries = labels.get(str(loc))
        if entries:
            mask[p] = [bool(img) and img in entries for img in table.s2_image_id[p]]
    return mask


def published_comparison(table: LabelTable, published_json: str | Path | None = None) -> dict[str, Any]:
    """Per-class precision/recall of the archive's own labels against the published ones.

    The published vectors are the reference: ``precision`` is the share of the classes the archive's
    own rule marks present that the published labels list, ``recall`` the share of published classes
    the own rule finds. Images compared: those with computed fractions and (with ``published_json``)
    an entry in the file; a published empty list is compared as an all-absent vector.

    Returns the :func:`~pipeline.figures.label_stats.agreement` dict plus ``presence_threshold`` (of
    the own rule), ``matched_known`` (whether the file restricted the images) and ``note``.

    Raises:
        ValueError: the archive holds no current published labels (:func:`published_status` says why).
    """
    reason = published_status(table)
    if reason:
        raise ValueError(reason)
    t = table.own_thresholds["presence_threshold"]
    has_fraction = (table.fraction > 0).any(axis=-1)
    rows = has_fraction
    if published_json is not None:
        rows = rows & _matched_mask(table, published_json)
        note = f"{int(rows.sum())} images matched by the published file"
    else:
        matched = ((table.published or {}).get("counts") or {})
        n_matched = int(matched.get("matched_labelled", 0)) + int(matched.get("matched_unlabelled", 0))
        note = (f"{int(rows.sum())} images compared; the import matched {n_matched}: unmatched images keep "
                "computed labels and agree by construction (pass the published file to compare matched images only)")
    own = table.fraction[rows] > t
    result = agreement(table.multi_hot[rows].astype(bool), own)
    return {**result, "presence_threshold": t, "matched_known": published_json is not None, "note": note}
