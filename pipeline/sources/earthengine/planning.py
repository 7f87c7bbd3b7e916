"""Request planning and decoding for ``ee.data.computePixels``: size limits, band groups, row strips.

Earth Engine refuses a ``computePixels`` answer above 48 MiB (50,331,648 bytes; see the Earth Engine
REST API reference of ``projects.image.computePixels`` and its usage limits). :func:`plan_requests` sizes
every request as bands × height × width × dtype size (plus a margin for the NPY header) and splits the
bands into groups, and a band too large on its own into row strips. Each request carries an explicit
grid, the patch grid (:func:`grid_dict`): ``{"crsCode": "EPSG:326xx", "affineTransform": {scaleX,
shearX, translateX, shearY, scaleY, translateY}, "dimensions": {width, height}}``, and asks for
``fileFormat="NUMPY_NDARRAY"``, whose structured answer :func:`to_band_array` checks and decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ee
import numpy as np

from pipeline.grid import PatchGrid
from pipeline.sources.base import CorruptData

#: Earth Engine's documented limit on the size of one ``computePixels`` answer (48 MiB).
MAX_REQUEST_BYTES = 48 * 1024 * 1024
#: Room left for the NPY header and structured-array description in each answer.
NPY_HEADER_MARGIN = 64 * 1024


@dataclass(frozen=True)
class RequestPlan:
    """One ``computePixels`` request: a band group over rows ``[row0, row0 + rows)`` of the grid."""

    bands: tuple[str, ...]
    row0: int
    rows: int


def plan_requests(bands: tuple[str, ...], grid: PatchGrid, itemsize: int,
                  max_bytes: int = MAX_REQUEST_BYTES) -> list[RequestPlan]:
    """Split ``bands`` over the grid into requests of at most ``max_bytes`` (minus the header margin).

    Bands are grouped (in order) as many per request as fit; a single band larger than the budget is
    split into row strips.
    """
    budget = max_bytes - NPY_HEADER_MARGIN
    width = height = grid.size
    row_bytes = width * itemsize
    if budget < row_bytes:
        raise ValueError(f"max_bytes={max_bytes} cannot hold one row of {width} px × {itemsize} B")
    band_bytes = height * row_bytes
    if band_bytes <= budget:
        per = max(1, budget // band_bytes)
        return [RequestPlan(tuple(bands[i:i + per]), 0, height) for i in range(0, len(bands), per)]
    rows = budget // row_bytes
    return [RequestPlan((b,), r, min(rows, height - r)) for b in bands for r in range(0, height, rows)]


def request_bytes(plan: RequestPlan, grid: PatchGrid, itemsize: int) -> int:
    return len(plan.bands) * plan.rows * grid.size * itemsize


def grid_dict(grid: PatchGrid, row0: int = 0, rows: int | None = None) -> dict[str, Any]:
    """Earth Engine ``PixelGrid`` of the patch grid (or of its rows ``[row0, row0 + rows)``)."""
    a, b, c, d, e, f = grid.transform
    return {
        "crsCode": grid.crs,
        "affineTransform": {
            "scaleX": a, "shearX": b, "translateX": c,
            "shearY": d, "scaleY": e, "translateY": f + row0 * e,
        },
        "dimensions": {"width": grid.size, "height": grid.size if rows is None else rows},
    }


def pixel_request(image: ee.Image, plan: RequestPlan, grid: PatchGrid) -> dict[str, Any]:
    """The ``ee.data.computePixels`` parameters of one planned request."""
    return {
        "expression": image.select(list(plan.bands)),
        "fileFormat": "NUMPY_NDARRAY",
        "bandIds": list(plan.bands),
        "grid": grid_dict(grid, plan.row0, plan.rows),
    }


# ----------------------------------------------------------------------------------------------- payloads
def to_band_array(payload: Any, bands: tuple[str, ...], shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Structured ``(y, x)`` array with one field per band → ``(band, y, x)`` in ``dtype``; else CorruptData."""
    if not isinstance(payload, np.ndarray) or payload.dtype.names is None:
        raise CorruptData(f"expected a structured numpy array with fields {list(bands)}, "
                          f"got {type(payload).__name__}{_shape_of(payload)}")
    if payload.shape != tuple(shape):
        raise CorruptData(f"pixel array has shape {payload.shape}, expected {tuple(shape)}")
    missing = [b for b in bands if b not in payload.dtype.names]
    if missing:
        raise CorruptData(f"pixel array lacks band field(s) {missing}; fields: {list(payload.dtype.names)}")
    target = np.dtype(dtype)
    out = np.empty((len(bands),) + tuple(shape), dtype=target)
    for i, band in enumerate(bands):
        field = payload[band]
        kind = field.dtype.kind
        if target.kind in "ui":
            if kind not in "ui":
                raise CorruptData(f"band {band}: expected integer pixels for {target}, got {field.dtype}")
            info = np.iinfo(target)
            if field.size and (field.min() < info.min or field.max() > info.max):
                raise CorruptData(f"band {band}: values [{field.min()}, {field.max()}] do not fit {target}")
        elif kind not in "uif":
            raise CorruptData(f"band {band}: expected numeric pixels, got {field.dtype}")
        out[i] = field
    return out


def _shape_of(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    return f" of shape {tuple(shape)}" if shape is not None else ""
