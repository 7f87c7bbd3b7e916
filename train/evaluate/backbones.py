"""Frozen backbones for evaluation: what a checkpoint is and how it becomes a feature extractor.

Backbones (:func:`load_backbone_for_eval` → :class:`EvalBackbone`)
    ``checkpoint`` may be

    * a run folder of :mod:`train.pretrain` (its ``backbone.safetensors``, else the latest
      epoch checkpoint; :func:`train.checkpoints.resolve_run_file`);
    * our exported backbone (:data:`train.checkpoints.BACKBONE_FORMAT`; the architecture comes from
      its ``backbone`` entry and the modality from ``modality``);
    * a pretraining checkpoint (:data:`train.checkpoints.CHECKPOINT_FORMAT`): the online backbone of
      branch 0 (:data:`train.checkpoints.PRETRAIN_BACKBONE_PREFIX`); architecture and modality from
      the stored config;
    * any other local weight file (safetensors / ``.pth``), read by :func:`train.models.load_weights`
      (DINO / DINOv2 / torchvision / released SoftCon layouts). The architecture is ``backbone_name``
      or, failing that, guessed from the file name (``B13_rn50_softcon.pth`` → ``rn50``);
    * ``"random:<backbone>"``: the architecture with its timm initialisation, drawn from a fixed seed
      (random-init baseline; the same weights in every call with the same seed);
    * ``"pixels"``: the raw-pixel baseline :class:`PixelStatistics`.

    Our own files are loaded strictly (every key must match). A first layer whose channel count differs
    from the task's (e.g. an S2 L1C checkpoint on 12-band L2A input) is **not** silently accepted:
    it keeps a random initialisation under the default policy, a warning is logged and the note is kept
    in :attr:`EvalBackbone.notes` (pass ``first_layer="inflate"`` to adapt it instead).

Raw-pixel baseline (our choice)
    Per band the spatial **mean and standard deviation** of the normalised image, ``2·C`` features
    (``grid > 0`` adds the ``grid × grid`` average-pooled image, ``C·grid²`` more). Band statistics are
    the classic spectral-signature baseline: like a globally pooled CNN feature they are invariant to
    flips and rotations and independent of the image size, so it is the right "no learning" floor for
    pooled backbone features; a downsampled-pixel vector would instead depend on the orientation of the
    scene.

ViT pooling
    ``vit_pool="cls"`` (default): the final-norm class token (timm's pooled output). ``"dinov2"``: the
    DINOv2 linear-evaluation input: class tokens of the last ``n_blocks`` (4) blocks, each passed
    through the final norm, concatenated with the mean of the last block's patch tokens
    (``(n_blocks + 1) · D`` features; Oquab et al. 2023, DINOv2, arXiv:2304.07193, App. B.3), as
    used for SoftCon's ViT-B numbers (github.com/zhu-xlab/softcon README).
    CNNs always give the global-average-pooled last stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bands import MODALITY_BANDS
from train.checkpoints import (
    BACKBONE_FORMAT,
    CHECKPOINT_DIR,
    PRETRAIN_BACKBONE_PREFIX,
    read_metadata,
    resolve_run_file,
)
from train.checkpoints import CHECKPOINT_FORMAT as PRETRAIN_FORMAT
from train.models import (
    BACKBONE_ALIASES,
    BACKBONES,
    WeightLoadError,
    build_backbone,
    first_layer_keys,
    get_backbone_spec,
    load_weights,
)

log = logging.getLogger(__name__)

__all__ = [
    "PIXELS", "RANDOM_PREFIX", "EvalBackbone", "PixelStatistics", "checkpoint_label", "file_sha256",
    "load_backbone_for_eval", "read_checkpoint_info", "resolve_checkpoint",
]

PIXELS = "pixels"
RANDOM_PREFIX = "random:"

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def resolve_checkpoint(checkpoint: str | os.PathLike) -> str:
    """A run folder → its ``backbone.safetensors`` (else latest epoch checkpoint); files and baselines
    unchanged.

    Raises:
        CheckpointNotFound: a missing path, or a folder with neither file (a
            :class:`~pipeline.errors.BadInput` and a ``FileNotFoundError``).
    """
    text = os.fspath(checkpoint)
    if text == PIXELS or text.startswith(RANDOM_PREFIX):
        return text
    return text if Path(text).is_file() else str(resolve_run_file(text))


def checkpoint_label(checkpoint: str | os.PathLike) -> str:
    """Short display name: the run folder name for ``<run>/backbone.safetensors`` and epoch
    checkpoints, the file stem otherwise; baselines keep their spelling.
    """
    text = os.fspath(checkpoint)
    if text == PIXELS or text.startswith(RANDOM_PREFIX):
        return text
    p = Path(text)
    if p.is_dir():
        return p.resolve().name
    if p.parent.name == CHECKPOINT_DIR:
        return f"{p.parent.parent.resolve().name}/{p.stem}"
    if p.stem == "backbone" or p.stem.startswith("backbone-"):
        return p.parent.resolve().name if p.stem == "backbone" else f"{p.parent.resolve().name}/{p.stem}"
    return p.stem


def _guess_backbone(path: str) -> str | None:
    """Architecture from a file name: the longest registry name or alias found in it."""
    name = Path(path).name.lower()
    candidates = sorted(set(BACKBONES) | set(BACKBONE_ALIASES), key=len, reverse=True)
    for cand in candidates:
        if re.search(rf"(^|[^a-z0-9]){re.escape(cand)}($|[^a-z0-9])", name):
            return BACKBONE_ALIASES.get(cand, cand)
    return None


def read_checkpoint_info(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What can be known about a checkpoint without building a model.

    Returns ``{"path", "kind", "backbone", "modality", "format", "normalizer"}``; ``kind`` is
    ``"pixels"``, ``"random"``, ``"softcon-backbone"``, ``"pretrain-checkpoint"`` or ``"weights"``;
    unknown fields are None. ``normalizer`` is the input scaling the checkpoint was trained with,
    when recorded: a :meth:`train.data.Normalizer.to_dict` mapping (metadata key ``normalizer``
    of ``backbone.safetensors``), or a statistics-file path (``statistics`` of a pretraining
    config other than ``"published"``).
    """
    path = resolve_checkpoint(checkpoint)
    info: dict[str, Any] = {"path": path, "kind": "weights", "backbone": None, "modality": None, "format": None,
                            "normalizer": None}
    if path == PIXELS:
        info["kind"] = "pixels"
        return info
    if path.startswith(RANDOM_PREFIX):
        name = path[len(RANDOM_PREFIX):]
        get_backbone_spec(name)  # validates
        info.update(kind="random", backbone=BACKBONE_ALIASES.get(name, name))
        return info
    p = Path(path)
    if p.suffix == ".safetensors":
        meta = read_metadata(p)
        fmt = meta.get("format")
        info["format"] = fmt
        if fmt == BACKBONE_FORMAT:
            info.update(kind="softcon-backbone", backbone=meta.get("backbone"), modality=meta.get("modality"))
            if meta.get("normalizer"):
                info["normalizer"] = json.loads(meta["normalizer"])
            elif meta.get("statistics") and meta["statistics"] != "published":
                info["normalizer"] = meta["statistics"]
        elif fmt == PRETRAIN_FORMAT:
            cfg = json.loads(meta.get("meta", "{}")).get("config", {})
            info.update(kind="pretrain-checkpoint", backbone=cfg.get("backbone"), modality=cfg.get("modality"))
            if cfg.get("statistics") not in (None, "published"):
                info["normalizer"] = cfg["statistics"]
    if info["backbone"] is None:
        info["backbone"] = _guess_backbone(path)
    return info


