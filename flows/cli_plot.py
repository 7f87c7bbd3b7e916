"""``softcon plot``: write the figures of an archive's labels or of a pretraining run as PNGs.

Registered on the main command line (:mod:`flows.cli`), whose error handling applies: a bad path is a
:class:`pipeline.errors.BadInput`, reported as one line naming it, exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.errors import BadInput

plot_app = typer.Typer(help="Write figures (PNG) of an archive's labels or of a pretraining run.\n\n"
                            "Example: softcon plot labels output/ssl4eo_s12_ml_mini.zarr --out figures/labels",
                       no_args_is_help=True, add_completion=False)
console = Console()

_DPI = typer.Option(90, min=30, max=300, help="resolution of the PNGs (dots per inch)")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a folder")


@plot_app.command("labels")
def plot_labels(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    out: Path = typer.Option(..., "--out", help="folder for the PNGs (created)"),
    dpi: int = _DPI,
    published: Optional[Path] = typer.Option(
        None, help="the published SSL4EO-S12-ML JSON that was imported: compare only the images it matched"),
) -> None:
    """Write the label figures of an archive as PNGs.

    Class frequencies, co-occurrence (conditional and PMI), label fractions, seasonal change, latitude
    bands, world map, cloud and no-data, presence-threshold sweep, a gallery and one location through
    its seasons; published vs own labels after an import.

    Example: softcon plot labels output/ssl4eo_s12_ml_mini.zarr --out figures/labels
    """
    from pipeline.figures import render_label_figures

    _check_out(out)
    if published is not None and not published.is_file():
        raise BadInput(f"--published {published}: file not found")
    written = render_label_figures(store, out, dpi=dpi, published_json=published,
                                   log=lambda line: console.print(escape(line)))
    console.print(f"{len(written)} figures → {escape(str(out))}")


@plot_app.command("run")
def plot_run(
    run_dir: Path = typer.Argument(..., help="pretraining run folder (output_dir of the training config)"),
    out: Path = typer.Option(..., "--out", help="folder for the PNGs (created)"),
    archive: Optional[str] = typer.Option(None, help="archive to embed (default: the run's training_data.json)"),
    split: str = typer.Option("test", help="split whose images are embedded: train | val | test"),
    max_items: int = typer.Option(512, min=2, help="embed at most this many images"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    dpi: int = _DPI,
) -> None:
    """Write the figures of a pretraining run as PNGs.

    Loss, learning-rate and momentum curves; held-out images embedded by the backbone (PCA, or UMAP
    when installed) coloured by dominant class; label vs embedding similarity of pairs; nearest
    neighbours of a few queries.

    Example: softcon plot run runs/softcon-mini --out figures/run
    """
    from train.figures import render_run_figures

    if not run_dir.is_dir():
        raise BadInput(f"{run_dir}: not a run folder (no such directory)")
    _check_out(out)
    if split not in ("train", "val", "test"):
        raise BadInput(f"--split {split}: choose train, val or test")
    written = render_run_figures(run_dir, out, store=archive, split=split, dpi=dpi, max_items=max_items,
                                 device=device, log=lambda line: console.print(escape(line)))
    console.print(f"{len(written)} figures → {escape(str(out))}")
