"""Normalisation of archive values and its per-band statistics (published tables, statistics files).

:class:`Normalizer` implements SoftCon's input scaling: per band, lo = μ − 2σ and
x' = clip((x − lo) / 4σ, 0, 1). This is the ``normalize`` of the SSL4EO-S12 data set code
(``src/benchmark/pretrain_ssl/datasets/SSL4EO/ssl4eo_dataset.py`` in github.com/zhu-xlab/SSL4EO-S12)
without its final uint8 step, as Copernicus-Bench (github.com/zhu-xlab/Copernicus-FM) feeds SoftCon.
``mode="zscore"`` is a plain ``(x − μ)/σ``. Non-finite inputs (S1 nodata is NaN in the archive, and
any float modality's) become ``nan_value`` (0.0) after scaling, so no NaN reaches the network; S2
nodata (0 DN) is scaled like any value, as in the original. Filling with 0 is our choice (no paper
fixes it; ``Normalizer(nan_value=…)`` changes it): 0 is the band mean under ``zscore``, and under
``softcon`` it is the lower clip bound (μ − 2σ), the value S2's 0 DN nodata scales to, so nodata of
every modality looks alike.

Statistics: the published SSL4EO-S12 tables (:data:`PUBLISHED_STATISTICS`), set A (default, the
"50k subset" table of ``ssl4eo_dataset.py``, used by Copernicus-Bench for SoftCon) and set B (the
rounded table of the same repository's ``convert_rgb.py``, used by torchgeo for the SoftCon
weights), keyed by band name so any band subset works; or statistics computed over an archive
(:func:`pipeline.statistics.compute_archive_statistics`) and saved as JSON
(:func:`save_statistics` / :func:`load_statistics`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.bands import MODALITY_BANDS, S1_GRD_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from pipeline.errors import BadInput

# --------------------------------------------------------------------------- statistics tables
_L1C_A_MEAN = (1605.575, 1390.782, 1314.873, 1363.524, 1549.444, 2091.749, 2371.717, 2299.905, 2560.295,
               830.066, 22.104, 2177.072, 1524.065)
_L1C_A_STD = (786.787, 850.348, 875.065, 1138.850, 1122.178, 1161.592, 1274.392, 1248.429, 1345.527,
              577.316, 51.154, 1336.099, 1136.538)
_L2A_A_MEAN = (752.401, 884.297, 1144.162, 1297.473, 1624.910, 2194.642, 2422.212, 2517.761, 2581.647,
               2645.519, 2368.512, 1805.068)
_L2A_A_STD = (1108.029, 1155.152, 1183.629, 1368.114, 1370.265, 1355.554, 1416.515, 1474.789, 1439.309,
              1582.280, 1455.521, 1343.484)
_L1C_B_MEAN = (1612.9, 1397.6, 1322.3, 1373.1, 1561.0, 2108.4, 2390.7, 2318.7, 2581.0, 837.7, 22.0, 2195.2,
               1537.4)
_L1C_B_STD = (791.0, 854.3, 878.7, 1144.9, 1127.5, 1164.2, 1276.0, 1249.5, 1345.9, 577.5, 47.5, 1340.0,
              1142.9)
_L2A_B_MEAN = (756.4, 889.6, 1151.7, 1307.6, 1637.6, 2212.6, 2442.0, 2538.9, 2602.9, 2666.8, 2388.8, 1821.5)
_L2A_B_STD = (1111.4, 1159.1, 1188.1, 1375.2, 1376.6, 1358.6, 1418.4, 1476.4, 1439.9, 1582.1, 1460.7, 1352.2)


def _table(bands: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> dict[str, tuple[float, float]]:
    assert len(bands) == len(mean) == len(std)
    return {b: (float(m), float(s)) for b, m, s in zip(bands, mean, std)}


#: SSL4EO-S12 normalisation statistics: ``set → modality → band → (mean, std)`` in archive units
#: (S2 DN = reflectance × 10000, S1 dB). Set "A" is the "50k subset" table of ``ssl4eo_dataset.py``
#: (github.com/zhu-xlab/SSL4EO-S12; used by Copernicus-Bench for SoftCon); set "B" the rounded table
#: of the same repository's ``convert_rgb.py`` (used by torchgeo for the SoftCon weights).
PUBLISHED_STATISTICS: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "A": {
        "s2_l1c": _table(S2_L1C_BANDS, _L1C_A_MEAN, _L1C_A_STD),
        "s2_l2a": _table(S2_L2A_BANDS, _L2A_A_MEAN, _L2A_A_STD),
        "s1_grd": _table(S1_GRD_BANDS, (-12.548, -20.192), (5.257, 5.912)),
    },
    "B": {
        "s2_l1c": _table(S2_L1C_BANDS, _L1C_B_MEAN, _L1C_B_STD),
        "s2_l2a": _table(S2_L2A_BANDS, _L2A_B_MEAN, _L2A_B_STD),
        "s1_grd": _table(S1_GRD_BANDS, (-12.59, -20.26), (5.26, 5.91)),
    },
}


def _check_modality(modality: str) -> None:
    if modality not in MODALITY_BANDS:
        raise ValueError(f"unknown modality {modality!r}; valid: {list(MODALITY_BANDS)}")


def published_statistics(modality: str, bands: Sequence[str] | None = None,
                         table: str = "A") -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` float64 arrays for ``bands`` (default: all bands of the modality, canonical order)."""
    _check_modality(modality)
    if table not in PUBLISHED_STATISTICS:
        raise ValueError(f"unknown statistics table {table!r}; valid: {list(PUBLISHED_STATISTICS)}")
    stats = PUBLISHED_STATISTICS[table][modality]
    bands = list(MODALITY_BANDS[modality] if bands is None else bands)
    missing = [b for b in bands if b not in stats]
    if missing:
        raise KeyError(f"{modality}: no published statistics for band(s) {missing}")
    return (np.array([stats[b][0] for b in bands], np.float64), np.array([stats[b][1] for b in bands], np.float64))


