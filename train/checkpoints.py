"""The run folder of a pretraining run: its layout, file formats, checkpoints and exported backbones.

Layout of ``<output_dir>`` (every name is a constant of this module)::

    config.yaml                        the run's config (CONFIG_FILE)
    training_data.json                 the patches it trains on (TRAINING_DATA_FILE, train.data)
    metrics.csv                        one row per optimisation step (METRICS_FILE)
    tensorboard/                       TensorBoard events (TENSORBOARD_DIR)
    checkpoints/epoch-NNNN.safetensors one per epoch, the last ``keep_checkpoints`` kept (CHECKPOINT_FORMAT)
    backbone.safetensors               the exported online backbone of branch 0 (BACKBONE_FORMAT)
    backbone-<modality>.safetensors    cross-modal runs: the second branch's backbone

Checkpoint (``format = "softcon-pretrain-v1"``): one safetensors file with the model's state under
``model.`` (the online backbone of branch 0 under :data:`PRETRAIN_BACKBONE_PREFIX`), the loss's
buffers (queues) under ``loss.``, the optimiser's tensors under ``optim.<param id>.<key>`` and RNG
states under ``rng.``; metadata: ``meta`` (epoch, global step, config, mean loss), the optimiser's
param groups and non-tensor state (JSON). Written atomically (temporary file, then rename).

Exported backbone (``format = "softcon-backbone"``): the backbone's state dict; metadata
:class:`BackboneMetadata` (architecture, modality, band names, BatchNorm statistics, input
normaliser, training-data record).

For evaluation, :func:`resolve_run_file` turns "a run folder or a file" into the weight file to
load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import BadInput
from train.data import TRAINING_DATA_FILE
from train.distributed import unwrap

__all__ = [
    "BACKBONE_FILE",
    "BACKBONE_FORMAT",
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "METRICS_FILE",
    "PRETRAIN_BACKBONE_PREFIX",
    "TENSORBOARD_DIR",
    "TRAINING_DATA_FILE",
    "TRAINING_DATA_KEY",
    "BackboneMetadata",
    "CheckpointNotFound",
    "backbone_file",
    "branch_backbone_prefix",
    "check_output_dir",
    "checkpoint_path",
    "export_backbone",
    "latest_checkpoint",
    "load_checkpoint",
    "read_backbone_metadata",
    "read_metadata",
    "resolve_run_file",
    "rotate_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "softcon-pretrain-v1"
BACKBONE_FORMAT = "softcon-backbone"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
BACKBONE_FILE = "backbone.safetensors"
#: safetensors metadata key of an exported backbone holding the text of ``training_data.json``.
TRAINING_DATA_KEY = "training_data"
_CHECKPOINT_GLOB = "epoch-*.safetensors"
_MODEL = "model."


def branch_backbone_prefix(branch: int) -> str:
    """Key prefix of branch ``branch``'s online backbone in a checkpoint (``PretrainModel`` layout)."""
    return f"{_MODEL}branches.{branch}.online.backbone."


#: Where a checkpoint keeps the online backbone of branch 0 (the exported ``backbone.safetensors``).
PRETRAIN_BACKBONE_PREFIX = branch_backbone_prefix(0)


class CheckpointNotFound(BadInput, FileNotFoundError):
    """A checkpoint, run folder or weight file that is not there (exit 2; also a FileNotFoundError)."""


# ============================================================================ layout
def checkpoint_path(output_dir: str | os.PathLike, epoch: int) -> Path:
    """``<output_dir>/checkpoints/epoch-NNNN.safetensors`` of ``epoch``."""
    return Path(output_dir) / CHECKPOINT_DIR / f"epoch-{epoch:04d}.safetensors"


def backbone_file(branch: int, modality: str) -> str:
    """File name of branch ``branch``'s exported backbone: ``backbone.safetensors`` for branch 0,
    ``backbone-<modality>.safetensors`` for the second branch of a cross-modal run.
    """
    return BACKBONE_FILE if branch == 0 else f"backbone-{modality}.safetensors"


def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted((output_dir / CHECKPOINT_DIR).glob(_CHECKPOINT_GLOB))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the latest epoch in a run folder, or None when it has none."""
    found = _checkpoints(Path(output_dir))
    return found[-1] if found else None


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` latest epoch checkpoints of a run folder."""
    for old in _checkpoints(Path(output_dir))[:-keep]:
        old.unlink()


