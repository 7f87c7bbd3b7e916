"""Label provenance: the one record of how an archive's current label vectors were made.

An archive's label vectors may be rewritten after curation, with other
thresholds (:func:`pipeline.labels.archive.relabel_archive`, ``softcon labels``) or from the published file
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
from typing import Any

import zarr

from pipeline.manifest import LabelsConfig

__all__ = ["LABEL_PROVENANCE_ATTR", "PROVENANCE_SOURCES", "provenance_record", "read_label_provenance",
           "update_label_provenance"]

#: Root attribute holding the label-provenance record (see the module docstring).
LABEL_PROVENANCE_ATTR = "label_provenance"
PROVENANCE_SOURCES = ("curation", "relabel", "published")


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
    order (each of those only tells the *last* run of its kind). None without any of them.
    """
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
    older attributes for an archive written before it existed (None when nothing is known).
    """
    attrs = dict(group.attrs)
    current = attrs.get(LABEL_PROVENANCE_ATTR)
    if isinstance(current, dict):
        return current
    return _reconstructed(attrs)


def update_label_provenance(group: zarr.Group, source: str, presence_threshold: float | None,
                            min_valid_fraction: float | None, **details: Any) -> dict[str, Any]:
    """Set a new label-provenance record (after the vectors are written); the current record, without its
    ``history``, is appended to the history. The thresholds are mirrored into the ``multi_hot``
    attributes. Returns the new record.
    """
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
