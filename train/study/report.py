"""Write a study's report (docs/study.md): setup, tables, figures, smoke checks, exact config, wall time.

The report is generated only from the study's output folder (:mod:`train.study.plan`), so
``softcon study CONFIG --report-only`` rewrites it at any time, including for a study stopped early
(cells then say over how many seeds they average).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from train.study.aggregate import Cell, collect, columns, rare_classes  # noqa: E402
from train.study.config import MethodSpec, StudyConfig  # noqa: E402
from train.study.plan import RESULTS_FILE, plan_units  # noqa: E402
from train.study.runner import Timings  # noqa: E402

__all__ = ["write_study_report"]

TARGET_TITLES = {"multi_hot": "Dynamic World multi-hot, 9 classes (in-domain: the labels label-aware losses used)",
                 "reference": "Reference land cover, 19 CORINE-like classes (transfer: never seen in pretraining)"}
TOY_BANNER = ("> **Toy run, not the study.** This report comes from a scaled-down configuration that only "
              "exercises the pipeline; its numbers rank nothing.\n")


def _fmt(cell: Cell, n_seeds: int) -> str:
    if not cell.n:
        return "–"
    text = f"{cell.mean:.3f} ± {cell.std:.3f}"
    if cell.ci:
        text += f" [{cell.ci[0]:.3f}, {cell.ci[1]:.3f}]"
    return text + ("" if cell.n >= n_seeds else f" (n={cell.n})")


def _table(cfg: StudyConfig, table: dict[str, dict[str, Cell]]) -> str:
    cols = [c for c, _, _ in columns(cfg)]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in cfg.methods:
        lines.append(f"| {m.name} | " + " | ".join(_fmt(table[m.name][c], len(cfg.seeds)) for c in cols) + " |")
    return "\n".join(lines)


def _bar_chart(cfg: StudyConfig, results: dict, path: Path) -> Path | None:
    cols = [c for c, _, _ in columns(cfg)][:1] + [c for c, _, _ in columns(cfg) if c.startswith("mAP@")][:1]
    panels = [(t, c) for t in cfg.evaluation.targets for c in cols]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    names = [m.name for m in cfg.methods]
    for ax, (target, col) in zip(axes[0], panels):
        cells = [results[target][n][col] for n in names]
        ax.bar(range(len(names)), [c.mean for c in cells], yerr=[c.std if c.n > 1 else 0 for c in cells],
               color=["0.6" if not cfg.method(n).pretrained else "C0" if "softcon" not in n else "C3" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
        ax.set_title(f"{target}: {col}", fontsize=8)
        finite = [c.mean for c in cells if c.n]
        if finite:
            lo = min(finite)
            ax.set_ylim(max(0.0, lo - 0.1 * (max(finite) - lo + 1e-3) - 0.02), None)
    fig.suptitle("mean ± std over seeds (red: SoftCon, grey: no pretraining)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _similarity(cfg: StudyConfig) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for unit in plan_units(cfg):
        if unit.similarity_file().is_file():
            out.setdefault(unit.method.name, []).append(json.loads(unit.similarity_file().read_text()))
    return out


def _similarity_plot(sims: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    if not sims:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for name, runs in sims.items():
        xs = sorted({p["label_sim"] for r in runs for p in r["curve"]})
        ys = [np.mean([p["mean"] for r in runs for p in r["curve"] if p["label_sim"] == x]) for x in xs]
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("label similarity of the pair (cosine of DW multi-hot)")
    ax.set_ylabel("embedding cosine similarity (mean)")
    ax.legend(fontsize=7)
    ax.set_title("test pairs of different locations", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _smoke_table(cfg: StudyConfig) -> str:
    rows = ["| task | method | seed | items (train / test) | kNN mAP or OA (k = 1) | status |", "|---" * 6 + "|"]
    for spec in cfg.evaluation.smoke:
        for unit in plan_units(cfg):
            d = unit.smoke_dir(spec.task)
            if (d / RESULTS_FILE).is_file():
                res = json.loads((d / RESULTS_FILE).read_text())
                knn = next(iter(res["checkpoints"].values())).get("knn", {}).get("metrics", {})
                value = knn.get("mAP_macro", knn.get("OA", math.nan))
                rows.append(f"| {spec.task} | {unit.method.name} | {unit.seed} | {res['n_train']} / {res['n_test']} "
                            f"| {value:.3f} | format ok |")
            elif (d / "error.json").is_file():
                err = json.loads((d / "error.json").read_text())["error"].replace("|", "/")[:120]
                rows.append(f"| {spec.task} | {unit.method.name} | {unit.seed} | – | – | failed: {err} |")
    return "\n".join(rows) if len(rows) > 2 else "(no smoke checks configured or run)"


def taxonomy_table() -> str:
    """The reference mapping (world variables → classes) as Markdown, from its module's docstring table."""
    from pipeline.sources.synthetic import reference

    lines = [line for line in (reference.__doc__ or "").splitlines() if line.strip() and line[:5].strip().isdigit()]
    rows = ["| id | class | world variables |", "|---|---|---|"]
    for line in lines:
        ident, rest = line.split(None, 1)
        name, rule = rest[:23].strip(), rest[23:].strip()
        rows.append(f"| {ident} | {name} | {rule.replace('``', '`')} |")
    return "\n".join(rows)


