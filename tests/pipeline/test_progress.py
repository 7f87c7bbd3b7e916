"""pipeline.progress: a bar on a terminal, plain log lines otherwise (issue 14: long work shows progress)."""

from __future__ import annotations

import logging

from pipeline.progress import LogProgress, progress_bar


def test_off_a_terminal_progress_is_logged_with_counts_status_and_completion(caplog):
    caplog.set_level(logging.INFO, logger="softcon.progress")
    with progress_bar(False, every_s=3600) as bar:
        assert isinstance(bar, LogProgress)
        task = bar.add_task("extracting features", total=4, status="")
        for _ in range(4):
            bar.update(task, advance=1, status="batch ok")
    lines = [r.getMessage() for r in caplog.records if r.name == "softcon.progress"]
    # the first update is logged at once, then nothing for an hour, then the completion
    assert len(lines) == 2, lines
    assert lines[0].startswith("extracting features: 1/4 (25%) batch ok")
    assert lines[1].startswith("extracting features: 4/4 (100%) batch ok")


def test_unknown_totals_and_completed_counts_are_reported(caplog):
    caplog.set_level(logging.INFO, logger="softcon.progress")
    bar = LogProgress(every_s=0)
    task = bar.add_task("labelling patches", total=None, status="")
    bar.update(task, completed=3)
    bar.update(task, completed=10, total=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "softcon.progress"]
    assert lines[0].startswith("labelling patches: 3,") and lines[1].startswith("labelling patches: 10/10 (100%)")


def test_on_a_terminal_it_is_a_rich_progress_bar():
    from rich.progress import Progress

    assert isinstance(progress_bar(True), Progress)
