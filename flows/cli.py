"""The ``softcon`` command line: validate manifests, curate archives, inspect them.

Errors are reported once, by :class:`_ReportingGroup`: one line ``error: …`` and exit code 2 for bad input
(:class:`pipeline.errors.BadInput` and its subclasses), 1 for anything else; ``softcon --debug COMMAND``
prints the full traceback instead.

The commands live in modules by topic and are registered here, on the one ``app``, in the order
``softcon --help`` lists them: :mod:`flows.cli_archive` (inspect, split, locations, import-labels,
labels, stats), :mod:`flows.cli_train` (evaluate, pretrain) and :mod:`flows.cli_plot` (``plot``);
what they share is in :mod:`flows.cli_common`.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from flows import cli_archive, cli_train
from flows.cli_common import checked_manifest as _checked_manifest
from flows.cli_common import cli_options as _options
from flows.cli_common import console
from flows.cli_common import offline_defaults as _offline_defaults
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
    cli_archive.print_summary(summary)
    retryable = summary["this_run"]["retryable"]
    if retryable:
        reasons = format_failure_kinds(summary["this_run"]["failure_reasons"])
        raise RunFailed(f"{retryable} patches failed after their retries ({reasons}); they are recorded in the "
                        f"archive: rerun with --retry-failed to try them again")


# Commands of the topic modules, in the order of `softcon --help`.
app.command()(cli_archive.inspect)
app.command()(cli_archive.split)
app.command()(cli_archive.locations)
app.command()(cli_train.evaluate)
app.command("import-labels")(cli_archive.import_labels)
app.command()(cli_archive.labels)
app.command()(cli_train.pretrain)
app.command()(cli_archive.stats)


@app.command()
def study(
    config: Optional[Path] = typer.Argument(
        None, help="study YAML (default: the preset's configs/study_<preset>.yaml)"),
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
