"""Run a study: curate the archive, then pretrain and evaluate every (method, seed), then write the report.

Steps (each skipped when its output exists, :mod:`train.study.plan`):

1. **Curation** (:func:`curate_archive`): the synthetic archive of the config (a base manifest with
   ``n_locations``, patch size, seeds and modalities replaced) through the curation steps of
   :mod:`pipeline.curate` (``prepare`` → ``pending_shards`` → ``process_shard``); curation is itself
   resumable (done shards are skipped) and writes the default train/val/test split.
2. Per (method, seed), seed-major: **pretraining** (:func:`train.pretrain.run_pretraining`, the shared
   budget plus the method's loss and the seed; an interrupted run resumes from its last epoch), then
   **evaluation** on the archive's test split for every target (:func:`train.evaluate.run.evaluate`:
   logistic probe, kNN, retrieval, bootstrap intervals by location), the **label- vs embedding-similarity**
   data (:mod:`train.study.similarity`) and the **smoke checks** on the real samples.
3. **Report** (:func:`train.study.report.write_study_report`): docs/study.md and its figures.

``timings.json`` records the seconds of every step that did work; the report's wall time is their sum.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import BadInput
from train.study.config import StudyConfig, pretrain_config_for
from train.study.plan import Unit, is_done, plan_units

log = logging.getLogger(__name__)

__all__ = ["Timings", "curate_archive", "run_study", "study_manifest"]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


class Timings:
    """Seconds per step (``curation``, ``pretrain/<method>/seed<k>``, …), kept in ``timings.json``."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, key: str, seconds: float) -> None:
        self.data[key] = round(self.data.get(key, 0.0) + seconds, 2)
        write_json(self.path, self.data)

    def total(self, prefix: str = "") -> float:
        return sum(v for k, v in self.data.items() if k.startswith(prefix))


# --------------------------------------------------------------------------- curation
def study_manifest(cfg: StudyConfig):
    """The curation manifest of the study: the base manifest with the ``archive`` keys of the config."""
    from pipeline.manifest import Manifest, load_manifest

    spec = cfg.archive
    base = load_manifest(spec.manifest)
    if base.source.kind != "synthetic":
        raise BadInput(f"archive.manifest: {spec.manifest} curates from {base.source.kind!r}; the study needs the "
                       "synthetic source (its reference land cover is the transfer task)")
    data = base.model_dump(mode="json")
    data["name"] = "study-archive"  # not the study's name: studies with the same archive keys share one
    data["source"]["synthetic"]["seed"] = spec.world_seed
    data["sampling"].update(n_locations=spec.n_locations, seed=spec.sampling_seed)
    data["patch"]["size_px"] = spec.size_px
    data["store"].update(path=spec.store, patches_per_shard=spec.patches_per_shard)
    for name in data["modalities"]:
        if isinstance(data["modalities"][name], dict) and "enabled" in data["modalities"][name]:
            data["modalities"][name]["enabled"] = name in spec.modalities
    if "pretrain" in data:
        data["pretrain"]["enabled"] = False
    return Manifest.model_validate(data)


def _curate_shard(manifest, layout, shard: int, locations) -> int:
    from pipeline.curate import process_shard

    return process_shard(manifest, layout, shard, locations).done


def curate_archive(cfg: StudyConfig, say: Callable[[str], None] = print) -> bool:
    """Curate (or finish curating) the study's archive; True when any shard was curated now."""
    from pipeline.curate import pending_shards, prepare

    manifest = study_manifest(cfg)
    locations, layout = prepare(manifest)
    shards = pending_shards(manifest, layout)
    if not shards:
        return False
    say(f"curating {len(shards)} shard(s) of {manifest.store.path} ({len(locations)} locations)")
    parts = {s: [loc for loc in locations if layout.shard_slice(s).start <= loc.index < layout.shard_slice(s).stop]
             for s in shards}
    if cfg.archive.workers == 1:
        for s in shards:
            _curate_shard(manifest, layout, s, parts[s])
    else:
        with ProcessPoolExecutor(cfg.archive.workers) as pool:
            for f in [pool.submit(_curate_shard, manifest, layout, s, parts[s]) for s in shards]:
                f.result()
    return True


# --------------------------------------------------------------------------- one unit
def _pretrain(cfg: StudyConfig, unit: Unit) -> None:
    from train.pretrain import run_pretraining

    pcfg = pretrain_config_for(cfg, unit.method, unit.seed, str(unit.run_dir))
    result = run_pretraining(pcfg, resume=unit.can_resume(), progress=False)
    if not result["finished"]:
        raise RuntimeError(f"{unit.key}: pretraining stopped before its last epoch")
    write_json(unit.done_marker, {"steps": result["steps"], "seconds": result["seconds"]})


def _evaluate_into(final: Path, **kwargs: Any) -> None:
    """``train.evaluate.run.evaluate`` into ``<final>.partial``, renamed to ``final`` once complete."""
    from train.evaluate.run import evaluate

    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    evaluate(out_dir=partial, **kwargs)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(final)


