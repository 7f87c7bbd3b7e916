"""What the ``softcon`` commands share: the console, the global options, offline defaults and the checks
of a manifest or an archive given on the command line (:mod:`flows.cli` and the command modules).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rich.console import Console

from pipeline.errors import BadInput

__all__ = ["checked_manifest", "cli_options", "console", "offline_defaults", "require_archive"]

console = Console()
#: Global options of the command line, set by its callback (``--debug``).
cli_options = {"debug": False}


class _DropTraceback(logging.Filter):
    """Keeps a log record's message and drops its traceback: the CLI reports the error itself, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


_DROP_TRACEBACK = _DropTraceback()


def offline_defaults() -> None:
    """Settings that keep Prefect and the hubs offline unless the user configured otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's INFO chatter drowns the flow's counts
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")  # in-task retries reach the run's log
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # a failed flow and its parent each log a traceback
        if cli_options["debug"]:
            logging.getLogger(name).removeFilter(_DROP_TRACEBACK)
        else:
            logging.getLogger(name).addFilter(_DROP_TRACEBACK)


def checked_manifest(path: Path):
    """The manifest at ``path``, validated and checked against this machine (:mod:`pipeline.preflight`)."""
    from pipeline.manifest import ManifestError, load_manifest
    from pipeline.preflight import preflight

    manifest = load_manifest(path)
    problems = preflight(manifest)
    if problems:
        raise ManifestError(str(path), problems)
    return manifest


def require_archive(store: str) -> None:
    from pipeline.store import archive_exists

    if not archive_exists(store):
        raise BadInput(f"{store}: no softcon archive there; check the path (softcon curate MANIFEST creates one)")