def _timing_table(timings: Timings) -> str:
    phases = ["curation", "pretrain", "eval", "similarity", "smoke", "report"]
    lines = ["| phase | minutes |", "|---|---|"]
    for p in phases:
        t = timings.total(p)
        if t:
            lines.append(f"| {p} | {t / 60:.1f} |")
    lines.append(f"| **total** | **{timings.total() / 60:.1f}** |")
    return "\n".join(lines)


def _verdict(a: Cell, b: Cell) -> str:
    """``a`` vs ``b``: ahead / behind when the means differ by more than the larger seed std (needs 2+ seeds)."""
    if min(a.n, b.n) < 2:
        return "one seed so far: no spread to judge by"
    diff = a.mean - b.mean
    return "within the seed spread" if abs(diff) <= max(a.std, b.std) else ("ahead" if diff > 0 else "behind")


def _findings(cfg: StudyConfig, results: dict) -> list[str]:
    """Plain statements read off the tables (best method per target and headline column)."""
    out = []
    first = columns(cfg)[0][0] if columns(cfg) else None
    for target in cfg.evaluation.targets:
        cols = [first] + [c for c, _, _ in columns(cfg) if c.startswith("mAP@")][:1] + ["rare AP"]
        for col in [c for c in cols if c]:
            cells = {m: results[target][m][col] for m in results[target] if col in results[target][m]}
            cells = {m: c for m, c in cells.items() if c.n}
            if not cells:
                continue
            best = max(cells, key=lambda m: cells[m].mean)
            soft = {m: c for m, c in cells.items() if "softcon" in m}
            hard = {m: c for m, c in cells.items() if "softcon" not in m and cfg.method(m).pretrained}
            text = f"{target} / {col}: best {best} ({cells[best].mean:.3f})"
            if soft and hard:
                s = max(soft, key=lambda m: soft[m].mean)
                h = max(hard, key=lambda m: hard[m].mean)
                diff = soft[s].mean - hard[h].mean
                text += (f"; best SoftCon ({s}) vs best other pretraining ({h}): {diff:+.3f}, "
                         f"{_verdict(soft[s], hard[h])}")
            pre = {m: c for m, c in cells.items() if cfg.method(m).pretrained}
            for ref in [m.name for m in cfg.methods if not m.pretrained and m.name in cells]:
                if pre:
                    p = max(pre, key=lambda m: pre[m].mean)
                    diff = pre[p].mean - cells[ref].mean
                    text += (f"; best pretraining ({p}) vs {ref} ({cells[ref].mean:.3f}): {diff:+.3f}, "
                             f"{_verdict(pre[p], cells[ref])}")
            out.append(text)
    return out


def method_text(m: MethodSpec) -> str:
    """One method as the setup lists it: its loss and options, or what it is without pretraining."""
    if m.features == "pixels":
        return f"{m.name} (per-band mean and std of the patch: no network)"
    if m.loss is None:
        return f"{m.name} (random initialisation, no pretraining)"
    changes = f"; budget changed: `{json.dumps(m.training, sort_keys=True)}`" if m.training else ""
    return f"{m.name} ({m.loss.name} {m.loss.options}{changes})"