def _eval_kwargs(cfg: StudyConfig, unit: Unit) -> dict[str, Any]:
    ev = cfg.evaluation
    return dict(checkpoints=[unit.checkpoint], seed=unit.seed, device=ev.device, baselines=False,
                batch_size=ev.batch_size, cache_dir=str(Path(cfg.output_dir) / "features"), plot_examples=0,
                knn_kwargs={"k": list(ev.knn_k), "primary_k": ev.knn_k[0]},
                retrieval_kwargs={"ks": [*ev.retrieval_k, "all"]}, logistic_kwargs={"Cs": list(ev.logistic_Cs)},
                bootstrap={"n_resamples": ev.bootstrap_resamples} if ev.bootstrap_resamples else False)


def _smoke(cfg: StudyConfig, unit: Unit, say: Callable[[str], None], timings: Timings) -> None:
    """The real-data samples: a format check; a failure is recorded (``error.json``), not raised."""
    for spec in cfg.evaluation.smoke:
        final = unit.smoke_dir(spec.task)
        if is_done(final) or (final / "error.json").is_file():
            continue
        t0 = time.perf_counter()
        kwargs = _eval_kwargs(cfg, unit)
        kwargs.update(bootstrap=False, task=spec.task, task_kwargs={"root": spec.root, **spec.options},
                      protocols=["knn"], knn_kwargs={"k": [1, 3], "primary_k": 1})
        try:
            _evaluate_into(final, **kwargs)
        except Exception as err:  # a smoke check documents the failure instead of stopping the study
            say(f"{unit.key}: smoke check {spec.task} failed: {err}")
            write_json(final / "error.json", {"error": f"{type(err).__name__}: {err}"})
        timings.add(f"smoke/{spec.task}/{unit.key}", time.perf_counter() - t0)


def check_run_config(cfg: StudyConfig, unit: Unit) -> None:
    """Refuse to reuse a run folder that was trained with another config (a changed budget or loss).

    Raises:
        BadInput: naming the run folder and the keys that differ.
    """
    recorded = unit.run_dir / "config.yaml"
    if not unit.method.pretrained or not recorded.is_file():
        return
    want = pretrain_config_for(cfg, unit.method, unit.seed, str(unit.run_dir)).model_dump(mode="json")
    have = yaml.safe_load(recorded.read_text()) or {}
    differ = sorted(k for k in want if k in have and have[k] != want[k])
    if differ:
        raise BadInput(f"{unit.run_dir}: trained with another config ({', '.join(differ)} differ from the study's); "
                       "give the study another output_dir or delete that folder")


def run_unit(cfg: StudyConfig, unit: Unit, timings: Timings, say: Callable[[str], None] = print) -> None:
    """Every missing step of one (method, seed): pretraining, evaluations, similarity, smoke checks."""
    from train.study.similarity import similarity_data

    if not unit.pretrain_done():
        say(f"{unit.key}: pretraining ({'resuming' if unit.can_resume() else 'new run'})")
        t0 = time.perf_counter()
        _pretrain(cfg, unit)
        timings.add(f"pretrain/{unit.key}", time.perf_counter() - t0)
    for target in cfg.evaluation.targets:
        final = unit.eval_dir(target)
        if is_done(final):
            continue
        say(f"{unit.key}: evaluating on {target}")
        t0 = time.perf_counter()
        _evaluate_into(final, task="archive", task_kwargs={"store": cfg.archive.store, "target": target},
                       protocols=list(cfg.evaluation.protocols), **_eval_kwargs(cfg, unit))
        timings.add(f"eval/{target}/{unit.key}", time.perf_counter() - t0)
    if unit.method.name in cfg.evaluation.similarity_methods and not unit.similarity_file().is_file():
        t0 = time.perf_counter()
        write_json(unit.similarity_file(), similarity_data(cfg, unit))
        timings.add(f"similarity/{unit.key}", time.perf_counter() - t0)
    if unit.seed in cfg.seeds[: cfg.evaluation.smoke_seeds]:
        _smoke(cfg, unit, say, timings)


# --------------------------------------------------------------------------- the study
def run_study(cfg: StudyConfig, say: Callable[[str], None] = print, report: bool = True,
              command: str | None = None) -> dict[str, Any]:
    """Run (or continue) a whole study; returns a summary (units, seconds, report path).

    Args:
        cfg: The study (paths absolute, :func:`~train.study.config.load_study_config`).
        say: Where progress lines go.
        report: Write docs/study.md and its figures at the end.
        command: The command line to print in the report.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    timings = Timings(out / "timings.json")
    units = plan_units(cfg)
    for unit in units:  # before any work: a stale run folder is refused, not silently reused
        check_run_config(cfg, unit)
    t0 = time.perf_counter()
    if curate_archive(cfg, say):
        timings.add("curation", time.perf_counter() - t0)
    for i, unit in enumerate(units):
        say(f"[{i + 1}/{len(units)}] {unit.key}")
        run_unit(cfg, unit, timings, say)
    summary: dict[str, Any] = {"units": len(units), "seconds": timings.total(), "output_dir": str(out)}
    if report:
        from train.study.report import write_study_report

        t1 = time.perf_counter()
        summary["report"] = str(write_study_report(cfg, command=command))
        timings.add("report", time.perf_counter() - t1)
        summary["seconds"] = timings.total()
    return summary
