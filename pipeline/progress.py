"""The progress bar of long-running commands (rich), or a silent stand-in with the same calls.

Callers add tasks with a ``status`` field (``add_task(description, total=..., status="")``) and
update it as work finishes (``update(task, advance=1, status="...")``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SilentProgress", "progress_bar"]


class SilentProgress:
    """Accepts the calls of :class:`rich.progress.Progress` that this project makes, and shows nothing."""

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def add_task(self, description: str, **kwargs: Any) -> int:
        return 0

    def update(self, task: int, **kwargs: Any) -> None:
        return None


def progress_bar(show: bool) -> Any:
    """A rich progress bar (description, bar, done/total, status, elapsed, remaining) when ``show``."""
    if not show:
        return SilentProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
