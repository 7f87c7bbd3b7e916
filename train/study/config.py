"""The study's configuration (YAML): archive, shared training budget, methods, seeds and evaluation.

One file names everything a study does, so that ``softcon study CONFIG`` is reproducible and the
report can print the exact configuration. Paths are relative to the YAML file. Two files ship:
``configs/study_cpu.yaml`` (≤ 60 min on 2 CPU cores) and ``configs/study_gpu.yaml`` (``--preset gpu``:
ResNet-50, 224 px crops, more epochs, one GPU).

Every method is trained with the **same** budget (``training``: backbone, crop, epochs, batch,
optimiser, augmentations, mask ratio); a method only names its loss. A method without a loss is the
random-initialisation baseline (no pretraining).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import BadInput
from train.pretrain_config import LossConfig, PretrainConfig

__all__ = ["PRESETS", "ArchiveSpec", "EvaluationSpec", "MethodSpec", "SmokeSpec", "StudyConfig", "load_study_config",
           "pretrain_config_for", "study_config_path"]

#: ``--preset`` → the shipped study config (in the repository's ``configs/``).
PRESETS = {"cpu": "study_cpu.yaml", "gpu": "study_gpu.yaml"}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

#: ``training`` keys a study sets per run itself (never in the shared budget).
PER_RUN_KEYS = ("archive", "output_dir", "loss", "seed", "splits")


def _check_budget(v: dict[str, Any]) -> dict[str, Any]:
    """Budget keys only (not the per-run ones), each a valid :class:`PretrainConfig` key and value."""
    bad = [k for k in PER_RUN_KEYS if k in v]
    if bad:
        raise ValueError(f"{bad}: set per run by the study, not in the shared budget")
    PretrainConfig.model_validate(v)
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveSpec(_Strict):
    """The synthetic archive the study curates (a base manifest with a few keys replaced)."""

    manifest: str = "../data_manifest.yaml"
    """Base curation manifest; its source must be ``synthetic`` (the reference product needs it)."""
    store: str = "../output/study/archive.zarr"
    n_locations: int = Field(2000, ge=8)
    size_px: int = Field(64, ge=16)
    """Patch side in pixels (10 m); the training crop is cut from it."""
    sampling_seed: int = 42
    world_seed: int = 0
    modalities: list[Literal["s2_l1c", "s2_l2a", "s1_grd"]] = ["s2_l1c"]
    patches_per_shard: int = Field(64, ge=1)
    workers: int = Field(1, ge=1)
    """Processes curating shards at once."""


class MethodSpec(_Strict):
    """One method: a name (row of the table) and its loss; no loss = random initialisation.

    ``features: pixels`` is the no-network reference row: the per-band spatial mean and std of each
    patch (:class:`train.evaluate.backbones.PixelStatistics`) instead of a backbone's features.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    loss: LossConfig | None = None
    features: Literal["backbone", "pixels"] = "backbone"
    training: dict[str, Any] = {}
    """Ablations only: keys of the shared budget this method changes (e.g. ``mask_ratio``,
    ``batch_size``, ``augment``); the report prints them beside the method. A comparison of losses
    leaves it empty, so every method trains with the same budget."""
    description: str = ""

    @model_validator(mode="after")
    def _pixels_have_no_loss(self) -> MethodSpec:
        if self.features == "pixels" and self.loss is not None:
            raise ValueError(f"method {self.name!r}: features: pixels takes no loss (nothing is pretrained)")
        if self.training:
            if self.loss is None:
                raise ValueError(f"method {self.name!r}: training overrides need a loss (nothing is pretrained)")
            _check_budget(self.training)
        return self

    @property
    def pretrained(self) -> bool:
        return self.loss is not None


class SmokeSpec(_Strict):
    """A real data set evaluated as a format / transfer smoke check (too small to rank methods)."""

    task: Literal["bigearthnet_v1", "bigearthnet_v2", "eurosat"]
    root: str
    options: dict[str, Any] = {}


class EvaluationSpec(_Strict):
    """How each (method, seed) is evaluated (:func:`train.evaluate.run.evaluate` on the archive's test split)."""

    targets: list[Literal["multi_hot", "reference"]] = ["multi_hot", "reference"]
    protocols: list[Literal["linear", "logistic", "knn", "retrieval"]] = ["logistic", "knn", "retrieval"]
    logistic_Cs: list[float] = [1e-3, 1e-2, 1e-1, 1.0]
    knn_k: list[int] = [5, 20]
    retrieval_k: list[int] = [10, 50]
    bootstrap_resamples: int = Field(1000, ge=0)
    """Bootstrap resamples (by location) of every test metric; 0 = no intervals."""
    rare_classes: int = Field(5, ge=0)
    """Per-class AP is reported for this many rarest classes of each target (training-split frequency)."""
    batch_size: int = Field(128, ge=1)
    device: str = "auto"
    similarity_methods: list[str] = []
    """Methods whose label-vs-embedding similarity is plotted (the mechanism SoftCon proposes)."""
    similarity_pairs: int = Field(20000, ge=100)
    smoke: list[SmokeSpec] = []
    smoke_seeds: int = Field(1, ge=0)
    """Smoke checks run for the first ``smoke_seeds`` seeds of every method."""


