"""Prefect flow: evaluate pretrained checkpoints (plus baselines) on downstream tasks.

One task per (task name) so that several downstream tasks can run in parallel on a task runner;
each writes ``results.json``, ``results.md`` and plots under ``out_dir/<task>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE


@task(name="evaluate-task", cache_policy=NO_CACHE)
def evaluate_task(checkpoints: list[str], task_name: str, task_kwargs: dict[str, Any], protocols: list[str],
                  out_dir: str, fraction: float | None, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    from train.evaluate.run import evaluate

    results = evaluate(checkpoints, task_name, task_kwargs, protocols=protocols, out_dir=out_dir,
                       fraction=fraction, seed=seed, **options)
    get_run_logger().info("%s: results in %s", task_name, out_dir)
    return results


@flow(name="evaluate-checkpoints")
def evaluate_checkpoints(checkpoints: list[str], tasks: dict[str, dict[str, Any]],
                         protocols: list[str] | None = None, out_dir: str = "output/eval",
                         fraction: float | None = None, seed: int = 0,
                         options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoints`` on every task in ``tasks`` (name → reader arguments)."""
    protocols = protocols or ["linear", "logistic", "knn", "retrieval"]
    futures = {name: evaluate_task.submit(checkpoints, name, kwargs, protocols, str(Path(out_dir) / name),
                                          fraction, seed, options or {})
               for name, kwargs in tasks.items()}
    return {name: fut.result() for name, fut in futures.items()}