def check_output_dir(output_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run where it would write over something (:class:`BadInput`).

    A fresh run may use a folder that does not exist, is empty, or holds only the start of an
    earlier run of ours that never reached its first checkpoint (its ``config.yaml`` and logs). A
    folder with checkpoints or an exported backbone is continued with ``--resume``, never overwritten;
    a folder with other content is not a run folder at all.
    """
    if resume or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise BadInput(f"output_dir: {output_dir} is a file, not a run folder; choose another output_dir")
    if latest_checkpoint(output_dir) is not None or (output_dir / BACKBONE_FILE).exists():
        raise BadInput(f"output_dir: {output_dir} already holds a run; continue it with --resume "
                       "or choose a new output_dir (nothing was changed)")
    if any(output_dir.iterdir()) and not (output_dir / CONFIG_FILE).is_file():
        raise BadInput(f"output_dir: {output_dir} is not empty and is not a run folder; refusing to write "
                       "there: choose a new output_dir")


def resolve_run_file(path: str | os.PathLike) -> Path:
    """The weight file that "a run folder or a file" names, for evaluation.

    Args:
        path: a run folder (its ``backbone.safetensors``, else its latest epoch checkpoint) or a file.

    Returns:
        The file to load.

    Raises:
        CheckpointNotFound: nothing exists at ``path``, or a folder holds neither file.
    """
    p = Path(path)
    if p.is_dir():
        if (p / BACKBONE_FILE).is_file():
            return p / BACKBONE_FILE
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest
        raise CheckpointNotFound(f"checkpoint: {p} holds no {BACKBONE_FILE} and no "
                                 f"{CHECKPOINT_DIR}/{_CHECKPOINT_GLOB}; name a run folder or a weight file")
    if not p.is_file():
        raise CheckpointNotFound(f"checkpoint not found: {p}")
    return p


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of ``path`` (empty when it has none)."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


# ============================================================================ checkpoints
def _rng_state() -> dict[str, torch.Tensor]:
    state = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda.{i}"] = s
    return state


def _set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: Path, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> None:
    """Models, loss buffers (queues), optimiser state and RNG states in one safetensors file, atomically.

    Args:
        path: the checkpoint file (:func:`checkpoint_path`).
        model: the (possibly DDP-wrapped) ``PretrainModel``.
        loss_fn: the loss module (its buffers, e.g. queues, are saved).
        optimizer: the optimiser.
        meta: JSON-able run state (epoch, global step, config, mean loss).
    """
    tensors: dict[str, torch.Tensor] = {}
    for k, v in unwrap(model).state_dict().items():
        tensors[f"{_MODEL}{k}"] = v.detach().cpu().contiguous()
    for k, v in loss_fn.state_dict().items():
        tensors[f"loss.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    tensors.update(_rng_state())
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "meta": json.dumps(meta),
        "optim_param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_checkpoint(path: Path, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a :func:`save_checkpoint` file into ``model``, ``loss_fn``, ``optimizer`` and the RNGs.

    Returns:
        The checkpoint's ``meta`` record.

    Raises:
        ValueError: ``path`` is not a ``softcon-pretrain-v1`` checkpoint.
    """
    metadata = read_metadata(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    tensors = load_file(str(path))
    unwrap(model).load_state_dict({k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)})
    loss_state = {k[5:]: v for k, v in tensors.items() if k.startswith("loss.")}
    if loss_state:
        loss_fn.load_state_dict(loss_state)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for pid, extra in json.loads(metadata["optim_scalars"]).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["optim_param_groups"])})
    _set_rng_state(tensors)
    return json.loads(metadata["meta"])


# ============================================================================ exported backbones
@dataclass(frozen=True)
class BackboneMetadata:
    """The metadata of an exported backbone (``format = "softcon-backbone"``).

    Attributes:
        backbone: architecture (registry name of :mod:`train.models`).
        modality: the modality it was trained on.
        bands: its input band names, in order.
        bn_statistics: how its BatchNorm statistics were obtained (:mod:`train.batchnorm`).
        normalizer: the input scaling of training (``Normalizer.to_dict()``), None for the published one.
        training_data: the text of the run's ``training_data.json``.
    """

    backbone: str
    modality: str
    bands: list[str]
    bn_statistics: str
    normalizer: dict[str, Any] | None = None
    training_data: str = ""

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata (string values, JSON where structured)."""
        meta = {"format": BACKBONE_FORMAT, "backbone": self.backbone, "modality": self.modality,
                "bands": json.dumps(self.bands), "bn_statistics": self.bn_statistics}
        if self.normalizer is not None:  # evaluation scales inputs the same way ("auto")
            meta["normalizer"] = json.dumps(self.normalizer)
        meta[TRAINING_DATA_KEY] = self.training_data  # evaluation checks the overlap with its test split
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str = "") -> BackboneMetadata:
        """Parse :meth:`to_metadata`'s output.

        Raises:
            BadInput: ``meta`` is not that of an exported backbone.
        """
        if meta.get("format") != BACKBONE_FORMAT or "backbone" not in meta:
            raise BadInput(f"{where or 'metadata'}: not a {BACKBONE_FORMAT} file (format {meta.get('format')!r})")
        return cls(backbone=meta["backbone"], modality=meta.get("modality", ""),
                   bands=json.loads(meta.get("bands", "[]")), bn_statistics=meta.get("bn_statistics", ""),
                   normalizer=json.loads(meta["normalizer"]) if meta.get("normalizer") else None,
                   training_data=meta.get(TRAINING_DATA_KEY, ""))


def export_backbone(path: str | os.PathLike, backbone: nn.Module, metadata: BackboneMetadata) -> None:
    """Write ``backbone``'s state dict (on the CPU) with ``metadata`` as a ``softcon-backbone`` file."""
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()},
              str(path), metadata=metadata.to_metadata())


def read_backbone_metadata(path: str | os.PathLike) -> BackboneMetadata:
    """The :class:`BackboneMetadata` of an exported backbone file (:class:`BadInput` for another file)."""
    return BackboneMetadata.from_metadata(read_metadata(path), str(path))
