"""`softcon inspect` on a pretraining run folder, its backbone and its checkpoint; bad paths exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app


@pytest.fixture(scope="module")
def run(small_run):
    return small_run(n_locations=12, size_px=32, patches_per_shard=4, cloud_probability=0.3)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_inspect_run_folder(run):
    folder, archive = run
    result = cli("inspect", str(folder))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    record = json.loads((folder / "training_data.json").read_text())
    for needle in ("architecture: resnet18 on s2_l1c", "loss softcon", "bands (13): B1, B2",
                   "normalisation: softcon (mean±std per band): B1", f"training data: {record['n_patches']} patches of",
                   "split by city, seed 0", "epoch 1 of 1", "2 steps", "last logged loss",
                   f"exported backbone: {folder}/backbone.safetensors"):
        assert needle in text, (needle, text)
    assert archive in text.replace(" ", "") or archive in text


def test_inspect_run_json_and_files(run):
    folder, _ = run
    d = json.loads(cli("inspect", str(folder), "--json").output)
    assert d["kind"] == "run" and d["steps"] == 2 and d["architecture"] == "resnet18"
    assert d["training_data"]["splits"] == ["train"] and len(d["bands"]) == 13
    assert len(d["normalizer"]["mean"]) == 13 and d["last_loss"] > 0
    assert d["backbone"]["parameters"] > 11_000_000  # ResNet-18 without its classifier: about 11.2 M
    bb = json.loads(cli("inspect", str(folder / "backbone.safetensors"), "--json").output)
    assert bb["kind"] == "backbone" and bb["parameters"] == d["backbone"]["parameters"]
    assert bb["training_data"]["n_patches"] == d["training_data"]["n_patches"]
    ck = next((folder / "checkpoints").glob("epoch-*.safetensors"))
    result = cli("inspect", str(ck))
    assert result.exit_code == 0 and "checkpoint:" in result.output and "2 steps" in result.output


@pytest.mark.parametrize("name, needle", [
    ("missing-run", "no softcon archive there"),
    ("missing.safetensors", "file not found"),
    ("notes.txt", "not a safetensors file"),
])
def test_bad_path_exits_2_with_one_line(tmp_path, name, needle):
    (tmp_path / "notes.txt").write_text("not weights")
    path = tmp_path / name
    result = cli("inspect", str(path))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and needle in lines[0], result.output
