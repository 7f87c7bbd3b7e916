"""Several evaluation seeds summarised as mean ± standard deviation.

``softcon evaluate … --seed 0 --seed 1 --seed 2`` runs :func:`train.evaluate.run.evaluate` once per
seed (into ``<out>/seed-<s>/``; frozen features are cached, so only the probes, kNN and retrieval
are redone) and writes ``<out>/results_seeds.json`` and ``<out>/results_seeds.md``: for every
checkpoint and headline metric (:data:`train.evaluate.report.HEADLINE_METRICS`) the mean and the
sample standard deviation (``ddof=1``) over the seeds. The seed sets the probe's initialisation
and data order and the bootstrap draws; protocols that do not depend on it (kNN, retrieval with its
fixed Imbriaco split) get a standard deviation of 0, which the table shows as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from train.evaluate.report import HEADLINE_METRICS, PROTOCOL_ORDER

__all__ = ["aggregate_seeds", "seeds_markdown", "write_seed_summary"]


def aggregate_seeds(results: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Checkpoint → protocol → metric → ``{"mean", "std", "values"}`` over the seeds' ``results.json`` dicts."""
    seeds = sorted(results)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    labels = list(results[seeds[0]]["checkpoints"])
    for label in labels:
        for proto in PROTOCOL_ORDER:
            for metric in HEADLINE_METRICS[proto]:
                values = []
                for s in seeds:
                    block = results[s]["checkpoints"].get(label, {}).get(proto)
                    v = block.get("metrics", {}).get(metric) if isinstance(block, Mapping) else None
                    values.append(float(v) if v is not None else math.nan)
                arr = np.array(values, dtype=np.float64)
                if np.isnan(arr).all():
                    continue
                finite = arr[np.isfinite(arr)]
                std = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
                out.setdefault(label, {}).setdefault(proto, {})[metric] = {
                    "mean": float(finite.mean()), "std": std, "values": values}
    return out


def seeds_markdown(aggregate: Mapping[str, Any], seeds: list[int], task: str) -> str:
    """A table with one row per checkpoint and ``mean ± std`` (× 100) per headline metric."""
    columns = []
    for proto in PROTOCOL_ORDER:
        for metric in HEADLINE_METRICS[proto]:
            if any(metric in rows.get(proto, {}) for rows in aggregate.values()):
                columns.append((proto, metric))
    lines = [f"# Evaluation: {task}, {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "Mean ± sample standard deviation over the seeds, × 100. Per-seed tables with bootstrap "
             "intervals: `seed-<s>/results.md`.", "",
             "| checkpoint | " + " | ".join(f"{p} {m}" for p, m in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, rows in aggregate.items():
        cells = []
        for proto, metric in columns:
            cell = rows.get(proto, {}).get(metric)
            if cell is None:
                cells.append("–")
            elif math.isnan(cell["std"]):
                cells.append(f"{100 * cell['mean']:.2f}")
            else:
                cells.append(f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}")
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_seed_summary(results: Mapping[int, Mapping[str, Any]], out_dir: str | Path, task: str) -> Path:
    """Write ``results_seeds.json`` and ``results_seeds.md`` into ``out_dir``; returns the markdown path."""
    out = Path(out_dir)
    seeds = sorted(results)
    aggregate = aggregate_seeds(results)
    (out / "results_seeds.json").write_text(json.dumps({"task": task, "seeds": seeds, "checkpoints": aggregate},
                                                       indent=2))
    md = out / "results_seeds.md"
    md.write_text(seeds_markdown(aggregate, seeds, task))
    return md
