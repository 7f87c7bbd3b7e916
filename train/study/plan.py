"""The plan of a study: one unit per (method, seed), and where each of its outputs lives.

Layout under the study's ``output_dir``::

    study_config.yaml                      the exact (resolved) config of the last invocation
    timings.json                           seconds of every unit that did work (summed over invocations)
    runs/<method>/seed<k>/                 pretraining run folders (train.pretrain), study_done.json last
    eval/<target>/<method>/seed<k>/        results.json of train.evaluate on the archive's test split
    smoke/<task>/<method>/seed<k>/         results.json of the real-data smoke checks
    similarity/<method>/seed<k>.json       label- vs embedding-similarity of test pairs
    features/                              the feature cache of train.evaluate

A unit's step is **done** when its output exists: for a run, ``study_done.json``, written after the
backbone export (which is not atomic: a run killed while exporting is resumed and exports again); the
evaluation folder with its ``results.json`` (evaluations run in ``<folder>.partial``, renamed when
complete); the similarity JSON (written through a temporary file). So a study killed at any moment
continues with the first missing output and never redoes a finished step; an interrupted pretraining
run resumes from its last epoch checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from train.checkpoints import BACKBONE_FILE, latest_checkpoint
from train.evaluate.features import PIXELS, RANDOM_PREFIX
from train.study.config import MethodSpec, StudyConfig

__all__ = ["Unit", "plan_units"]

RESULTS_FILE = "results.json"
DONE_MARKER = "study_done.json"


@dataclass(frozen=True)
class Unit:
    """One (method, seed) of a study and the paths of its outputs."""

    method: MethodSpec
    seed: int
    root: Path
    backbone: str

    @property
    def key(self) -> str:
        return f"{self.method.name}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.method.name / f"seed{self.seed}"

    @property
    def checkpoint(self) -> str:
        """What :func:`train.evaluate.run.evaluate` is given: the run folder, ``random:<arch>`` or ``pixels``."""
        if self.method.features == "pixels":
            return PIXELS
        return str(self.run_dir) if self.method.pretrained else f"{RANDOM_PREFIX}{self.backbone}"

    @property
    def done_marker(self) -> Path:
        """Written by the study after the run exported its backbone (the export itself is not atomic)."""
        return self.run_dir / DONE_MARKER

    def pretrain_done(self) -> bool:
        return not self.method.pretrained or (self.done_marker.is_file() and (self.run_dir / BACKBONE_FILE).is_file())

    def can_resume(self) -> bool:
        """A run folder with an epoch checkpoint but no export yet: continue it."""
        return self.run_dir.is_dir() and latest_checkpoint(self.run_dir) is not None

    def eval_dir(self, target: str) -> Path:
        return self.root / "eval" / target / self.method.name / f"seed{self.seed}"

    def smoke_dir(self, task: str) -> Path:
        return self.root / "smoke" / task / self.method.name / f"seed{self.seed}"

    def similarity_file(self) -> Path:
        return self.root / "similarity" / self.method.name / f"seed{self.seed}.json"


def is_done(result_dir: Path) -> bool:
    """True when an evaluation folder holds its ``results.json``."""
    return (result_dir / RESULTS_FILE).is_file()


def plan_units(cfg: StudyConfig) -> list[Unit]:
    """Every (method, seed), seed-major: every method of the first seed, then the next seed.

    So a study stopped early still compares every method on the same seeds.
    """
    root = Path(cfg.output_dir)
    return [Unit(m, s, root, cfg.backbone) for s in cfg.seeds for m in cfg.methods]