class PixelStatistics(nn.Module):
    """Raw-pixel baseline: per-band spatial mean and std (``2·C``), optionally plus a
    ``grid × grid`` average-pooled image (``C·grid²``). No parameters.
    """

    def __init__(self, in_chans: int, grid: int = 0):
        super().__init__()
        if grid < 0:
            raise ValueError("grid must be >= 0")
        self.in_chans, self.grid = int(in_chans), int(grid)
        self.num_features = 2 * self.in_chans + self.in_chans * self.grid**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels, got {x.shape[1]}")
        flat = x.flatten(2).float()
        out = [flat.mean(2), flat.std(2, unbiased=False)]
        if self.grid:
            out.append(F.adaptive_avg_pool2d(x.float(), self.grid).flatten(1))
        return torch.cat(out, dim=1)


class EvalBackbone(nn.Module):
    """A backbone prepared for evaluation: ``forward(x)`` → pooled ``(B, feature_dim)`` features.

    Attributes:
        model: the timm backbone (or :class:`PixelStatistics`).
        feature_dim: output width.
        kind: ``"pixels"``, ``"random"``, ``"softcon-backbone"``, ``"pretrain-checkpoint"``, ``"weights"``.
        backbone_name: registry name (None for pixels).
        modality: modality recorded in the checkpoint, if any.
        checkpoint: the resolved checkpoint string.
        fingerprint: stable identity used by the feature cache.
        notes: load warnings (e.g. first layer kept random).
        trainable: False for the pixel baseline (nothing to fine-tune).
    """

    def __init__(self, model: nn.Module, feature_dim: int, *, kind: str, backbone_name: str | None,
                 modality: str | None, checkpoint: str, fingerprint: str, family: str | None,
                 vit_pool: str = "cls", n_blocks: int = 4, notes: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.feature_dim = int(feature_dim)
        self.kind, self.backbone_name, self.modality = kind, backbone_name, modality
        self.checkpoint, self.fingerprint, self.family = checkpoint, fingerprint, family
        self.vit_pool, self.n_blocks = vit_pool, n_blocks
        self.notes = list(notes)

    @property
    def trainable(self) -> bool:
        return any(True for _ in self.model.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "vit" and self.vit_pool == "dinov2":
            outs = self.model.get_intermediate_layers(x, n=self.n_blocks, return_prefix_tokens=True, norm=True)
            cls = [prefix[:, 0] for _, prefix in outs]
            return torch.cat(cls + [outs[-1][0].mean(1)], dim=1)
        return self.model(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, backbone={self.backbone_name}, dim={self.feature_dim}"


def load_backbone_for_eval(checkpoint: str | os.PathLike, in_chans: int, band_names: Sequence[str] | None,
                           backbone_name: str | None = None, *, first_layer: str = "random",
                           vit_pool: str = "cls", n_blocks: int = 4, img_size: int | None = None,
                           seed: int = 0, pixel_grid: int = 0) -> EvalBackbone:
    """Build the frozen (eval-mode) backbone named by ``checkpoint`` (see the module docstring).

    Args:
        checkpoint: run folder, weight file, ``"random:<backbone>"`` or ``"pixels"``.
        in_chans: input channels of the task (``len(task.bands)``).
        band_names: the task's band names (used by ``first_layer="inflate"``).
        backbone_name: architecture for files that do not record one (overrides the file-name guess;
            must agree with the metadata of our own files).
        first_layer: policy for a first layer with another channel count (:mod:`train.models`).
        vit_pool: ``"cls"`` or ``"dinov2"`` (ViTs only).
        n_blocks: blocks used by ``vit_pool="dinov2"``.
        img_size: ViT position grid size (default 224; inputs of other sizes are interpolated).
        seed: initialisation seed of the random baseline (and of any randomly initialised first layer).
        pixel_grid: ``grid`` of :class:`PixelStatistics`.
    """
    if vit_pool not in ("cls", "dinov2"):
        raise ValueError(f"vit_pool must be 'cls' or 'dinov2', got {vit_pool!r}")
    info = read_checkpoint_info(checkpoint)
    path, kind = info["path"], info["kind"]
    if kind == "pixels":
        model = PixelStatistics(in_chans, pixel_grid)
        return EvalBackbone(model, model.num_features, kind=kind, backbone_name=None, modality=None,
                            checkpoint=path, fingerprint=f"pixels:v1:in{in_chans}:grid{pixel_grid}",
                            family=None).eval()
    name = info["backbone"]
    if backbone_name is not None:
        wanted = BACKBONE_ALIASES.get(backbone_name, backbone_name)
        if kind in ("softcon-backbone", "pretrain-checkpoint", "random") and name and name != wanted:
            raise ValueError(f"{path}: records backbone {name!r}, but backbone_name={backbone_name!r}")
        name = wanted
    if name is None:
        raise ValueError(f"{path}: cannot tell the architecture (no metadata, nothing in the file name); "
                         f"pass backbone_name= (one of {sorted(BACKBONES)})")
    spec = get_backbone_spec(name)

    weights: Any = None
    strict = False
    if kind in ("softcon-backbone", "weights"):
        weights = path
        strict = kind == "softcon-backbone"
    elif kind == "pretrain-checkpoint":
        from safetensors.torch import load_file

        tensors = load_file(path)
        weights = {k[len(PRETRAIN_BACKBONE_PREFIX):]: v for k, v in tensors.items()
                   if k.startswith(PRETRAIN_BACKBONE_PREFIX)}
        if not weights:
            raise WeightLoadError(f"{path}: no '{PRETRAIN_BACKBONE_PREFIX}*' tensors")
        strict = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, dim = build_backbone(name, in_chans, img_size=img_size, first_layer=first_layer,  # type: ignore[arg-type]
                                    band_names=list(band_names) if band_names is not None else None)
        notes: list[str] = []
        random_parts = False
        if weights is not None:
            source_bands = MODALITY_BANDS.get(info["modality"]) if info["modality"] else None
            report = load_weights(model, weights, first_layer=first_layer,  # type: ignore[arg-type]
                                  band_names=list(band_names) if band_names is not None else None,
                                  source_band_names=source_bands)
            first = set(first_layer_keys(model))
            bad = report.missing_keys or report.unexpected_keys or report.unresolved_mismatches
            if bad and strict:
                raise WeightLoadError(f"{path}: weights do not match {name}:\n{report}")
            if bad:
                log.warning("%s: weights loaded with problems:\n%s", path, report)
                notes.append("weights loaded with missing/unexpected/mismatched keys")
            kept_random = [k for k, m in report.shape_mismatched_keys.items()
                           if k in first and "random" in m.action]
            if kept_random:
                random_parts = True
                msg = (f"first layer kept a random init: checkpoint channels differ from the task's "
                       f"{in_chans} (policy {first_layer!r})")
                log.warning("%s: %s", path, msg)
                notes.append(msg)
            for k in report.adapted_keys:
                notes.append(f"{k}: {report.adapted_keys[k]}")
    if kind == "random":
        fp = f"random:v1:{name}:in{in_chans}:seed{seed}"
    else:
        # the seed matters only when part of the model (a new first layer) is randomly initialised
        fp = f"file:{file_sha256(path)}:{name}:in{in_chans}:{first_layer}" + (f":seed{seed}" if random_parts else "")
    if spec.family == "vit":
        fp += f":pool-{vit_pool}{n_blocks if vit_pool == 'dinov2' else ''}:img{img_size}"
        if vit_pool == "dinov2":
            dim = dim * (n_blocks + 1)
    ev = EvalBackbone(model, dim, kind=kind, backbone_name=name, modality=info["modality"], checkpoint=path,
                      fingerprint=fp, family=spec.family, vit_pool=vit_pool, n_blocks=n_blocks, notes=notes)
    return ev.eval()

