"""Evaluation report: JSON, a markdown comparison table and per-class AP bar charts.

Input: the results dictionary of :func:`train.evaluate.run.evaluate`::

    {"task": str, "classes": [...], "multilabel": bool, "n_train": int, "n_test": int, ...,
     "checkpoints": {label: {"checkpoint": str, "kind": str, "backbone": str | None, "feature_dim": int,
                             "notes": [...],
                             "<protocol>": {"metrics": {name: float}, "per_class_ap": [float | None] | None,
                                            "config": {...}} | {"skipped": reason}}}}

Outputs in ``out_dir``:

* ``results.json``: everything (NaN and infinities written as ``null``, so it is strict JSON);
* ``results.md``: the data set facts (for BigEarthNet its version, band convention and input
  statistics), one row per checkpoint (baselines included), one column per headline metric
  (:data:`HEADLINE_METRICS`; values × 100, "–" = not run / not defined; ``value [low, high]`` with
  the bootstrap interval when computed), then the protocol settings and the load notes;
* ``per_class_ap_<protocol>.png``: grouped bars, one group per class and one bar per checkpoint
  (classes without a positive in the test split have no bar and are marked "n/a").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.jsonable import to_jsonable

__all__ = ["HEADLINE_METRICS", "PROTOCOL_ORDER", "plot_per_class_ap", "results_table", "to_jsonable", "write_report"]

PROTOCOL_ORDER: tuple[str, ...] = ("linear", "logistic", "knn", "finetune", "retrieval")
#: Columns of the markdown table, per protocol, in order (shown when at least one row has them).
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "linear": ("OA", "mAP_macro", "mAP_micro", "F1_macro", "F1_micro"),
    "logistic": ("OA", "mAP_macro", "mAP_micro", "F1_macro", "F1_micro"),
    "knn": ("OA", "mAP_macro", "mAP_micro"),
    "finetune": ("OA", "mAP_macro", "mAP_micro", "F1_macro"),
    "retrieval": ("mAP@20", "mAP@100", "mAP@all", "P@20", "NDCG@20", "hard/mAP@all"),
}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100.0 * float(v):.2f}"


def _cell(block: Any, metric: str) -> str:
    """``value`` × 100, or ``value [low, high]`` when the block has a bootstrap interval for ``metric``."""
    if not isinstance(block, Mapping):
        return "–"
    text = _fmt(block.get("metrics", {}).get(metric))
    iv = ((block.get("intervals") or {}).get("metrics") or {}).get(metric)
    if text != "–" and isinstance(iv, Mapping) and _fmt(iv.get("low")) != "–" and _fmt(iv.get("high")) != "–":
        text += f" [{_fmt(iv['low'])}, {_fmt(iv['high'])}]"
    return text


def _columns(checkpoints: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    cols = []
    for proto in PROTOCOL_ORDER:
        for metric in HEADLINE_METRICS[proto]:
            if any(isinstance(row.get(proto), Mapping) and metric in row[proto].get("metrics", {})
                   for row in checkpoints.values()):
                cols.append((proto, metric))
    return cols


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def results_table(results: Mapping[str, Any]) -> str:
    """The markdown comparison table (rows: checkpoints; columns: headline metrics × 100, with the
    bootstrap interval as ``value [low, high]`` where the protocol computed one).
    """
    rows = results.get("checkpoints", {})
    cols = _columns(rows)
    header = ["checkpoint", "kind", "backbone", "dim"] + [f"{p} {m}" for p, m in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(cols)) + "|"]
    for label, row in rows.items():
        cells = [f"`{_md_escape(label)}`", _md_escape(row.get("kind", "")), _md_escape(row.get("backbone") or "–"),
                 str(row.get("feature_dim", "–"))]
        for proto, metric in cols:
            cells.append(_cell(row.get(proto), metric))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(results: Mapping[str, Any], images: Mapping[str, str]) -> str:
    out = [f"# Evaluation: {results.get('task', '?')}", ""]
    facts = [("modality", results.get("modality")), ("train items", results.get("n_train")),
             ("test items", results.get("n_test")), ("classes", len(results.get("classes", []) or [])),
             ("multi-label", results.get("multilabel")), ("split", results.get("split")),
             ("train fraction", results.get("fraction")), ("seed", results.get("seed")),
             ("input scaling", results.get("normalizer_source")),
             ("protocols", ", ".join(results.get("protocols", []) or []))]
    dataset = results.get("dataset") or {}
    facts += [("data set", dataset.get("dataset")), ("bands", dataset.get("band_convention")),
              ("labels", dataset.get("labels")), ("band statistics", dataset.get("statistics"))]
    boot = results.get("bootstrap") or {}
    if boot:
        text = (f"[low, high] = {100 * boot.get('confidence', 0.95):g} % {boot.get('method')}, "
                f"{boot.get('n_resamples')} resamples (seed {boot.get('seed')}), resampling unit: {boot.get('unit')}")
        facts.append(("intervals", text))
    out += [f"- **{k}**: {v}" for k, v in facts if v is not None]
    for label, ov in (results.get("overlap") or {}).items():  # evaluated with --allow-overlap
        warning = (f"**Warning: checkpoint `{_md_escape(label)}` ({_md_escape(ov.get('checkpoint'))}) was trained "
                   f"on {ov.get('n_test_overlap')} patches of this test split (--allow-overlap): its scores are not "
                   "held out.**")
        out += ["", warning]
    out += ["", "All values × 100. `–`: not run or not defined.", "", results_table(results), ""]
    settings = results.get("protocol_settings") or {}
    if settings:
        out += ["## Protocols", ""]
        for proto, text in settings.items():
            out.append(f"- **{proto}**: {text}")
        out.append("")
    skipped = [(label, proto, row[proto]["skipped"]) for label, row in results.get("checkpoints", {}).items()
               for proto in PROTOCOL_ORDER if isinstance(row.get(proto), Mapping) and "skipped" in row[proto]]
    notes = [(label, n) for label, row in results.get("checkpoints", {}).items() for n in row.get("notes", []) or []]
    if skipped or notes:
        out += ["## Notes", ""]
        out += [f"- `{label}` {proto}: skipped ({why})" for label, proto, why in skipped]
        out += [f"- `{label}`: {n}" for label, n in notes]
        out.append("")
    if images:
        out += ["## Figures", ""]
        out += [f"![{name}]({Path(p).name})" for name, p in images.items()]
        out.append("")
    return "\n".join(out)


def plot_per_class_ap(results: Mapping[str, Any], protocol: str, path_png: str | Path) -> Path | None:
    """Grouped per-class AP bars of ``protocol`` for every checkpoint that has them; None if none has."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    rows = {label: row[protocol]["per_class_ap"] for label, row in results.get("checkpoints", {}).items()
            if isinstance(row.get(protocol), Mapping) and row[protocol].get("per_class_ap")}
    if not rows:
        return None
    n_cls = max(len(v) for v in rows.values())
    classes = list(results.get("classes") or [f"class {i}" for i in range(n_cls)])[:n_cls]
    n_ck = len(rows)
    width = 0.8 / n_ck
    fig = Figure(figsize=(max(6.0, 0.45 * n_cls * max(1, n_ck) ** 0.5 + 2), 4.2))
    ax = fig.subplots()
    x = np.arange(n_cls)
    for i, (label, ap) in enumerate(rows.items()):
        vals = np.array([np.nan if v is None else float(v) for v in ap] + [np.nan] * (n_cls - len(ap)))
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals, nan=0.0) * 100, width, label=label)
    undefined = [j for j in range(n_cls) if all(j >= len(ap) or ap[j] is None for ap in rows.values())]
    for j in undefined:
        ax.text(j, 1, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels([c if len(c) <= 28 else c[:26] + "…" for c in classes], rotation=55, ha="right", fontsize=7)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results.get('task', '')}: per-class AP, {protocol}", fontsize=9)
    ax.legend(fontsize=7, ncol=min(3, n_ck))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and the per-class AP charts; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    images: dict[str, str] = {}
    for proto in PROTOCOL_ORDER:
        p = plot_per_class_ap(results, proto, out / f"per_class_ap_{proto}.png")
        if p is not None:
            images[f"per-class AP ({proto})"] = str(p)
            files[f"per_class_ap_{proto}"] = str(p)
    for name, p in (results.get("files") or {}).items():  # e.g. retrieval example plots made by run.py
        if str(p).endswith(".png"):
            images.setdefault(name, str(p))
    md = out / "results.md"
    md.write_text(_markdown(results, images))
    files["markdown"] = str(md)
    js = out / "results.json"
    payload = dict(results)
    payload["files"] = {**(results.get("files") or {}), **files, "json": str(js)}
    js.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
    files["json"] = str(js)
    return files
