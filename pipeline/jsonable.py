"""The one conversion to plain JSON types used by every summary and report the project writes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """``obj`` with plain JSON types only.

    Tensors and arrays become lists, numpy scalars Python numbers, NaN and infinities ``None``, paths
    strings, tuples and sets lists, mapping keys strings; anything else unknown its ``str``. Torch is
    recognised without importing it (this module is used where torch is not installed).
    """
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


__all__ = ["to_jsonable"]
