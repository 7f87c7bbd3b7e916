"""The ``softcon`` command line: validate manifests, curate archives, inspect them.

Errors are reported once, by :class:`_ReportingGroup`: one line ``error: …`` and exit code 2 for bad input
(:class:`pipeline.errors.BadInput` and its subclasses), 1 for anything else; ``softcon --debug COMMAND``
prints the full traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from flows.cli_plot import plot_app
from pipeline.errors import BadInput, RunFailed

APP_HELP = "\n\n".join([
    "Rebuild SSL4EO-S12-ML and pretrain with SoftCon: curate → explore → pretrain → evaluate.",
    "Exit codes: 0 success; 1 the run failed; 2 bad input (a manifest key, a path, a file, credentials), "
    "reported as one line naming it. Add --debug before the command for the full traceback.",
    "Example: softcon validate data_manifest.yaml && softcon curate data_manifest.yaml",
])


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_lines(err: Exception) -> list[str]:
    """What the user sees of an error: one line (a manifest with several problems: one line each)."""
    from pipeline.manifest import ManifestError

    if isinstance(err, ManifestError) and len(err.problems) > 1:
        return [f"error: {err.source}: {len(err.problems)} problems"] + [f"  {p}" for p in err.problems]
    message = _one_line(str(err))
    if isinstance(err, (BadInput, RunFailed)):
        return [f"error: {message}"]
    return [f"error: {type(err).__name__}: {message}" if message else f"error: {type(err).__name__}"]


class _ReportingGroup(TyperGroup):
    """Runs a command; an exception it raises becomes ``error: …`` lines and exit code 2 (bad input) or 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # normal exits and usage errors: typer reports them
        except Exception as err:  # noqa: BLE001 - every other error is reported here, once
            code = 2 if isinstance(err, BadInput) else 1
            if ctx.params.get("debug"):
                traceback.print_exception(err, file=sys.stderr)
            else:
                for line in _error_lines(err):
                    typer.echo(line, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_ReportingGroup,
    help=APP_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)
console = Console()
_options = {"debug": False}
app.add_typer(plot_app, name="plot")


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="show full tracebacks (and Prefect's) instead of one line"),
) -> None:
    _options["debug"] = debug
    _show_progress_lines()


def _show_progress_lines() -> None:
    """Off a terminal, long work reports progress as log lines (:mod:`pipeline.progress`): print them on stderr."""
    logger = logging.getLogger("softcon.progress")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _DropTraceback(logging.Filter):
    """Keeps a log record's message and drops its traceback: the CLI reports the error itself, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


_DROP_TRACEBACK = _DropTraceback()


def _offline_defaults() -> None:
    """Settings that keep Prefect and the hubs offline unless the user configured otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's INFO chatter drowns the flow's counts
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")  # in-task retries reach the run's log
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # a failed flow and its parent each log a traceback
        if _options["debug"]:
            logging.getLogger(name).removeFilter(_DROP_TRACEBACK)
        else:
            logging.getLogger(name).addFilter(_DROP_TRACEBACK)


def _checked_manifest(path: Path):
    """The manifest at ``path``, validated and checked against this machine (:mod:`pipeline.preflight`)."""
    from pipeline.manifest import ManifestError, load_manifest
    from pipeline.preflight import preflight

    manifest = load_manifest(path)
    problems = preflight(manifest)
    if problems:
        raise ManifestError(str(path), problems)
    return manifest


def _require_archive(store: str) -> None:
    from pipeline.store import archive_exists

    if not archive_exists(store):
        raise BadInput(f"{store}: no softcon archive there; check the path (softcon curate MANIFEST creates one)")