class StudyConfig(_Strict):
    """A whole study (module docstring)."""

    name: str
    description: str = ""
    output_dir: str = "../output/study"
    """Runs, evaluations, timings; a rerun continues from what is there."""
    report: str = "../docs/study.md"
    figures_dir: str = "../docs/figures"
    archive: ArchiveSpec = ArchiveSpec()
    training: dict[str, Any] = {}
    """The budget every method shares: :class:`~train.pretrain_config.PretrainConfig` keys except
    ``archive``, ``output_dir``, ``loss``, ``seed`` and ``splits`` (the study sets those per run)."""
    methods: list[MethodSpec]
    seeds: list[int] = [0, 1, 2]
    evaluation: EvaluationSpec = EvaluationSpec()
    toy: bool = False
    """A scaled-down run that only exercises the pipeline: the report says its numbers rank nothing."""
    expected_runtime: str = ""
    """What the config is sized for (documentation, printed in the report)."""
    discussion: str | None = None
    """A hand-written Markdown file (path relative to the YAML) included in the report under
    "Discussion": what the numbers of this study mean, written after reading them."""
    source_file: str | None = None

    @field_validator("training")
    @classmethod
    def _budget_only(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_budget(v)

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: duplicate names in {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: need distinct seeds, got {self.seeds}")
        unknown = [m for m in self.evaluation.similarity_methods if m not in names]
        if unknown:
            raise ValueError(f"evaluation.similarity_methods: {unknown} are not methods")
        for m in self.methods:
            if m.loss is not None:
                from train.losses import LOSSES

                if m.loss.name not in LOSSES:
                    raise ValueError(f"method {m.name}: unknown loss {m.loss.name!r}; known: {sorted(LOSSES)}")
        return self

    @property
    def backbone(self) -> str:
        return str(self.training.get("backbone", PretrainConfig().backbone))

    def method(self, name: str) -> MethodSpec:
        return next(m for m in self.methods if m.name == name)


def study_config_path(config: str | Path | None, preset: str | None) -> Path:
    """The study YAML to run: ``config`` when given, else the preset's shipped file.

    Raises:
        BadInput: both or an unknown preset are given.
    """
    if config is not None and preset is not None:
        raise BadInput("give a study CONFIG or --preset, not both")
    if config is not None:
        return Path(config)
    preset = preset or "cpu"
    if preset not in PRESETS:
        raise BadInput(f"--preset {preset}: unknown preset; choose one of {', '.join(PRESETS)}")
    return CONFIG_DIR / PRESETS[preset]


def _absolute(base: Path, p: str) -> str:
    return p if Path(p).is_absolute() else str((base / p).resolve())


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML; relative paths become absolute against its folder.

    Raises:
        BadInput: the file is missing, not YAML, or does not validate (the message names the field).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such study config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        cfg = StudyConfig.model_validate(data)
    except yaml.YAMLError as err:
        raise BadInput(f"{path}: not valid YAML ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise BadInput(f"{path}: {where}: {first['msg']}") from None
    return resolve_paths(cfg, path.parent.resolve(), str(path.resolve()))


def resolve_paths(cfg: StudyConfig, base: Path, source_file: str | None = None) -> StudyConfig:
    """``cfg`` with its paths made absolute against ``base`` (what :func:`load_study_config` does)."""
    archive = cfg.archive.model_copy(update={"manifest": _absolute(base, cfg.archive.manifest),
                                             "store": _absolute(base, cfg.archive.store)})
    smoke = [s.model_copy(update={"root": _absolute(base, s.root)}) for s in cfg.evaluation.smoke]
    training = dict(cfg.training)
    if training.get("statistics", "published") != "published":
        training["statistics"] = _absolute(base, training["statistics"])
    return cfg.model_copy(update={
        "output_dir": _absolute(base, cfg.output_dir), "report": _absolute(base, cfg.report),
        "figures_dir": _absolute(base, cfg.figures_dir), "archive": archive, "training": training,
        "discussion": _absolute(base, cfg.discussion) if cfg.discussion else None,
        "evaluation": cfg.evaluation.model_copy(update={"smoke": smoke}),
        "source_file": source_file or cfg.source_file})


def pretrain_config_for(cfg: StudyConfig, method: MethodSpec, seed: int, output_dir: str) -> PretrainConfig:
    """The pretraining config of one (method, seed): the shared budget (with the method's ablation
    overrides, if any) plus the method's loss and the seed.
    """
    if method.loss is None:
        raise ValueError(f"method {method.name} has no pretraining (random initialisation)")
    return PretrainConfig.model_validate({**cfg.training, **method.training, "archive": cfg.archive.store,
                                          "output_dir": output_dir, "loss": method.loss.model_dump(), "seed": seed,
                                          "splits": ["train"]})
