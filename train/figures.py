"""Figures of a pretraining run: loss and learning-rate curves, embeddings of held-out patches.

Reads a run folder through its files only: the TensorBoard event files under ``tensorboard/``
(scalars ``train/loss``, ``train/lr``, ``train/momentum``), else ``metrics.csv``; the exported
backbone and ``training_data.json`` for embeddings (:mod:`train.run_embeddings`). Figures use the
shared style and Dynamic World colours of :mod:`pipeline.figures.style`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bands import DW_CLASSES, DW_PALETTE, LABEL_NODATA
from pipeline.errors import BadInput
from pipeline.figures.style import (
    ANNOTATION_SIZE,
    DEFAULT_DPI,
    dw_legend_handles,
    new_figure,
    save_png,
    styled,
)
from train.run_embeddings import (
    SplitEmbeddings,
    nearest_neighbours,
    project_2d,
    similarity_pairs,
)

SCALARS = ("train/loss", "train/lr", "train/momentum")
_CSV_COLUMNS = {"train/loss": "loss", "train/lr": "lr", "train/momentum": "momentum"}


def _from_tensorboard(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in set(SCALARS) & set(acc.Tags().get("scalars", [])):
        events = {e.step: e.value for e in acc.Scalars(tag)}  # a resumed run rewrites steps: last wins
        steps = np.array(sorted(events), dtype=np.int64)
        out[tag] = (steps, np.array([events[s] for s in steps], dtype=np.float64))
    return out


def _from_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for tag, col in _CSV_COLUMNS.items():
        pairs = {int(r["step"]): float(r[col]) for r in rows if r.get(col) not in (None, "")}
        if pairs:
            steps = np.array(sorted(pairs), dtype=np.int64)
            out[tag] = (steps, np.array([pairs[s] for s in steps]))
    return out


def read_run_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tag: (steps, values)}`` of a run's logged scalars (:data:`SCALARS`), from TensorBoard events,
    else ``metrics.csv``. Raises :class:`BadInput` naming the folder when it has neither.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise BadInput(f"{run}: not a run folder (no such directory)")
    if (run / "tensorboard").is_dir():
        found = _from_tensorboard(run / "tensorboard")
        if found.get("train/loss") is not None:
            return found
    if (run / "metrics.csv").is_file():
        return _from_csv(run / "metrics.csv")
    raise BadInput(f"{run}: no training logs (tensorboard/ or metrics.csv); is it a pretraining run folder?")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start), same length as ``values``."""
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - max(1, window))
    return (c[idx] - c[lo]) / (idx - lo)


@styled
def curves_figure(scalars: dict[str, tuple[np.ndarray, np.ndarray]], title: str = ""):
    """Loss (per step and a moving average), learning rate and EMA momentum against the step."""
    panels = [t for t in SCALARS if t in scalars]
    fig = new_figure(4.2 * len(panels) + 0.6, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, tag in zip(axes, panels):
        steps, values = scalars[tag]
        if tag == "train/loss":
            ax.plot(steps, values, color="#9bb5d0", lw=1, label="per step")
            window = max(1, len(values) // 10)
            ax.plot(steps, moving_average(values, window), color="#1f4e79", lw=2, label=f"mean of {window} steps")
            ax.legend(loc="upper right")
            ax.set(ylabel="loss", title=f"Training loss (last {values[-1]:.3f})")
        elif tag == "train/lr":
            ax.plot(steps, values, color="#d95f0e", lw=2)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            ax.set(ylabel="learning rate", title="Learning rate (warm-up, cosine)")
        else:
            ax.plot(steps, values, color="#4d9221", lw=2)
            ax.set(ylabel="EMA momentum", title="Target momentum")
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


@styled
def embedding_figure(emb: SplitEmbeddings, method: str = "pca"):
    """Held-out images projected to 2-D (PCA, or UMAP when installed), coloured by dominant class."""
    xy, used = project_2d(emb.features, method)
    fig = new_figure(9, 6)
    ax = fig.subplots()
    colours = [DW_PALETTE[DW_CLASSES.index(emb.classes[d])] for d in emb.dominant]
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=28, edgecolors="0.15", linewidths=0.4)
    present = [emb.classes[d] for d in sorted(set(emb.dominant.tolist()))]
    ax.legend(handles=dw_legend_handles(present), loc="center left", bbox_to_anchor=(1.01, 0.5),
              title="dominant class")
    ax.set(xlabel=f"{used.upper()} 1", ylabel=f"{used.upper()} 2",
           title=f"{len(emb.ids)} {emb.split}-split images, backbone features ({used.upper()})")
    ax.grid(alpha=0.3)
    return fig


@styled
def similarity_figure(emb: SplitEmbeddings, max_pairs: int = 20000):
    """Embedding cosine similarity against label cosine similarity for pairs of different locations."""
    p = similarity_pairs(emb, max_pairs)
    fig = new_figure(8, 5.2)
    ax = fig.subplots()
    ax.scatter(p["label_sim"], p["embedding_sim"], s=6, alpha=0.25, color="#5b7fa6", label="pairs")
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p["label_sim"], bins) - 1, 0, len(bins) - 2)
    centres, means = [], []
    for b in range(len(bins) - 1):
        sel = which == b
        if sel.sum() >= 3:
            centres.append((bins[b] + bins[b + 1]) / 2)
            means.append(p["embedding_sim"][sel].mean())
    ax.plot(centres, means, "o-", color="#c4281b", lw=2, label="mean per label-similarity bin")
    ax.legend(loc="lower right")
    ax.set(xlabel="label similarity (cosine of multi-hot vectors)", ylabel="embedding similarity (cosine)",
           xlim=(-0.03, 1.03),
           title=f"{p['n_pairs']} pairs of {emb.split} images, Spearman ρ = {p['spearman']:.2f}")
    ax.grid(alpha=0.3)
    return fig