@app.command()
def validate(manifest: Path = typer.Argument(..., help="data_manifest.yaml to check")) -> None:
    """Check a manifest, and that it can run here; print every problem with its key path, exit 2 if any.

    Also checks the store's folder, local source files, city table, training config and Earth Engine credentials.

    Example: softcon validate data_manifest.yaml
    """
    m = _checked_manifest(manifest)
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
    """Build (or resume) the Zarr archive described by MANIFEST with the Prefect curation flow.

    The checks of `softcon validate` run first: nothing is started when one fails.

    Example: softcon curate data_manifest.yaml
    """
    _offline_defaults()
    checked = _checked_manifest(manifest)
    from flows.curate import curate_manifest
    from pipeline.store import format_failure_kinds

    summary = curate_manifest(checked, dask_address=dask_address, retry_failed=retry_failed,
                              show_progress=progress and sys.stderr.isatty())
    _print_summary(summary)
    retryable = summary["this_run"]["retryable"]
    if retryable:
        reasons = format_failure_kinds(summary["this_run"]["failure_reasons"])
        raise RunFailed(f"{retryable} patches failed after their retries ({reasons}); they are recorded in the "
                        f"archive: rerun with --retry-failed to try them again")


@app.command()
def inspect(
    store: str = typer.Argument(..., help="archive path or fsspec URL, or a run folder or weight file"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Summarise an archive: patch counts, failures, class frequencies, the train/val/test split; or a
    pretraining run, backbone or checkpoint: architecture, bands, normalisation, training data, steps, loss.

    Example: softcon inspect output/ssl4eo_s12_ml_mini.zarr; softcon inspect runs/softcon-mini
    """
    from pipeline.archive import Archive
    from train.describe_run import describe_path, format_description, is_run_path

    if is_run_path(store):
        run = describe_path(store)
        console.print_json(json.dumps(run)) if as_json else console.print(escape(format_description(run)))
        return
    _require_archive(store)
    summary, _ = Archive(store).describe()
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    from pipeline.store import format_failure_kinds

    console.print(f"[bold]{s.get('title')}[/]  {s['path']}  source={s.get('source')}"
                  f"{'  [yellow](synthetic)[/]' if s.get('synthetic') else ''}")
    st = s["status"]
    console.print(f"patches: {s['n_patches']} × {s['n_seasons']} seasons — done {st['done']}, "
                  f"failed {st['failed']}, todo {st['todo']}; labelled images {s['labelled_images']}")
    if s.get("failures"):
        console.print("failures: " + format_failure_kinds(s["failures"]))
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
        if r.get("failure_reasons"):
            console.print("failed this run: " + format_failure_kinds(r["failure_reasons"]))
    if "report" in s:
        console.print(f"report (plots, summary.json): {s['report']}")
    if "split" in s:
        console.print(escape(_split_line(s["split"])))
    if s.get("label_provenance"):
        console.print(escape(f"label provenance: {_plain(s['label_provenance'])}"))


def _split_line(record: dict | None) -> str:
    """One line for a split record (see :mod:`pipeline.split`)."""
    if record is None:
        return "split: none (softcon split STORE writes one)"
    if "error" in record:
        return f"split: damaged: {record['error']}"
    counts = record.get("counts", {})
    total = sum(counts.values()) or 1
    shares = ", ".join(f"{name} {n} ({n / total:.1%})" for name, n in counts.items())
    grid = f", grid {record['grid_km']:g} km" if "grid_km" in record else ""
    return (f"split: by {record.get('by')}, seed {record.get('seed')}{grid} (targets val {record.get('val')}, "
            f"test {record.get('test')}): {shares}; hash {str(record.get('hash'))[:16]}")


def _plain(value) -> str:
    """A summary value as one line: ``key value`` pairs for a mapping (nested values as compact JSON)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v if isinstance(v, (str, int, float)) else json.dumps(v, separators=(',', ':'))}"
                         for k, v in value.items())
    return str(value)