def write_study_report(cfg: StudyConfig, command: str | None = None) -> Path:
    """Write ``cfg.report`` and its figures (under ``cfg.figures_dir``); returns the report's path."""
    report, figs = Path(cfg.report), Path(cfg.figures_dir)
    figs.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    results = collect(cfg)
    sims = _similarity(cfg)
    bar = _bar_chart(cfg, results, figs / f"{cfg.name}_bars.png")
    sim_png = _similarity_plot(sims, figs / f"{cfg.name}_similarity.png")
    timings = Timings(Path(cfg.output_dir) / "timings.json")
    rel = lambda p: Path(os.path.relpath(Path(p).resolve(), report.parent.resolve())).as_posix()  # noqa: E731
    units = plan_units(cfg)
    done = sum(all((u.eval_dir(t) / RESULTS_FILE).is_file() for t in cfg.evaluation.targets) for u in units)
    md = [f"# Study `{cfg.name}`: does soft multi-label contrast beat hard contrast on unseen locations and labels?",
          "", TOY_BANNER if cfg.toy else "", cfg.description, "",
          f"Generated by `train.study` from `{cfg.output_dir}`: {done} of {len(units)} (method, seed) units evaluated.",
          "", "## Setup", "",
          f"* **Archive**: synthetic world, {cfg.archive.n_locations} locations (sampling seed "
          f"{cfg.archive.sampling_seed}, world seed {cfg.archive.world_seed}), {cfg.archive.size_px} px patches "
          f"at 10 m, 4 seasons, modalities {', '.join(cfg.archive.modalities)}; the default train/val/test split by "
          "location (`pipeline.split`). Pretraining reads the train split only.",
          f"* **Shared budget** (every method): `{json.dumps(cfg.training, sort_keys=True)}`.",
          f"* **Methods**: {', '.join(method_text(m) for m in cfg.methods)}.",
          f"* **Seeds**: {cfg.seeds} (pretraining seed = evaluation seed = random-init seed).",
          f"* **Evaluation** on the archive's test split: {', '.join(cfg.evaluation.protocols)}; logistic C from "
          f"{cfg.evaluation.logistic_Cs} chosen on the validation split; kNN k = {cfg.evaluation.knn_k[0]}; retrieval "
          f"K = {cfg.evaluation.retrieval_k}; {cfg.evaluation.bootstrap_resamples} bootstrap resamples by location.",
          "", "Cells: mean ± std over seeds [per-seed 95 % bootstrap interval, averaged]; (n=…) when not every "
          "seed is in yet.", ""]
    for target in cfg.evaluation.targets:
        md += [f"## {TARGET_TITLES[target]}", "", _table(cfg, results[target]), ""]
        if cfg.evaluation.rare_classes:
            rare = ", ".join(f"{n} ({100 * f:.1f} %)" for _, n, f in rare_classes(cfg, target))
            md += [f"Rare AP averages the per-class AP of the rarest training classes: {rare}.", ""]
    if bar:
        md += [f"![headline metrics]({rel(bar)})", ""]
    md += ["## The reference land cover (transfer task)", "",
           "A second, finer product of the synthetic world (`pipeline.sources.synthetic.reference`), written into "
           "the archive as `reference_fraction` / `reference_multi_hot` and never read by pretraining. First "
           "matching row wins:", "", taxonomy_table(), ""]
    md += ["## Mechanism: label similarity vs embedding similarity", "",
           "SoftCon's soft target asks embedding similarity to follow label similarity; instance contrast does not. "
           "Spearman's ρ over random test pairs of different locations (mean over seeds):", ""]
    if sims:
        md += ["| method | Spearman ρ | pairs |", "|---|---|---|"]
        md += [f"| {m} | {np.mean([r['spearman'] for r in rs]):.3f} | {rs[0]['n_pairs']} |" for m, rs in sims.items()]
        md += ["", f"![label vs embedding similarity]({rel(sim_png)})", ""]
    else:
        md += ["(no similarity data yet)", ""]
    md += ["## Real-data smoke checks", "",
           "The real BigEarthNet and EuroSAT samples in `../shared/data` are a handful of patches: they check that "
           "the backbones read real products end to end. **They are far too few to rank methods.**", "",
           _smoke_table(cfg), "", "## What the numbers show", ""]
    md += [f"* {f}" for f in _findings(cfg, results)] or ["(no results yet)"]
    if cfg.discussion:
        path = Path(cfg.discussion)
        md += ["", "## Discussion", "", path.read_text().strip() if path.is_file() else f"({path} not found)"]
    md += ["", "## Reproduce", "", "```", command or f"softcon study {cfg.source_file or 'CONFIG'}", "```", "",
           f"Expected run time: {cfg.expected_runtime or 'not stated'}. Measured wall time (sum of the steps that did "
           f"work, over every invocation) on {platform.machine()} with {torch.get_num_threads()} torch threads:", "",
           _timing_table(timings), "", "Exact configuration:", "", "```yaml",
           yaml.safe_dump(cfg.model_dump(mode="json", exclude={"source_file"}), sort_keys=False).strip(), "```", ""]
    report.write_text("\n".join(md))
    return report