# --------------------------------------------------------------------------- normaliser
class Normalizer:
    """Per-band scaling of a ``(C, H, W)`` (or ``(..., C, H, W)``) tensor in archive units.

    ``mode="softcon"``: ``clip((x − (μ − 2σ)) / 4σ, 0, 1)``; ``mode="zscore"``: ``(x − μ)/σ``.
    Non-finite inputs of a float array (S1 nodata is NaN) become ``nan_value`` after scaling, so the
    output never holds NaN. The default 0.0 is our choice: the band mean under ``zscore``, the lower
    clip bound μ − 2σ under ``softcon`` (where S2's 0 DN nodata lands too). ``bands`` (optional) names
    the channels, so that :meth:`subset` can select any band subset by name.
    """

    MODES = ("softcon", "zscore")

    def __init__(self, mean: Sequence[float], std: Sequence[float], mode: str = "softcon",
                 bands: Sequence[str] | None = None, nan_value: float = 0.0):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mean = np.asarray(mean, np.float64).reshape(-1)
        self.std = np.asarray(std, np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError("mean and std must have the same length")
        if (self.std <= 0).any():
            raise ValueError("std must be positive")
        if bands is not None and len(bands) != len(self.mean):
            raise ValueError(f"{len(bands)} band names for {len(self.mean)} statistics")
        self.mode, self.nan_value = mode, float(nan_value)
        self.bands = None if bands is None else tuple(bands)
        if mode == "softcon":
            offset, factor = self.mean - 2 * self.std, 1.0 / (4 * self.std)
        else:
            offset, factor = self.mean, 1.0 / self.std
        self._offset = torch.tensor(offset, dtype=torch.float32).view(-1, 1, 1)
        self._factor = torch.tensor(factor, dtype=torch.float32).view(-1, 1, 1)

    # -- constructors
    @classmethod
    def published(cls, modality: str, bands: Sequence[str] | None = None, mode: str = "softcon",
                  table: str = "A") -> "Normalizer":
        """Published SSL4EO-S12 statistics (:data:`PUBLISHED_STATISTICS`, set ``table``) for ``bands``."""
        bands = list(MODALITY_BANDS[modality] if bands is None else bands)
        mean, std = published_statistics(modality, bands, table)
        return cls(mean, std, mode=mode, bands=bands)

    @classmethod
    def from_file(cls, path: str | Path, modality: str, bands: Sequence[str] | None = None,
                  mode: str = "softcon") -> "Normalizer":
        """Statistics saved by :func:`save_statistics`."""
        stored = _read_stats_file(path).get("modalities", {}).get(modality)
        if stored is None:
            raise KeyError(f"{path}: no statistics for {modality}")
        bands = list(stored["bands"] if bands is None else bands)
        mean, std = load_statistics(path, modality, bands)
        return cls(mean, std, mode=mode, bands=bands)

    def subset(self, bands: Sequence[str]) -> "Normalizer":
        """The normaliser for a subset / reordering of the named bands."""
        if self.bands is None:
            raise ValueError("this normaliser has no band names; cannot select bands by name")
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise KeyError(f"normaliser has no statistics for band(s) {missing}")
        idx = [self.bands.index(b) for b in bands]
        return Normalizer(self.mean[idx], self.std[idx], mode=self.mode, bands=list(bands),
                          nan_value=self.nan_value)

    # -- use
    def scale(self) -> torch.Tensor:
        """Normalised units per archive unit, per channel: 1/(4σ) (softcon) or 1/σ (zscore)."""
        return self._factor.view(-1).clone()

    def __len__(self) -> int:
        return len(self.mean)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """Scaled float32 copy of ``x`` (``g`` is accepted and ignored, so it composes with transforms)."""
        y = x.to(torch.float32)
        return self.apply_(y.clone() if y is x else y, check_nan=x.dtype.is_floating_point)

    def apply_(self, x: torch.Tensor, check_nan: bool = True) -> torch.Tensor:
        """In-place version of :meth:`__call__` for a float32 tensor (returns it)."""
        if x.dtype != torch.float32:
            raise TypeError("apply_ needs a float32 tensor")
        if x.shape[-3] != len(self.mean):
            raise ValueError(f"image has {x.shape[-3]} channels, normaliser {len(self.mean)}")
        # nodata (NaN, ±inf) is found before scaling: the clip would turn +inf into 1, a valid value
        nodata = ~torch.isfinite(x) if check_nan else None  # integer (S2 DN) input cannot hold NaN
        x.sub_(self._offset).mul_(self._factor)
        if self.mode == "softcon":
            x.clamp_(0.0, 1.0)
        if nodata is not None:
            x.masked_fill_(nodata, self.nan_value)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Archive units from scaled values (exact where the clip was not active)."""
        return y.to(torch.float32) / self._factor + self._offset

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "bands": None if self.bands is None else list(self.bands),
                "mean": self.mean.tolist(), "std": self.std.tolist(), "nan_value": self.nan_value}

    def __repr__(self) -> str:
        return f"Normalizer(mode={self.mode!r}, bands={self.bands})"


STATS_FORMAT = "softcon-stats/1"


def _read_stats_file(path: str | Path) -> dict:
    """A statistics file written by :func:`save_statistics`; anything else is refused (never overwritten)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
        raise BadInput(f"{path}: not a statistics file of this project ({STATS_FORMAT}); it is left as it is: "
                       "choose another --out / statistics path")
    return data


def save_statistics(path: str | Path, modality: str, bands: Sequence[str], mean: Sequence[float],
                    std: Sequence[float], **metadata: Any) -> Path:
    """Write (or add/replace one modality in) a statistics JSON file.

    Layout: ``{"format": "softcon-stats/1", "modalities": {modality: {"bands": [...], "mean": [...],
    "std": [...], **metadata}}}``; metadata is free-form JSON (e.g. the store path, ``max_patches``,
    pixel counts). The file is replaced atomically.
    """
    _check_modality(modality)
    bands, mean, std = list(bands), [float(v) for v in mean], [float(v) for v in std]
    if not len(bands) == len(mean) == len(std):
        raise ValueError("bands, mean and std must have the same length")
    path = Path(path)
    data = _read_stats_file(path) if path.exists() else {"format": STATS_FORMAT, "modalities": {}}
    entry = {"bands": bands, "mean": mean, "std": std}
    entry.update({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metadata.items()})
    data["modalities"][modality] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_statistics(path: str | Path, modality: str,
                    bands: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of ``modality`` from a statistics file, for ``bands`` (default: as stored)."""
    entry = _read_stats_file(path).get("modalities", {}).get(modality)
    if entry is None:
        raise KeyError(f"{path}: no statistics for {modality}")
    stored = list(entry["bands"])
    bands = stored if bands is None else list(bands)
    missing = [b for b in bands if b not in stored]
    if missing:
        raise KeyError(f"{path}: no {modality} statistics for band(s) {missing}")
    idx = [stored.index(b) for b in bands]
    return np.asarray(entry["mean"], np.float64)[idx], np.asarray(entry["std"], np.float64)[idx]