@app.command()
def split(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    by: str = typer.Option("city", help="unit kept whole: city (the sampling city) | grid (coarse grid cells)"),
    val: float = typer.Option(0.1, help="target share of locations in val"),
    test: float = typer.Option(0.2, help="target share of locations in test"),
    seed: int = typer.Option(0, help="seed of the shuffle of the units"),
    grid_km: float = typer.Option(100.0, "--grid-km",
                                  help="grid cell size in km (by grid; by city: locations without a city)"),
) -> None:
    """Rewrite the archive's train/val/test split by location, keeping whole cities (or grid cells) in
    one split; print the realised counts and the split's hash. Curation writes the default split.

    Example: softcon split output/ssl4eo_s12_ml_mini.zarr --by grid --grid-km 100 --seed 1
    """
    from pipeline.split import check_split_arguments, write_split
    from pipeline.store_target import archive_lock

    check_split_arguments(by, val, test, seed, grid_km)
    _require_archive(store)
    with archive_lock(store):  # not while a curation writes the archive
        record = write_split(store, by=by, val=val, test=test, seed=seed, grid_km=grid_km)
    units = ", ".join(f"{name} {n}" for name, n in record["units"].items())
    kind = "grid cells" if by == "grid" else "cities and grid cells" if "grid_km" in record else "cities"
    console.print(escape(f"{store}: {_split_line(record)[len('split: '):]}"))
    console.print(escape(f"units ({kind}): {units}; hash {record['hash']}"))


@app.command()
def locations(
    manifest: Path = typer.Argument(..., help="data_manifest.yaml"),
    out: Path = typer.Option(Path("locations.parquet"), help="GeoParquet to write"),
    plot: Optional[Path] = typer.Option(None, help="also write a map of the locations (PNG)"),
) -> None:
    """Sample the manifest's locations only (GeoParquet and an optional map).

    Example: softcon locations data_manifest.yaml --out locations.parquet --plot locations.png
    """
    from pipeline.manifest import load_manifest
    from pipeline.sampling import (
        load_cities, locations_to_geodataframe, plot_locations, sample_locations, write_locations)

    m = load_manifest(manifest)
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
    protocol: list[str] = typer.Option(["linear", "logistic", "knn", "retrieval"], help="linear (AdamW probe) | logistic (C chosen on val, refit on train+val) | knn | retrieval | finetune"),
    fraction: Optional[float] = typer.Option(None, help="training subset, e.g. 0.1 for BigEarthNet-10%"),
    seed: list[int] = typer.Option([0], help="evaluation seed; repeat it (--seed 0 --seed 1 --seed 2) for mean ± std"),
    out: Path = typer.Option(Path("output/eval"), help="folder for results.json, results.md and plots"),
    device: str = typer.Option("auto"),
    baselines: bool = typer.Option(True, help="add the random-init and raw-pixel baselines"),
    resize_to: Optional[int] = typer.Option(None, help="resize inputs, e.g. 224 for ViTs"),
    allow_overlap: bool = typer.Option(
        False, "--allow-overlap",
        help="archive task: evaluate a checkpoint trained on patches of the test split (refused otherwise; "
             "the report then warns in bold)"),
) -> None:
    """Compare checkpoints on a downstream task: linear probe, kNN, retrieval, fine-tuning.

    Example: softcon evaluate runs/softcon-mini pixels --task archive --opt store=output/ssl4eo_s12_ml_mini.zarr
    """
    _offline_defaults()
    from train.evaluate.run import evaluate as run_evaluation
    from train.evaluate.run import parse_task_options

    seeds = sorted(set(seed))
    by_seed = {}
    for s in seeds:
        folder = Path(out) if len(seeds) == 1 else Path(out) / f"seed-{s}"
        by_seed[s] = run_evaluation(checkpoints, task, parse_task_options(opt), protocols=tuple(protocol),
                                    out_dir=folder, fraction=fraction, seed=s, device=device, baselines=baselines,
                                    resize_to=resize_to, allow_overlap=allow_overlap)
    if len(seeds) == 1:
        md = Path(out) / "results.md"
    else:
        from train.evaluate.seeds import write_seed_summary

        md = write_seed_summary(by_seed, out, task)
    console.print(md.read_text())


