"""Frozen backbones for evaluation and cached feature extraction.

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

Training-data records and the overlap check (:func:`read_training_record`, :func:`check_training_overlap`)
    A pretraining run records the archive patches it trained on: ``<run_dir>/training_data.json``
    and the same JSON under the key ``training_data`` of the exported backbone's safetensors metadata
    (``{"archive", "archive_manifest_hash", "splits", "split_record", "n_patches", "patch_ids"}``).
    Before evaluating on an archive, every checkpoint's recorded ``patch_ids`` are compared with the
    ``patch_id`` of the archive's **test** split when the record names the same archive (same
    ``manifest_hash``; when either hash is missing, the same archive path). Any overlap refuses the
    evaluation (:class:`~pipeline.errors.BadInput` naming the checkpoint and the number of patches)
    unless ``allow_overlap``; checkpoints without a record (external weights) get the note
    "training data unknown"; the random-init and pixel baselines were trained on nothing and get no note.

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

Feature cache (:func:`extract_features`)
    Features and labels are stored as ``<cache_dir>/<name>-<hash>.safetensors`` (``name`` from
    ``cache_name``, default ``features``). The hash covers: the backbone fingerprint (SHA-256 of the
    checkpoint file content, plus architecture, pooling, input channels and first-layer policy; for
    a bare module, a SHA-256 of its state dict), the data set (class, task attributes such as root or
    store, modality, size, split seed, and the SHA-256 of its item ids in order — so task and split
    are part of the key), the normaliser statistics, ``resize_to`` and a format version. The cache
    does not notice pixel values that change under unchanged ids (a re-curated archive at the same
    path): delete the cache folder then. ``cache_dir=None`` disables caching.
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

from pipeline.bands import MODALITY_BANDS
from pipeline.progress import progress_bar
from pipeline.store_target import is_url
from train.checkpoints import (
    BACKBONE_FORMAT,
    CHECKPOINT_DIR,
    PRETRAIN_BACKBONE_PREFIX,
    TRAINING_DATA_FILE,
    TRAINING_DATA_KEY,
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
    "load_backbone_for_eval",
    "model_fingerprint",
    "prepare_batch",
    "read_checkpoint_info",
    "read_training_record",
    "resolve_checkpoint",
    "resolve_device",
]

DEFAULT_CACHE_DIR = ".cache/features"
PIXELS = "pixels"
RANDOM_PREFIX = "random:"
#: Bumped whenever the stored features of an unchanged key would change.
FEATURES_VERSION = 1

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


# ============================================================================ small helpers
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; anything else as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _state_dict_sha256(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    checkpoints, the file stem otherwise; baselines keep their spelling."""
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


# ============================================================================ training-data records
def _run_dir_of(path: Path) -> Path | None:
    """The pretraining run folder of one of its own weight files (``<run>/backbone*.safetensors``,
    ``<run>/checkpoints/epoch-*.safetensors``), else None: a foreign file in some folder must not
    borrow that folder's record."""
    if path.suffix != ".safetensors":
        return None
    if path.parent.name == CHECKPOINT_DIR and path.name.startswith("epoch-"):
        return path.parent.parent
    if path.name.startswith("backbone"):
        return path.parent
    return None


def _parse_training_record(text: str, where: str) -> dict[str, Any]:
    from pipeline.errors import BadInput

    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"{where}: training-data record is not valid JSON ({err.msg})") from err
    if not isinstance(record, Mapping) or not isinstance(record.get("patch_ids"), list):
        raise BadInput(f"{where}: training-data record has no 'patch_ids' list")
    return dict(record)


