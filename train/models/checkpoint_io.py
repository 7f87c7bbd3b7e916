"""Reading local checkpoints safely and unwrapping them down to the backbone's state dict."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from train.models.report import LoadReport, WeightLoadError

#: Container keys descended into when a checkpoint is not a bare state dict, in priority order
#: (DINO/DINOv2 training checkpoints keep both ``teacher`` and ``student``; the teacher wins).
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "teacher", "student")
#: Key prefixes removed from checkpoints. ``module.``/``_orig_mod.`` (DDP / torch.compile) are
#: stripped wherever present; for the others, when only some keys carry the prefix, only those keys
#: are kept (the rest — projection heads, DINO heads, momentum encoders — are reported as ignored).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
SELECT_PREFIXES: tuple[str, ...] = ("backbone.", "base_encoder.", "encoder.")


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a local checkpoint on CPU without executing pickled code.

    ``.safetensors`` files go through :func:`safetensors.torch.load_file`; anything else through
    ``torch.load(path, map_location="cpu", weights_only=True)``, which only rebuilds tensors and
    plain containers.

    Raises:
        ValueError: ``path`` is a URL (only local files are accepted).
        FileNotFoundError: ``path`` does not exist.
        WeightLoadError: the pickle holds objects ``weights_only`` refuses, or the file is unreadable.
    """
    text = os.fspath(path)
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, flags=re.IGNORECASE):
        raise ValueError(f"only local checkpoint files are supported, got {text!r}")
    p = Path(text)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightLoadError(
            f"{p}: refused by torch.load(weights_only=True); the file contains objects other than "
            f"tensors and plain containers. Re-save it as a bare state dict or safetensors. ({err})"
        ) from err


def unwrap_state_dict(
    obj: Any, checkpoint_key: str | None = None, trail: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Descend into checkpoint containers until a ``{name: tensor}`` mapping is reached.

    Args:
        obj: What :func:`read_checkpoint` returned.
        checkpoint_key: Container key to take first (dotted for nesting, e.g. ``"ema.model"``);
            otherwise :data:`CONTAINER_KEYS` are tried in order.
        trail: Optional list that receives the keys descended into.

    Returns:
        The tensor entries of the innermost mapping (non-tensor entries such as ``epoch`` dropped).
    """
    trail = [] if trail is None else trail
    if checkpoint_key:
        for part in checkpoint_key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                raise KeyError(f"checkpoint has no container {checkpoint_key!r}")
            obj = obj[part]
            trail.append(part)
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                trail.append(key)
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise WeightLoadError(f"checkpoint is a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightLoadError(
            f"no tensors found (top-level keys: {list(obj)[:10]}); pass checkpoint_key= to pick one"
        )
    return tensors


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(
    sd: dict[str, torch.Tensor], model_keys: set[str], report: LoadReport
) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes and select the backbone sub-dict (see :data:`SELECT_PREFIXES`)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES + SELECT_PREFIXES:
            if any(k.startswith(prefix) for k in model_keys):
                continue  # the model itself uses this prefix (e.g. loading into an Encoder)
            hits = [k for k in sd if k.startswith(prefix)]
            if not hits:
                continue
            if prefix in WRAPPER_PREFIXES or len(hits) == len(sd):
                sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
            else:
                for k in sd:
                    if not k.startswith(prefix):
                        report.ignored_keys[k] = f"outside the '{prefix}' sub-dict"
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            report.container.append(f"strip '{prefix}'")
            changed = True
    return sd


# --------------------------------------------------------------------------------------------
# Key-layout adapters