@app.command("import-labels")
def import_labels(
    labels_json: Path = typer.Argument(..., help="published SSL4EO-S12-ML JSON (.json or .json.gz)"),
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    overwrite: bool = typer.Option(True, help="allow replacing labels of an earlier import"),
) -> None:
    """Write the published SSL4EO-S12-ML multi-labels into an archive's multi_hot, matched by location
    and S2 L1C image id. Recomputing labels or curating more patches replaces them: import again after.

    Example: softcon import-labels ssl4eo-s12-ml.json.gz output/ssl4eo_s12_ml_mini.zarr
    """
    from pipeline.published_labels import PublishedLabelsError, format_report, import_published_labels

    _require_archive(store)
    try:
        report = import_published_labels(labels_json, store, overwrite=overwrite)
    except PublishedLabelsError as err:
        raise BadInput(f"{labels_json}: {err}") from err
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
    over the archive's shards), e.g. with another presence threshold or after an import-labels.

    Example: softcon labels output/ssl4eo_s12_ml_mini.zarr --presence-threshold 0.05
    """
    from pipeline.labels import relabel_archive
    from pipeline.progress import progress_bar

    _require_archive(store)
    try:
        with progress_bar(sys.stderr.isatty()) as bar:
            task = bar.add_task("labelling patches", total=None, status="")

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            counts = relabel_archive(store, presence_threshold, min_valid_fraction, batch_patches, on_region=advance)
    except ValueError as err:  # a threshold out of range
        raise BadInput(str(err)) from err
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
    """Pretrain a backbone on an archive (SoftCon by default). Under torchrun it runs DDP.

    Example: softcon pretrain configs/pretrain_mini.yaml
    """
    _offline_defaults()
    from pydantic import ValidationError

    from train.pretrain import run_pretraining

    if not config.is_file():
        raise BadInput(f"{config}: training config not found")
    try:
        summary = run_pretraining(config, archive=archive, resume=resume, epochs=epochs,
                                  progress=progress and sys.stderr.isatty())
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise BadInput(f"{config}: invalid training config: {problems}") from err
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
    split: list[str] = typer.Option(["train"], help="split to use, repeatable (train | val | test), "
                                    "or 'all' for every done patch"),
) -> None:
    """Per-band mean and std of an archive's modality (for normalisation), written as JSON.

    Uses the archive's train split unless --split says otherwise; the file records the splits used.

    Example: softcon stats output/ssl4eo_s12_ml_mini.zarr --modality s2_l1c --out stats.json
    """
    from pipeline.bands import MODALITY_BANDS
    from pipeline.statistics import archive_statistics
    from train.data import save_statistics

    if modality not in MODALITY_BANDS:
        raise BadInput(f"--modality {modality}: unknown modality; choose one of {', '.join(MODALITY_BANDS)}")
    _require_archive(store)
    st = archive_statistics(store, modality, splits="all" if split == ["all"] else split, max_patches=max_patches,
                            show_progress=sys.stderr.isatty())
    save_statistics(out, modality, st.bands, st.mean, st.std, **st.metadata())
    for b, m_, s_ in zip(st.bands, st.mean, st.std):
        console.print(f"{b:>4}  mean {float(m_):10.2f}  std {float(s_):10.2f}")
    used = st.splits if isinstance(st.splits, str) else ", ".join(st.splits)
    console.print(f"splits: {used} ({st.n_patches} patches) → {out}")


@app.command()
def study(
    config: Optional[Path] = typer.Argument(None, help="study YAML (default: the preset's configs/study_<preset>.yaml)"),
    preset: Optional[str] = typer.Option(None, help="cpu | gpu: run the shipped config instead of CONFIG"),
    report_only: bool = typer.Option(False, help="only rewrite the report from what the study has done so far"),
) -> None:
    """Compare the pretraining losses: curate, pretrain every method × seed, evaluate, write docs/study.md.

    Resumable: a rerun continues where a killed study stopped. Example: softcon study --preset cpu
    """
    _offline_defaults()
    from train.study import load_study_config, run_study, study_config_path
    from train.study.report import write_study_report

    path = study_config_path(config, preset)
    cfg = load_study_config(path)
    command = f"softcon study {path}" if config is not None else f"softcon study --preset {preset or 'cpu'}"
    if report_only:
        console.print(f"report: {write_study_report(cfg, command=command)}")
        return
    summary = run_study(cfg, say=console.print, command=command)
    console.print(f"{summary['units']} (method, seed) units in {summary['seconds'] / 60:.1f} min; "
                  f"report: {summary['report']}")


if __name__ == "__main__":
    app()