@styled
def neighbours_figure(emb: SplitEmbeddings, queries: Sequence[int] | None = None, k: int = 4):
    """A few query images (left) and their nearest neighbours in embedding space, S2 true colour."""
    from pipeline.archive import Archive
    from pipeline.figures.gallery import s2_composite

    n = len(emb.ids)
    queries = list(np.linspace(0, n - 1, min(3, n)).round().astype(int)) if queries is None else list(queries)
    nn = nearest_neighbours(emb, queries, k)
    group = Archive.of(emb.store).open()
    s2 = next((m for m in ("s2_l1c", "s2_l2a") if m in group.attrs.get("band_names", {})), None)
    if s2 is None:
        raise BadInput(f"{emb.store}: no S2 modality to show")
    bands = list(group.attrs["band_names"][s2])
    fig = new_figure(2.2 * (k + 1) + 0.4, 2.5 * len(queries) + 0.6)
    axes = fig.subplots(len(queries), k + 1, squeeze=False)
    fea = emb.features / np.maximum(np.linalg.norm(emb.features, axis=1, keepdims=True), 1e-12)
    for r, q in enumerate(queries):
        for c, item in enumerate([q] + nn[r].tolist()):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if item < 0:
                ax.axis("off")
                continue
            p, s = int(emb.patch_index[item]), int(emb.season[item])
            clear = np.asarray(group["dw_label"][p, s]) != LABEL_NODATA
            ax.imshow(s2_composite(np.asarray(group[s2][p, s]), bands, clear=clear))
            names = ", ".join(emb.classes[j].split("_")[0] for j in np.flatnonzero(emb.multi_hot[item]))
            sim = "query" if c == 0 else f"cos {float(fea[q] @ fea[item]):.2f}"
            ax.set_title(f"{emb.ids[item]} ({sim})", fontsize=ANNOTATION_SIZE)
            ax.set_xlabel(names, fontsize=ANNOTATION_SIZE)
            if c == 0:
                for spine in ax.spines.values():
                    spine.set(visible=True, color="#c4281b", linewidth=2.5)
    fig.suptitle(f"Nearest neighbours (cosine of backbone features) among {n} {emb.split} images; "
                 "other seasons of the query's location excluded")
    return fig


def render_run_figures(run_dir: str | Path, out_dir: str | Path, store: str | None = None, split: str = "test",
                       dpi: int = DEFAULT_DPI, max_items: int = 512, device: str = "cpu",
                       log: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``curves.png``, ``embedding.png``, ``similarity.png`` and ``neighbours.png`` of a run.

    ``store`` defaults to the archive named by the run's ``training_data.json``; embeddings are of
    ``split`` (default test, unseen by pretraining). Returns the PNG paths.
    """
    from train.run_embeddings import embed_split

    say = log or (lambda _line: None)
    run = Path(run_dir)
    out = Path(out_dir)
    curves = curves_figure(read_run_scalars(run), title=f"run {run.resolve().name}")
    written = [save_png(curves, out / "curves.png", dpi)]
    emb = embed_split(run, store, split=split, max_items=max_items, device=device)
    say(f"embedded {len(emb.ids)} {split} images of {emb.store} with {emb.checkpoint}")
    written += [save_png(embedding_figure(emb, "umap"), out / "embedding.png", dpi),
                save_png(similarity_figure(emb), out / "similarity.png", dpi),
                save_png(neighbours_figure(emb), out / "neighbours.png", dpi)]
    for p in written:
        say(f"wrote {p}")
    return written


__all__: list[Any] = ["SCALARS", "curves_figure", "embedding_figure", "moving_average", "neighbours_figure",
                      "read_run_scalars", "render_run_figures", "similarity_figure"]
