"""Progress of long-running work: a rich progress bar on a terminal, plain log lines otherwise.

Callers add tasks with a ``status`` field (``add_task(description, total=..., status="")``) and
update them as work finishes (``update(task, advance=1, status="...")`` or ``completed=n``). Off a
terminal (CI, a Prefect worker, a file) the same calls log one line per task at most every
``every_s`` seconds and when a task completes, e.g.
``pretraining: 120/400 (30%) loss 5.1234, 12 s``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["LogProgress", "SilentProgress", "progress_bar"]

log = logging.getLogger("softcon.progress")


class LogProgress:
    """The calls of :class:`rich.progress.Progress` that this project makes, reported as log lines.

    Args:
        every_s: Least number of seconds between two lines of one task (its completion is always logged).
        logger: Where the lines go (``softcon.progress`` by default).
    """

    def __init__(self, every_s: float = 30.0, logger: logging.Logger | None = None):
        self.every_s = every_s
        self.log = logger or log
        self._tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task = len(self._tasks)
        self._tasks[task] = {"description": description, "total": total, "completed": 0.0,
                             "fields": dict(fields), "start": time.monotonic(), "last": float("-inf"),
                             "finished": False}
        return task

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        t = self._tasks[task]
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        t["fields"].update(fields)
        now = time.monotonic()
        done = t["total"] is not None and t["completed"] >= t["total"]
        if (done and not t["finished"]) or now - t["last"] >= self.every_s:
            t["last"], t["finished"] = now, done
            self.log.info("%s", self.line(task))

    def line(self, task: int) -> str:
        """The line for ``task`` as it stands: ``description: done/total (pct) status, elapsed``."""
        t = self._tasks[task]
        done, total = t["completed"], t["total"]
        count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
        status = str(t["fields"].get("status", "") or "")
        elapsed = time.monotonic() - t["start"]
        return f"{t['description']}: {count}{' ' + status if status else ''}, {elapsed:.0f} s"


class SilentProgress(LogProgress):
    """Accepts the same calls and reports nothing (for callers that report progress themselves)."""

    def update(self, task: int, **kwargs: Any) -> None:
        return None


def progress_bar(show: bool, every_s: float = 30.0) -> Any:
    """A rich progress bar (description, bar, done/total, status, elapsed, remaining) when ``show``
    (a terminal), otherwise :class:`LogProgress` lines at most every ``every_s`` seconds per task.
    """
    if not show:
        return LogProgress(every_s)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
