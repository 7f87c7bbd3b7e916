"""Bands of downstream images in the pretraining order: resampling, the missing ``B10`` and band stacking.

``image`` arrays hold the bands of the requested modality in the canonical order of :mod:`pipeline.bands` and in the
data's own units: S2 digital numbers (reflectance × 10000) and S1 backscatter in dB. Nothing is normalised here:
normalisation belongs to the backbone's weights.

Conventions (documented choices)
--------------------------------
Resampling
    Bands whose grid differs from ``size × size`` (BigEarthNet 20 m bands are 60 × 60, 60 m bands
    20 × 20) are resampled with **bilinear interpolation on pixel centres** (half-pixel
    convention, edges clamped): ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``, in float32, without rounding. This is what GDAL's bilinear and
    ``cv2.resize(INTER_LINEAR)`` compute (GDAL then rounds to the source integer type; we keep
    the fraction). When shrinking (``size`` smaller than the band), the antialiased variant
    (``antialias=True``) is used so that every source pixel contributes. Bands already at
    ``size × size`` are returned exactly as stored.

Missing bands
    BigEarthNet (v1 and v2) is Sentinel-2 **L2A**: it has no ``B10`` (cirrus). When the backbone
    expects ``s2_l1c`` (13 bands), ``B10`` is inserted at its canonical index (10) as a constant so
    that every other channel lines up with the pretraining order. ``missing_fill="mean"``
    (default) uses :data:`L1C_B10_MEAN_DN` = 22.1 DN, the SSL4EO-S12 L1C ``B10`` mean (50k-patch
    statistics published with SSL4EO-S12), so after the backbone's mean/std normalisation the
    channel is ~0, the in-distribution "no information" value; ``missing_fill="zero"`` inserts 0
    DN; a number inserts that value. The other S2 values stay L2A surface reflectance: the
    13-band layout is a compatibility layout, not an L1C product. The reverse case (an L1C source
    such as EuroSAT read as ``s2_l2a``) drops ``B10``. Any other missing band is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

#: SSL4EO-S12 (v1.0) Sentinel-2 L1C mean of B10 in DN, from the dataset's published 50k-patch
#: statistics (22.10). Fill value of the missing B10 channel with ``missing_fill="mean"``.
L1C_B10_MEAN_DN: float = 22.1


def missing_band_fill(missing_fill: str | float) -> dict[str, float]:
    """Constant used for each band a source may lack (only ``B10``; see the module docstring)."""
    if missing_fill == "mean":
        return {"B10": L1C_B10_MEAN_DN}
    if missing_fill == "zero":
        return {"B10": 0.0}
    if isinstance(missing_fill, (int, float)) and not isinstance(missing_fill, bool):
        return {"B10": float(missing_fill)}
    raise ValueError(f"missing_fill must be 'mean', 'zero' or a number, got {missing_fill!r}")


def resample_bilinear(band: np.ndarray, size: int) -> np.ndarray:
    """One band to ``size × size``: bilinear on pixel centres (antialiased when shrinking), float32."""
    arr = np.asarray(band, dtype=np.float32)
    if arr.shape == (size, size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    shrink = size < arr.shape[0] or size < arr.shape[1]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy()


def assemble_bands(arrays: Mapping[str, np.ndarray], bands: Sequence[str], fill: Mapping[str, float],
                   size: int) -> np.ndarray:
    """Stack ``arrays`` (band name → 2-D array) in the order ``bands`` at ``size × size``.

    A band absent from ``arrays`` but present in ``fill`` becomes that constant; any other absent
    band raises ``KeyError``. Bands of ``arrays`` not listed in ``bands`` are dropped.
    """
    out = np.empty((len(bands), size, size), np.float32)
    for i, b in enumerate(bands):
        if b in arrays:
            out[i] = resample_bilinear(arrays[b], size)
        elif b in fill:
            out[i] = fill[b]
        else:
            raise KeyError(f"band {b} is not available in this source and has no fill rule")
    return out


def _read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)
