"""The ``softcon`` command line: validate manifests, curate archives, inspect them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Rebuild SSL4EO-S12-ML and pretrain with SoftCon: curate → explore → pretrain → evaluate.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _offline_defaults() -> None:
    """Settings that keep Prefect and the hubs offline unless the user configured otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's INFO chatter drowns the flow's counts


def _load_or_exit(path: Path):
    from pipeline.manifest import ManifestError, load_manifest

    try:
        return load_manifest(path)
    except ManifestError as err:
        err_console.print(f"[bold red]{err.source}[/]: {len(err.problems)} problem(s)")
        for line in err.problems:
            err_console.print(f"  {line}")
        raise typer.Exit(code=2) from None


def _require_archive(store: str) -> None:
    from pipeline.store import archive_exists

    if not archive_exists(store):
        err_console.print(f"[bold red]error:[/] {store}: not a softcon archive")
        raise typer.Exit(code=1)


@app.command()
def validate(manifest: Path = typer.Argument(..., help="data_manifest.yaml to check")) -> None:
    """Check a manifest; print every problem with its key path and exit 2 if there is any."""
    m = _load_or_exit(manifest)
    sel = m.modalities.selected()
    console.print(f"[green]OK[/] {manifest}: '{m.name}' v{m.version}, source {m.source.kind}, "
                  f"{m.sampling.n_locations} locations × {len(m.seasons.reference_dates)} seasons, "
                  f"{m.patch.size_px} px, modalities {', '.join(f'{k}({len(v)})' for k, v in sel.items())}")
    console.print(f"store: {m.store.path}   manifest hash: {m.content_hash()[:16]}")


