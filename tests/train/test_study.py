"""``softcon study``: a toy study end to end, resuming, the presets, and pretraining never reading the reference."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
import zarr

import train.study.runner as runner
from pipeline.errors import BadInput
from train.study import load_study_config, plan_units, run_study, study_config_path
from train.study.config import resolve_paths

ROOT = Path(__file__).resolve().parents[2]
TOY_ARCHIVE = {"manifest": str(ROOT / "data_manifest.yaml"), "n_locations": 30, "size_px": 16,
               "patches_per_shard": 16, "workers": 1}
TOY_TRAINING = {"crop_size": 16, "epochs": 1, "max_steps_per_epoch": 2, "warmup_epochs": 0, "batch_size": 8,
                "num_workers": 0, "bn_recalibration_batches": 1, "proj_hidden": 64, "proj_out": 32, "pred_hidden": 64}
TOY_EVAL = {"protocols": ["logistic", "knn", "retrieval"], "logistic_Cs": [0.1], "knn_k": [3], "retrieval_k": [5],
            "bootstrap_resamples": 20, "rare_classes": 2, "batch_size": 64, "device": "cpu", "similarity_pairs": 200}


def toy_config(tmp: Path, store: Path, **changes) -> dict:
    cfg = {"name": "toy", "toy": True, "output_dir": str(tmp / "out"), "report": str(tmp / "docs" / "study.md"),
           "figures_dir": str(tmp / "docs" / "figures"), "archive": {**TOY_ARCHIVE, "store": str(store)},
           "training": {"backbone": "resnet18", **TOY_TRAINING},
           "methods": [{"name": "moco_v3", "loss": {"name": "moco_v3", "options": {"temperature": 0.2}}},
                       {"name": "softcon-l1-cos", "loss": {"name": "softcon", "options": {
                           "temperature": 0.2, "lam": 1.0, "label_similarity": "cosine"}}}],
           "seeds": [0, 1], "evaluation": {**TOY_EVAL, "similarity_methods": ["moco_v3", "softcon-l1-cos"]}}
    cfg.update(changes)
    return cfg


def write(tmp: Path, cfg: dict) -> Path:
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory, shared_data):
    """The toy study, run once: 2 methods × 2 seeds, 1 epoch of 2 steps, 16 px, plus a smoke check."""
    tmp = tmp_path_factory.mktemp("study")
    raw = toy_config(tmp, tmp / "archive.zarr")
    raw["evaluation"]["smoke"] = [{"task": "bigearthnet_v1", "root": str(shared_data / "bigearthnet_v1")}]
    cfg = load_study_config(write(tmp, raw))
    t0 = time.process_time()  # CPU seconds: the wall time of a shared test machine depends on its other jobs
    summary = run_study(cfg, say=lambda _: None)
    return cfg, summary, time.process_time() - t0


def test_toy_study_end_to_end(toy):
    cfg, summary, seconds = toy
    assert seconds < 120  # the whole toy study in under 2 minutes of CPU
    units = plan_units(cfg)
    assert summary["units"] == len(units) == 4
    for u in units:
        assert u.pretrain_done()
        for target in ("multi_hot", "reference"):
            res = json.loads((u.eval_dir(target) / "results.json").read_text())
            assert res["task_kwargs"]["target"] == target
            assert len(res["classes"]) == (9 if target == "multi_hot" else 19)
            row = next(iter(res["checkpoints"].values()))
            assert {"logistic", "knn", "retrieval"} <= set(row)
            assert "intervals" in row["logistic"]
        sim = json.loads(u.similarity_file().read_text())
        assert -1 <= sim["spearman"] <= 1 and sim["curve"]
    text = Path(cfg.report).read_text()
    assert "Toy run, not the study" in text
    assert "Reference land cover" in text and "Dynamic World multi-hot" in text
    assert text.count("| moco_v3 |") >= 3 and text.count("| softcon-l1-cos |") >= 3  # 2 tables + similarity
    assert "too few to rank methods" in text and "| bigearthnet_v1 |" in text
    for png in ("toy_bars.png", "toy_similarity.png"):
        assert (Path(cfg.figures_dir) / png).stat().st_size > 1000
    timings = json.loads((Path(cfg.output_dir) / "timings.json").read_text())
    assert {"curation", "pretrain/moco_v3/seed0", "eval/reference/softcon-l1-cos/seed1"} <= set(timings)


def test_rerun_redoes_nothing(toy, monkeypatch):
    cfg, _, _ = toy
    outputs = [p for u in plan_units(cfg) for p in (u.run_dir / "backbone.safetensors",
                                                    u.eval_dir("reference") / "results.json")]
    before = {p: p.stat().st_mtime_ns for p in outputs}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished step was redone")

    monkeypatch.setattr("train.pretrain.run_pretraining", refuse)
    monkeypatch.setattr("train.evaluate.run.evaluate", refuse)
    run_study(cfg, say=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_killed_study_continues_where_it_stopped(toy, tmp_path, monkeypatch):
    cfg, _, _ = toy  # its archive is reused (curation is itself resumable and skips done shards)
    raw = toy_config(tmp_path, Path(cfg.archive.store), seeds=[0])
    cfg2 = load_study_config(write(tmp_path, raw))
    real_evaluate = runner._evaluate_into
    trained: list[str] = []
    real_pretrain = runner._pretrain

    def pretrain_spy(c, unit):
        trained.append(unit.key)
        real_pretrain(c, unit)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the study is killed right after its first pretraining run

    monkeypatch.setattr(runner, "_pretrain", pretrain_spy)
    monkeypatch.setattr(runner, "_evaluate_into", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg2, say=lambda _: None)
    first = plan_units(cfg2)[0]
    assert trained == [first.key] and first.pretrain_done()
    mtime = (first.run_dir / "backbone.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(runner, "_evaluate_into", real_evaluate)
    run_study(cfg2, say=lambda _: None, report=False)
    assert trained == [first.key, plan_units(cfg2)[1].key]  # the first run was not redone
    assert (first.run_dir / "backbone.safetensors").stat().st_mtime_ns == mtime
    assert all((u.eval_dir("reference") / "results.json").is_file() for u in plan_units(cfg2))


def test_pretraining_never_reads_the_reference(toy, tmp_path, monkeypatch):
    cfg, _, _ = toy
    read: list[str] = []
    real = zarr.Group.__getitem__

    def spy(self, key):
        read.append(str(key))
        return real(self, key)

    monkeypatch.setattr(zarr.Group, "__getitem__", spy)
    from train.pretrain import run_pretraining
    from train.study.config import pretrain_config_for

    for method in cfg.methods:  # SoftCon (labels) and MoCo v3
        run_pretraining(pretrain_config_for(cfg, method, 0, str(tmp_path / method.name)), progress=False)
    assert "multi_hot" in read and "s2_l1c" in read  # the spy sees what pretraining reads
    assert not [k for k in read if k.startswith("reference_")]


def test_gpu_preset_validates_and_runs_at_toy_size_on_cpu(toy, tmp_path):
    cfg, _, _ = toy
    gpu = load_study_config(study_config_path(None, "gpu"))
    assert gpu.training["backbone"] == "resnet50" and gpu.training["crop_size"] == 224
    assert len(gpu.seeds) == 3 and any(m.loss is None for m in gpu.methods)
    softcon = [m for m in gpu.methods if m.loss and m.loss.name == "softcon"]
    assert len({m.loss.options["lam"] for m in softcon}) >= 2
    assert {m.loss.options["label_similarity"] for m in softcon} == {"cosine", "jaccard"}
    # the same structure (its backbone, methods' losses, evaluation) at toy size, on the CPU
    training = {**gpu.training, **TOY_TRAINING, "amp": False}
    methods = [gpu.methods[0], softcon[0]]
    evaluation = gpu.evaluation.model_copy(update={**TOY_EVAL, "smoke": [], "similarity_methods": [softcon[0].name]})
    toy_gpu = gpu.model_copy(update={
        "toy": True, "training": training, "methods": methods, "seeds": [0], "evaluation": evaluation,
        "archive": gpu.archive.model_copy(update={"store": cfg.archive.store, "n_locations": 30, "size_px": 16,
                                                  "patches_per_shard": 16, "workers": 1}),
        "output_dir": str(tmp_path / "out"), "report": str(tmp_path / "study_gpu.md"),
        "figures_dir": str(tmp_path / "fig")})
    toy_gpu = resolve_paths(type(gpu).model_validate(toy_gpu.model_dump()), tmp_path)
    run_study(toy_gpu, say=lambda _: None)
    unit = plan_units(toy_gpu)[1]
    assert yaml.safe_load((unit.run_dir / "config.yaml").read_text())["backbone"] == "resnet50"
    assert "Toy run, not the study" in Path(toy_gpu.report).read_text()


def test_config_errors_name_the_field(tmp_path):
    raw = toy_config(tmp_path, tmp_path / "a.zarr")
    raw["training"]["seed"] = 3
    with pytest.raises(BadInput, match="training"):
        load_study_config(write(tmp_path, raw))
    raw = toy_config(tmp_path, tmp_path / "a.zarr", seeds=[0, 0])
    with pytest.raises(BadInput, match="seeds"):
        load_study_config(write(tmp_path, raw))
    raw = toy_config(tmp_path, tmp_path / "a.zarr")
    raw["methods"][0]["loss"]["name"] = "nope"
    with pytest.raises(BadInput, match="unknown loss"):
        load_study_config(write(tmp_path, raw))
    with pytest.raises(BadInput, match="preset"):
        study_config_path(None, "tpu")
    assert study_config_path(None, None).name == "study_cpu.yaml"
    load_study_config(study_config_path(None, "cpu"))


def test_pixel_baseline_ablation_overrides_and_stale_runs(toy, tmp_path, monkeypatch):
    cfg, _, _ = toy  # its archive is reused
    ablation = {"name": "softcon-mask0", "training": {"mask_ratio": 0.0},
                "loss": {"name": "softcon", "options": {"temperature": 0.2, "lam": 1.0}}}
    raw = toy_config(tmp_path, Path(cfg.archive.store), seeds=[0],
                     methods=[{"name": "pixel-stats", "features": "pixels"}, ablation])
    raw["evaluation"].update(targets=["multi_hot"], protocols=["knn"], similarity_methods=[])
    cfg2 = load_study_config(write(tmp_path, raw))
    run_study(cfg2, say=lambda _: None)
    pixels, softcon = plan_units(cfg2)
    assert not pixels.run_dir.exists()  # nothing is trained for the pixel baseline
    res = json.loads((pixels.eval_dir("multi_hot") / "results.json").read_text())
    assert list(res["checkpoints"]) == ["pixels"] and res["checkpoints"]["pixels"]["knn"]["metrics"]
    trained = yaml.safe_load((softcon.run_dir / "config.yaml").read_text())
    assert trained["mask_ratio"] == 0.0 and cfg2.training.get("mask_ratio", 0.5) == 0.5  # only this method
    text = Path(cfg2.report).read_text()
    assert "pixel-stats (per-band mean and std" in text and 'budget changed: `{"mask_ratio": 0.0}`' in text

    # the same output folder with another budget: refused before any work, the run folder untouched
    raw["training"]["max_steps_per_epoch"] = 3
    changed = load_study_config(write(tmp_path, raw))
    monkeypatch.setattr(runner, "curate_archive", lambda *a, **k: pytest.fail("worked before checking the runs"))
    with pytest.raises(BadInput, match=r"softcon-mask0/seed0: trained with another config \(max_steps_per_epoch"):
        run_study(changed, say=lambda _: None)

    for method, match in [({"name": "p", "features": "pixels", "loss": {"name": "simclr"}}, "takes no loss"),
                          ({"name": "r", "training": {"mask_ratio": 0.0}}, "need a loss"),
                          ({**ablation, "training": {"seed": 1}}, "set per run"),
                          ({**ablation, "training": {"mask_ratio": 2}}, "mask_ratio")]:
        with pytest.raises(BadInput, match=match):
            load_study_config(write(tmp_path, {**raw, "methods": [method]}))