def read_training_record(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The training-data record of a checkpoint (module docstring), or None when it has none.

    A run folder: its ``training_data.json``, else the record in the weight file it resolves to. A
    weight file: the ``training_data`` key of its safetensors metadata, else (for a run's own files
    only, see :func:`_run_dir_of`) the run folder's ``training_data.json``. Baselines: None. A
    malformed record raises :class:`~pipeline.errors.BadInput` naming the file.
    """
    text = os.fspath(checkpoint)
    if text == PIXELS or text.startswith(RANDOM_PREFIX):
        return None
    p = Path(text)
    if p.is_dir() and (p / TRAINING_DATA_FILE).is_file():
        return _parse_training_record((p / TRAINING_DATA_FILE).read_text(), str(p / TRAINING_DATA_FILE))
    p = Path(resolve_checkpoint(p))
    if p.suffix == ".safetensors":
        meta = read_metadata(p)
        if meta.get(TRAINING_DATA_KEY):
            return _parse_training_record(meta[TRAINING_DATA_KEY], f"{p} (metadata '{TRAINING_DATA_KEY}')")
    run_dir = _run_dir_of(p)
    if run_dir is not None and (run_dir / TRAINING_DATA_FILE).is_file():
        return _parse_training_record((run_dir / TRAINING_DATA_FILE).read_text(), str(run_dir / TRAINING_DATA_FILE))
    return None


def _same_archive(record: Mapping[str, Any], store: str, manifest_hash: str | None) -> bool:
    """Same manifest hash; when either side has none, the same archive path (our rule)."""
    recorded = record.get("archive_manifest_hash")
    if recorded and manifest_hash:
        return str(recorded) == str(manifest_hash)
    a, b = str(record.get("archive") or ""), str(store)
    if not a:
        return False
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def check_training_overlap(checkpoints: Sequence[str], labels: Sequence[str], store: str | os.PathLike,
                           test_patch_ids: Sequence[str], manifest_hash: str | None,
                           allow_overlap: bool = False) -> dict[str, dict[str, Any]]:
    """Compare each checkpoint's recorded training patches with the test split of ``store``.

    Args:
        checkpoints: resolved checkpoints (:func:`resolve_checkpoint`), baselines included.
        labels: their display labels (same order).
        store: the evaluated archive.
        test_patch_ids: ``patch_id`` of every patch of the archive's test split.
        manifest_hash: the archive's ``manifest_hash`` attribute.
        allow_overlap: evaluate overlapping checkpoints anyway (else refuse).

    Returns:
        label → ``{"status", "archive", "n_patches", "n_test_overlap", "notes"}`` where ``status`` is
        ``"baseline"`` (random init / pixels: trained on nothing), ``"unknown"`` (no record; note
        "training data unknown"), ``"other_archive"`` (recorded, another archive: no overlap
        possible) or ``"recorded"`` (``n_test_overlap`` = recorded patches in the test split).

    Raises:
        BadInput: a checkpoint trained on test patches of this archive, without ``allow_overlap``
            (one line: the checkpoint and how many of its training patches are in the test split).
    """
    from pipeline.errors import BadInput

    test = {str(i) for i in test_patch_ids}
    out: dict[str, dict[str, Any]] = {}
    for label, ck in zip(labels, checkpoints):
        entry: dict[str, Any] = {"status": "baseline", "archive": None, "n_patches": None,
                                 "n_test_overlap": None, "notes": []}
        if ck == PIXELS or ck.startswith(RANDOM_PREFIX):
            out[label] = entry
            continue
        record = read_training_record(ck)
        if record is None:
            entry["status"] = "unknown"
            entry["notes"].append("training data unknown (no training-data record): cannot check whether it "
                                  "was trained on test patches")
        elif not _same_archive(record, str(store), manifest_hash):
            entry.update(status="other_archive", archive=record.get("archive"),
                         n_patches=len(record["patch_ids"]))
            entry["notes"].append(f"trained on another archive ({record.get('archive')}): no overlap with "
                                  "this test split")
        else:
            trained = {str(i) for i in record["patch_ids"]}
            n = len(trained & test)
            entry.update(status="recorded", archive=record.get("archive"), n_patches=len(trained), n_test_overlap=n)
            if n and not allow_overlap:
                raise BadInput(f"checkpoint {ck}: {n} of its {len(trained)} training patches are in the test "
                               f"split of {store}; its scores would not be held out (evaluate a checkpoint "
                               "trained on the train split, or pass --allow-overlap)")
            if n:
                entry["notes"].append(f"OVERLAP: trained on {n} patches of the test split (--allow-overlap)")
        out[label] = entry
    return out


# ============================================================================ models
class PixelStatistics(nn.Module):
    """Raw-pixel baseline: per-band spatial mean and std (``2·C``), optionally plus a
    ``grid × grid`` average-pooled image (``C·grid²``). No parameters."""

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

