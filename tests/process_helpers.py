"""Run ``softcon curate`` in a subprocess and kill it like a crash (for the kill-and-resume tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil


def start_curate(manifest: Path, env: dict, log: Path, *extra: str) -> subprocess.Popen:
    """``softcon curate MANIFEST --no-progress`` in its own session; output appended to ``log``.

    Output goes to a file: a pipe could be held open by a grandchild and block the test.
    """
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", "curate", str(manifest), "--no-progress", *extra],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (Dask workers, Prefect's temporary server), like a crash."""
    parent = psutil.Process(pid)
    procs = [parent] + parent.children(recursive=True)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
