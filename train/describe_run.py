"""Describe a pretraining run folder, an exported backbone or a checkpoint (``softcon inspect PATH``).

Everything is read from the files, without building a model or loading tensors (no torch import):

* a safetensors file's header (the format's first 8 bytes give the length of a JSON header holding
  each tensor's dtype and shape and the ``__metadata__`` strings; see the safetensors specification,
  https://github.com/huggingface/safetensors#format): the parameter count and the metadata that
  pretraining writes: ``format`` ``softcon-backbone`` (architecture, modality, bands, normaliser,
  BatchNorm statistics, training-data record) or ``softcon-pretrain-v1`` (``meta``: epoch, global
  step, config, mean loss of the epoch);
* a run folder's ``config.yaml``, ``training_data.json``, the latest ``checkpoints/epoch-*.safetensors``,
  ``backbone.safetensors`` and the logged losses (``tensorboard/`` or ``metrics.csv``,
  :func:`train.figures.read_run_scalars`).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from pipeline.errors import BadInput
from pipeline.store_target import is_url

_RUN_MARKERS = ("training_data.json", "backbone.safetensors", "checkpoints", "config.yaml")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format caps the header at 100 MB


def is_run_path(path: str) -> bool:
    """True for a local pretraining run folder (one of its files is there and it is not a Zarr
    store) or a path naming a ``.safetensors`` file (existing or not: describing it reports a missing one).
    """
    if is_url(path):
        return False
    p = Path(path)
    if p.suffix == ".safetensors":
        return True
    if p.is_dir():
        return not (p / "zarr.json").exists() and any((p / m).exists() for m in _RUN_MARKERS)
    return p.is_file()


def read_safetensors_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file: ``{name: {"dtype", "shape", ...}}`` and the
    ``__metadata__`` strings. Raises :class:`BadInput` naming the file when it is not one.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: file not found")
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInput(f"{p}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or n > p.stat().st_size - 8:
            raise BadInput(f"{p}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInput(f"{p}: not a safetensors file (header is not JSON)") from err
    if not isinstance(header, dict):
        raise BadInput(f"{p}: not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    return header, {str(k): str(v) for k, v in metadata.items()}


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _count(tensors: dict[str, Any], prefix: str = "") -> int:
    """Values of the tensors named ``prefix…``, BatchNorm buffers left out (parameters only)."""
    return sum(math.prod(t.get("shape", [])) for k, t in tensors.items()
               if k.startswith(prefix) and not k.endswith(_BUFFERS))


def _training_data(record: Any) -> dict[str, Any] | None:
    """The headline of a training-data record (without its list of patch ids)."""
    if not isinstance(record, dict):
        return None
    split = record.get("split_record") or {}
    return {"archive": record.get("archive"), "archive_manifest_hash": record.get("archive_manifest_hash"),
            "splits": record.get("splits"), "n_patches": record.get("n_patches"),
            "split": {k: split.get(k) for k in ("by", "seed", "val", "test", "grid_km", "counts", "hash")
                      if k in split} or None}


def _normaliser(meta: dict[str, str], config: dict[str, Any] | None) -> Any:
    recorded = _json(meta.get("normalizer"))
    if isinstance(recorded, dict):
        return {k: recorded.get(k) for k in ("mode", "bands", "mean", "std")}
    stats = (config or {}).get("statistics")
    return stats or None


def describe_file(path: str | Path) -> dict[str, Any]:
    """Description of one weight file (module docstring); ``kind`` is ``backbone``, ``checkpoint`` or ``weights``."""
    tensors, meta = read_safetensors_header(path)
    out: dict[str, Any] = {"path": str(path), "format": meta.get("format"), "tensors": len(tensors)}
    if meta.get("format") == "softcon-backbone":
        out.update(kind="backbone", architecture=meta.get("backbone"), modality=meta.get("modality"),
                   bands=_json(meta.get("bands")), parameters=_count(tensors), normalizer=_normaliser(meta, None),
                   bn_statistics=_json(meta.get("bn_statistics")),
                   training_data=_training_data(_json(meta.get("training_data"))))
    elif meta.get("format") == "softcon-pretrain-v1":
        info = _json(meta.get("meta")) or {}
        cfg = info.get("config") or {}
        out.update(kind="checkpoint", architecture=cfg.get("backbone"), modality=cfg.get("modality"),
                   loss=(cfg.get("loss") or {}).get("name"), epoch=info.get("epoch"), epochs=cfg.get("epochs"),
                   steps=info.get("global_step"), epoch_mean_loss=info.get("mean_loss"),
                   parameters=_count(tensors, "model."), normalizer=cfg.get("statistics"))
    else:
        out.update(kind="weights", parameters=_count(tensors), metadata_keys=sorted(meta))
    return out


def describe_run(run_dir: str | Path) -> dict[str, Any]:
    """Description of a run folder: config, training data and split, steps and last loss, its files."""
    import yaml

    run = Path(run_dir)
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
    out: dict[str, Any] = {"path": str(run), "kind": "run"}
    if isinstance(config, dict):
        loss = config.get("loss") or {}
        out.update(architecture=config.get("backbone"), modality=config.get("modality"),
                   view_mode=config.get("view_mode"), loss=loss.get("name"), crop_size=config.get("crop_size"),
                   batch_size=config.get("batch_size"), epochs=config.get("epochs"),
                   normalizer=config.get("statistics"))
    if (run / "training_data.json").is_file():
        out["training_data"] = _training_data(_json((run / "training_data.json").read_text()))
    checkpoints = sorted((run / "checkpoints").glob("epoch-*.safetensors"))
    if checkpoints:
        ck = describe_file(checkpoints[-1])
        out.update(latest_checkpoint=ck["path"], epoch=ck.get("epoch"), steps=ck.get("steps"),
                   epoch_mean_loss=ck.get("epoch_mean_loss"))
    backbone = run / "backbone.safetensors"
    if backbone.is_file():
        bb = describe_file(backbone)
        out["backbone"] = {k: bb.get(k) for k in ("path", "architecture", "modality", "parameters", "bn_statistics")}
        out["bands"] = bb.get("bands")
        if bb.get("normalizer") is not None:
            out["normalizer"] = bb["normalizer"]
    out["finished"] = backbone.is_file()
    try:
        from train.figures import read_run_scalars

        steps, losses = read_run_scalars(run)["train/loss"]
        out.update(logged_steps=int(steps[-1]), last_loss=float(losses[-1]))
    except (BadInput, KeyError, IndexError):
        pass
    return out


def describe_path(path: str | Path) -> dict[str, Any]:
    """:func:`describe_run` for a folder, :func:`describe_file` for a file; :class:`BadInput` otherwise."""
    p = Path(path)
    if p.is_dir():
        return describe_run(p)
    return describe_file(p)


def _normaliser_lines(norm: Any) -> list[str]:
    if isinstance(norm, dict) and norm.get("mean") is not None:
        bands = norm.get("bands") or [str(i) for i in range(len(norm["mean"]))]
        pairs = ", ".join(f"{b} {m:.0f}±{s:.0f}" for b, m, s in zip(bands, norm["mean"], norm["std"]))
        return [f"normalisation: {norm.get('mode')} (mean±std per band): {pairs}"]
    if norm:
        return [f"normalisation: {'published SSL4EO-S12 statistics' if norm == 'published' else norm}"]
    return []


def format_description(d: dict[str, Any]) -> str:
    """Lines for the terminal (one fact per line)."""
    lines = [f"{d['kind']}: {d['path']}"]
    arch = " ".join(str(x) for x in (d.get("architecture"), d.get("modality") and f"on {d['modality']}",
                                     d.get("view_mode") and f"({d['view_mode']})") if x)
    if arch:
        lines.append(f"architecture: {arch}" + (f", loss {d['loss']}" if d.get("loss") else ""))
    params = d.get("parameters") or (d.get("backbone") or {}).get("parameters")
    if params:
        scope = {"run": " (backbone)", "checkpoint": " (online and target branches with their heads)"}
        lines.append(f"parameters: {params:,}{scope.get(d['kind'], '')}")
    if d.get("bands"):
        lines.append(f"bands ({len(d['bands'])}): {', '.join(d['bands'])}")
    lines += _normaliser_lines(d.get("normalizer"))
    td = d.get("training_data")
    if td:
        split = td.get("split") or {}
        where = (f"split by {split.get('by')}, seed {split.get('seed')}, counts {split.get('counts')}, "
                 f"hash {str(split.get('hash'))[:16]}") if split else "no split record"
        lines.append(f"training data: {td.get('n_patches')} patches of {td.get('archive')} (splits {td.get('splits')}; "
                     f"{where})")
    progress = []
    if d.get("epoch") is not None:
        progress.append(f"epoch {int(d['epoch']) + 1}" + (f" of {d['epochs']}" if d.get("epochs") else ""))
    if d.get("steps") is not None:
        progress.append(f"{d['steps']} steps")
    if d.get("epoch_mean_loss") is not None:
        progress.append(f"epoch mean loss {d['epoch_mean_loss']:.4f}")
    if d.get("last_loss") is not None:
        progress.append(f"last logged loss {d['last_loss']:.4f} (step {d['logged_steps']})")
    if progress:
        lines.append("progress: " + ", ".join(progress))
    if d["kind"] == "run":
        lines.append("exported backbone: " + ((d.get("backbone") or {}).get("path") or "none (training not finished)"))
        if d.get("backbone", {}).get("bn_statistics"):
            lines.append(f"BatchNorm statistics: {d['backbone']['bn_statistics']}")
    if d["kind"] == "weights":
        lines.append(f"not a softcon file: {d['tensors']} tensors, metadata keys {d.get('metadata_keys')}")
    return "\n".join(lines)
