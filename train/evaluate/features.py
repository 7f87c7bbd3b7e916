"""Cached feature extraction with a frozen backbone (:func:`extract_features`).

Feature cache (:func:`extract_features`)
    Features and labels are stored as ``<cache_dir>/<name>-<hash>.safetensors`` (``name`` from
    ``cache_name``, default ``features``). The hash covers: the backbone fingerprint (SHA-256 of the
    checkpoint file content, plus architecture, pooling, input channels and first-layer policy; for
    a bare module, a SHA-256 of its state dict), the data set (class, task attributes such as root or
    store, modality, size, split seed, and the SHA-256 of its item ids in order — so task and split
    are part of the key), the normaliser statistics, ``resize_to`` and a format version. The cache
    does not notice pixel values that change under unchanged ids (a re-curated archive at the same
    path): delete the cache folder then. ``cache_dir=None`` disables caching.

Backbones come from :mod:`train.evaluate.backbones` and the training-data overlap check from
:mod:`train.evaluate.overlap`; their names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline.progress import progress_bar
from train.evaluate.backbones import (
    PIXELS,
    RANDOM_PREFIX,
    EvalBackbone,
    PixelStatistics,
    checkpoint_label,
    file_sha256,
    load_backbone_for_eval,
    read_checkpoint_info,
    resolve_checkpoint,
)
from train.evaluate.overlap import (
    TRAINING_DATA_FILE,
    TRAINING_DATA_KEY,
    check_training_overlap,
    read_training_record,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "PIXELS",
    "RANDOM_PREFIX",
    "TRAINING_DATA_FILE",
    "TRAINING_DATA_KEY",
    "EvalBackbone",
    "PixelStatistics",
    "check_training_overlap",
    "checkpoint_label",
    "dataset_fingerprint",
    "extract_features",
    "features_cache_path",
    "file_sha256",
    "load_backbone_for_eval",
    "model_fingerprint",
    "prepare_batch",
    "read_checkpoint_info",
    "read_training_record",
    "resolve_checkpoint",
    "resolve_device",
]

DEFAULT_CACHE_DIR = ".cache/features"
#: Bumped whenever the stored features of an unchanged key would change.
FEATURES_VERSION = 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; anything else as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _state_dict_sha256(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ============================================================================ fingerprints and cache
def model_fingerprint(model: nn.Module) -> str:
    """The cache identity of a model: :attr:`EvalBackbone.fingerprint`, else a state-dict SHA-256."""
    fp = getattr(model, "fingerprint", None)
    return str(fp) if fp else f"module:{_state_dict_sha256(model)}"


def _simple(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)) and len(value) <= 64:
        out = [_simple(v) for v in value]
        return out if all(v is not _SKIP for v in out) else _SKIP
    if isinstance(value, Mapping) and len(value) <= 64:
        out_d = {str(k): _simple(v) for k, v in value.items()}
        return out_d if all(v is not _SKIP for v in out_d.values()) else _SKIP
    return _SKIP


_SKIP = object()


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """JSON-able description of a data set: class, public simple attributes and a hash of its ids.

    ``Subset`` → the base description plus a hash of the indices. Item ids come from ``dataset.ids``
    when present (every :class:`~train.evaluate.tasks.EvalTask`).
    """
    if isinstance(dataset, Subset):
        idx = np.asarray(dataset.indices, dtype=np.int64)
        return {"subset_of": dataset_fingerprint(dataset.dataset),
                "indices_sha256": hashlib.sha256(idx.tobytes()).hexdigest(), "n": len(idx)}
    attrs = {}
    for k, v in sorted(vars(dataset).items()):
        s = _simple(v)
        if s is not _SKIP and not k.startswith("_"):  # private state (open handles, caches) may change
            attrs[k] = s
    desc: dict[str, Any] = {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
                            "n": len(dataset), "attrs": attrs}  # type: ignore[arg-type]
    ids = getattr(dataset, "ids", None)
    if ids is not None:
        desc["ids_sha256"] = hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()
    return desc


def _key(model: nn.Module, dataset: Dataset, normalizer, resize_to) -> dict[str, Any]:
    norm = None
    if normalizer is not None:
        norm = normalizer.to_dict() if hasattr(normalizer, "to_dict") else repr(normalizer)
    return {"version": FEATURES_VERSION, "model": model_fingerprint(model), "data": dataset_fingerprint(dataset),
            "normalizer": norm, "resize_to": resize_to}


def features_cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any], name: str | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name or "features").strip("_") or "features"
    return Path(cache_dir) / f"{safe}-{digest}.safetensors"


def _load_cached(path: Path, key: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("key", "null")) != json.loads(json.dumps(key, sort_keys=True, default=str)):
                return None
            return f.get_tensor("features"), f.get_tensor("labels")
    except (SafetensorError, OSError, ValueError, KeyError) as err:  # truncated or foreign file: recompute
        log.warning("ignoring unreadable feature cache %s (%s)", path, err)
        return None


def _save_cached(path: Path, key: Mapping[str, Any], feats: torch.Tensor, labels: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"features": feats.contiguous(), "labels": labels.contiguous()}, str(tmp),
              metadata={"key": json.dumps(key, sort_keys=True, default=str)})
    tmp.replace(path)


def prepare_batch(x: torch.Tensor, normalizer, resize_to: int | Sequence[int] | None) -> torch.Tensor:
    x = x.to(torch.float32)
    x = normalizer(x) if normalizer is not None else torch.nan_to_num(x)
    if resize_to is not None:
        size = (resize_to, resize_to) if isinstance(resize_to, int) else tuple(resize_to)
        if tuple(x.shape[-2:]) != size:
            shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 64, device: str | torch.device = "cpu",
                     normalizer=None, resize_to: int | Sequence[int] | None = None, *,
                     cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR, cache_name: str | None = None,
                     num_workers: int = 0, amp: bool = False,
                     show_progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every item of ``dataset`` (in order), with the items' labels.

    Progress: a bar when ``show_progress`` (default: stderr is a terminal), log lines otherwise
    (:mod:`pipeline.progress`).

    Each batch: ``image`` → float32 → ``normalizer`` (non-finite values → 0 without one) → optional
    bilinear resize to ``resize_to`` → ``model`` in eval mode under ``no_grad`` (bf16 autocast on CUDA
    when ``amp``). Results are cached (module docstring); a cache hit runs no forward pass.

    Returns:
        ``(features, labels)``: float32 ``(N, D)`` on the CPU; labels ``(N, C)`` float32 (multi-label)
        or ``(N,)`` int64 (single-label), as the data set's collate gives them.
    """
    key = path = None
    if cache_dir is not None:
        key = _key(model, dataset, normalizer, resize_to)
        path = features_cache_path(cache_dir, key, cache_name)
        hit = _load_cached(path, key)
        if hit is not None:
            log.info("feature cache hit: %s", path)
            return hit
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    feats, labels = [], []
    use_amp = amp and dev.type == "cuda"
    show = os.isatty(2) if show_progress is None else show_progress
    try:
        with progress_bar(show) as bar:
            task = bar.add_task(f"features {cache_name or type(dataset).__name__}", total=len(loader), status="")
            for batch in loader:
                x = prepare_batch(batch["image"], normalizer, resize_to).to(dev, non_blocking=True)
                if use_amp:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        f = model(x)
                else:
                    f = model(x)
                feats.append(f.float().cpu())
                labels.append(torch.as_tensor(batch["label"]))
                bar.update(task, advance=1)
    finally:
        model.train(was_training)
    if feats:
        out_f, out_y = torch.cat(feats), torch.cat(labels)
    else:
        out_f, out_y = torch.zeros(0, getattr(model, "feature_dim", 0)), torch.zeros(0)
    if path is not None and key is not None:
        _save_cached(path, key, out_f, out_y)
    return out_f, out_y

