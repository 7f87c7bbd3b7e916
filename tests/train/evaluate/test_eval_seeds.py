"""Several evaluation seeds: mean ± sample standard deviation of every headline metric."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from train.evaluate.seeds import aggregate_seeds, seeds_markdown


def results(values: dict[str, float]) -> dict:
    return {"checkpoints": {"run": {"linear": {"metrics": {"mAP_macro": values["linear"]}},
                                    "knn": {"metrics": {"mAP_macro": values["knn"]}}}}}


def test_mean_and_sample_std_over_seeds():
    by_seed = {0: results({"linear": 0.70, "knn": 0.6}), 1: results({"linear": 0.74, "knn": 0.6}),
               2: results({"linear": 0.75, "knn": 0.6})}
    agg = aggregate_seeds(by_seed)
    lin = agg["run"]["linear"]["mAP_macro"]
    assert lin["mean"] == pytest.approx(np.mean([0.70, 0.74, 0.75]))
    assert lin["std"] == pytest.approx(np.std([0.70, 0.74, 0.75], ddof=1))
    assert agg["run"]["knn"]["mAP_macro"]["std"] == 0.0  # a seed-independent protocol shows its 0
    md = seeds_markdown(agg, [0, 1, 2], "archive")
    assert f"{100 * lin['mean']:.2f} ± {100 * lin['std']:.2f}" in md and "60.00 ± 0.00" in md


def test_one_seed_has_no_std():
    agg = aggregate_seeds({3: results({"linear": 0.5, "knn": 0.4})})
    assert math.isnan(agg["run"]["linear"]["mAP_macro"]["std"])


@pytest.mark.slow
def test_cli_with_three_seeds_writes_the_summary(tmp_path):
    from archive_helpers import synthetic_archive

    from flows.cli import app

    store = synthetic_archive(tmp_path / "a.zarr", n_locations=10, size_px=16, patches_per_shard=5)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "pixels", "--task", "archive", "--opt", f"store={store}",
                                   "--protocol", "linear", "--protocol", "knn", "--no-baselines",
                                   "--seed", "0", "--seed", "1", "--seed", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "results_seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    cell = summary["checkpoints"]["pixels"]["linear"]["mAP_macro"]
    per_seed = [json.loads((out / f"seed-{s}" / "results.json").read_text())["checkpoints"]["pixels"]["linear"]
                ["metrics"]["mAP_macro"] for s in (0, 1, 2)]
    assert cell["values"] == per_seed and cell["mean"] == pytest.approx(np.mean(per_seed))
    assert "± " in (out / "results_seeds.md").read_text()