@app.command()
def curate(
    manifest: Path = typer.Argument(..., help="data_manifest.yaml describing the dataset"),
    dask_address: Optional[str] = typer.Option(None, help="existing Dask scheduler, e.g. tcp://host:8786"),
    retry_failed: bool = typer.Option(False, help="also retry patches that failed in an earlier run"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Build (or resume) the Zarr archive described by MANIFEST with the Prefect curation flow."""
    _offline_defaults()
    _load_or_exit(manifest)
    from flows.curate import curate_manifest
    from pipeline.sources import SourceError
    from pipeline.store import ArchiveError

    try:
        summary = curate_manifest(str(manifest), dask_address=dask_address, retry_failed=retry_failed,
                               show_progress=progress and sys.stderr.isatty())
    except (ArchiveError, SourceError, NotImplementedError, ValueError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=1) from None
    _print_summary(summary)


@app.command()
def inspect(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Summarise an archive: patch counts, failures, class frequencies."""
    from pipeline.labels import label_summary, summary_statistics
    from pipeline.store import summarize

    _require_archive(store)
    summary = summarize(store) | label_summary(summary_statistics(store))
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    console.print(f"[bold]{s.get('title')}[/]  {s['path']}  source={s.get('source')}"
                  f"{'  [yellow](synthetic)[/]' if s.get('synthetic') else ''}")
    st = s["status"]
    console.print(f"patches: {s['n_patches']} × {s['n_seasons']} seasons — done {st['done']}, "
                  f"failed {st['failed']}, todo {st['todo']}; labelled images {s['labelled_images']}")
    if s.get("failures"):
        console.print("failures: " + ", ".join(f"{k} ×{v}" for k, v in s["failures"].items()))
    table = Table(title="class frequency (share of labelled images where the class is present)")
    table.add_column("class")
    table.add_column("frequency", justify="right")
    for name, f in s["class_frequency"].items():
        table.add_row(name, f"{f:.3f}")
    console.print(table)
    if "this_run" in s:
        r = s["this_run"]
        console.print(f"this run: {r['shards']} shards, {r['done']} patches done, {r['failed']} failed "
                      f"in {r['seconds']} s; pretraining: {s.get('pretraining')}")
    if "report" in s:
        console.print(f"report (plots, summary.json): {s['report']}")


@app.command()
def locations(
    manifest: Path = typer.Argument(..., help="data_manifest.yaml"),
    out: Path = typer.Option(Path("locations.parquet"), help="GeoParquet to write"),
    plot: Optional[Path] = typer.Option(None, help="also write a map of the locations (PNG)"),
) -> None:
    """Sample the manifest's locations only (GeoParquet and an optional map)."""
    from pipeline.sampling import (
        load_cities, locations_to_geodataframe, plot_locations, sample_locations, write_locations)

    m = _load_or_exit(manifest)
    gdf = locations_to_geodataframe(sample_locations(m.sampling, m.patch), m.patch)
    write_locations(gdf, out)
    console.print(f"{len(gdf)} locations → {out}")
    if plot:
        cities = load_cities(m.sampling.city_table, m.sampling.top_n_cities)
        plot_locations(gdf, plot, title=f"{m.name}: {len(gdf)} locations", cities=cities)
        console.print(f"map → {plot}")


@app.command()
def evaluate(
    checkpoints: list[str] = typer.Argument(..., help="run folders, weight files, 'random:<arch>' or 'pixels'"),
    task: str = typer.Option(..., help="archive | bigearthnet_v1 | bigearthnet_v2 | eurosat"),
    opt: list[str] = typer.Option([], help="task reader option key=value, repeatable (e.g. store=..., root=...)"),
    protocol: list[str] = typer.Option(["linear", "knn", "retrieval"], help="linear | knn | retrieval | finetune"),
    fraction: Optional[float] = typer.Option(None, help="training subset, e.g. 0.1 for BigEarthNet-10%"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("output/eval"), help="folder for results.json, results.md and plots"),
    device: str = typer.Option("auto"),
    baselines: bool = typer.Option(True, help="add the random-init and raw-pixel baselines"),
    resize_to: Optional[int] = typer.Option(None, help="resize inputs, e.g. 224 for ViTs"),
) -> None:
    """Compare checkpoints on a downstream task: linear probe, kNN, retrieval, fine-tuning."""
    _offline_defaults()
    from train.evaluate.run import evaluate as run_evaluation
    from train.evaluate.run import parse_task_options

    try:
        results = run_evaluation(checkpoints, task, parse_task_options(opt), protocols=tuple(protocol), out_dir=out,
                                 fraction=fraction, seed=seed, device=device, baselines=baselines,
                                 resize_to=resize_to)
    except (FileNotFoundError, KeyError, ValueError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=1) from None
    md = Path(out) / "results.md"
    console.print(md.read_text() if md.exists() else results)


@app.command("import-labels")
def import_labels(
    labels_json: Path = typer.Argument(..., help="published SSL4EO-S12-ML JSON (.json or .json.gz)"),
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    overwrite: bool = typer.Option(True, help="allow replacing labels of an earlier import"),
) -> None:
    """Write the published SSL4EO-S12-ML multi-labels into an archive's multi_hot, matched by location
    and S2 L1C image id. Recomputing labels or curating more patches replaces them: import again after."""
    from pipeline.published_labels import PublishedLabelsError, format_report, import_published_labels

    try:
        report = import_published_labels(labels_json, store, overwrite=overwrite)
    except PublishedLabelsError as err:
        err_console.print(f"[bold red]{labels_json}[/]: {err}")
        raise typer.Exit(code=2) from None
    console.print(format_report(report))


@app.command()
def labels(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    presence_threshold: Optional[float] = typer.Option(
        None, help="a class is present above this fraction of valid pixels (default: the archive's manifest)"),
    min_valid_fraction: Optional[float] = typer.Option(
        None, help="fewer valid pixels than this share: unlabelled (default: the archive's manifest)"),
    batch_patches: int = typer.Option(256, help="patches per written region"),
) -> None:
    """Recompute label_fraction and multi_hot of every done patch from its Dynamic World maps (Dask
    over the archive's shards), e.g. with another presence threshold or after an import-labels."""
    from pipeline.labels import relabel_archive
    from pipeline.progress import progress_bar

    _require_archive(store)
    try:
        with progress_bar(sys.stderr.isatty()) as bar:
            task = bar.add_task("labelling patches", total=None, status="")

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            counts = relabel_archive(store, presence_threshold, min_valid_fraction, batch_patches, on_region=advance)
    except ValueError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=2) from None
    console.print(f"{store}: {counts['patches_done']} done patches relabelled "
                  f"(presence threshold {counts['presence_threshold']}, min valid fraction "
                  f"{counts['min_valid_fraction']}): {counts['patch_seasons_labelled']} labelled, "
                  f"{counts['patch_seasons_unlabelled']} unlabelled images; "
                  f"{counts['patches_skipped']} patches not done")


@app.command()
def pretrain(
    config: Path = typer.Argument(..., help="training config YAML (see configs/pretrain_mini.yaml)"),
    archive: Optional[str] = typer.Option(None, help="archive to train on (overrides the config)"),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint in output_dir"),
    epochs: Optional[int] = typer.Option(None, help="override the number of epochs"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Pretrain a backbone on an archive (SoftCon by default). Under torchrun it runs DDP."""
    _offline_defaults()
    from pydantic import ValidationError

    from train.pretrain import run_pretraining

    try:
        summary = run_pretraining(config, archive=archive, resume=resume, epochs=epochs,
                                  progress=progress and sys.stderr.isatty())
    except ValidationError as err:
        err_console.print(f"[bold red]{config}[/]: invalid training config")
        for e in err.errors():
            err_console.print(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
        raise typer.Exit(code=2) from None
    except (FileNotFoundError, KeyError, ValueError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=1) from None
    if summary["rank"] != 0:
        return
    losses = summary["losses"]
    if losses:
        console.print(f"{summary['steps']} steps on {summary['device']} in {summary['seconds']} s; "
                      f"loss {losses[0]:.4f} → {losses[-1]:.4f}")
    console.print(f"outputs (checkpoints, metrics.csv, tensorboard/, backbone.safetensors): {summary['output_dir']}")


@app.command()
def stats(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    modality: str = typer.Option("s2_l1c", help="s2_l1c | s2_l2a | s1_grd"),
    out: Path = typer.Option(Path("stats.json"), help="JSON file to write the per-band statistics to"),
    max_patches: Optional[int] = typer.Option(None, help="use at most this many done patches"),
) -> None:
    """Per-band mean and std of an archive's modality (for normalisation), written as JSON."""
    from train.data import compute_archive_statistics, save_statistics
    from pipeline.store import open_group

    mean, std = compute_archive_statistics(store, modality, max_patches=max_patches)
    bands = list(open_group(store, "r").attrs["band_names"][modality])
    save_statistics(out, modality, bands, mean, std)
    for b, m_, s_ in zip(bands, mean, std):
        console.print(f"{b:>4}  mean {float(m_):10.2f}  std {float(s_):10.2f}")
    console.print(f"→ {out}")


if __name__ == "__main__":
    app()
