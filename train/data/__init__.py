"""Training data from the Zarr archive: normalisation, archive statistics, a torch Dataset and its loader.

Normalisation (:class:`Normalizer`)
    SoftCon's input scaling (shared specs, softcon.md §1.6): per band, lo = μ − 2σ and
    x' = clip((x − lo) / 4σ, 0, 1) (the Copernicus-Bench variant, without the uint8 step), or a plain
    z-score ``(x − μ)/σ`` (``mode="zscore"``). Non-finite inputs (S1 nodata is NaN in the archive,
    and any float modality's) become ``nan_value`` (0.0) after scaling, so no NaN reaches the network;
    S2 nodata (0 DN) is scaled like any value, as in the original. Filling with 0 is our choice (no
    paper fixes it; ``Normalizer(nan_value=…)`` changes it): 0 is the band mean under ``zscore``, and
    under ``softcon`` it is the lower clip bound (μ − 2σ), the value S2's 0 DN nodata scales to, so
    nodata of every modality looks alike.
    Statistics: the published SSL4EO-S12 tables of softcon.md §1.6, set A (default, "50k subset",
    used by Copernicus-Bench for SoftCon) and set B (rounded, used by torchgeo), keyed by band name so
    any band subset works; or statistics computed over an archive (:func:`compute_archive_statistics`)
    and saved as JSON (:func:`save_statistics` / :func:`load_statistics`).

Data set (:class:`ArchiveDataset`)
    Items are ``(patch, season)`` pairs of the patches whose ``status`` is done (optionally restricted
    to ``indices`` and to the archive's ``splits``, see below), in patch-then-season order. Each item reads only the chunks it needs
    (``arr[p, s]`` is one chunk), converts to float32, normalises, then applies the view transforms.
    Item dicts hold tensors, ints and the band names; :func:`collate_items` (the collate of
    :func:`build_dataloader`) batches them, keeping the band names once per batch:

    ========================  ==================================================================
    ``image``                 (C, H, W) float32 — ``view_mode="single"``
    ``view1``, ``view2``      (C, H, W) float32 — two-view modes
    ``label_fraction``        (9,) float32 of the season of view 1 (``image`` in single mode)
    ``multi_hot``             (9,) float32 of the season of view 1
    ``location``              int, patch index in the archive
    ``season``                int, season of view 1 / the image
    ``season2``               int, season of view 2 (``seasonal`` only)
    ``index``                 int, item index in the data set
    ``bands``                 tuple of the band names of view 1 / the image (``band_names``)
    ``bands2``                tuple of the band names of view 2 (``cross_modal`` only)
    ========================  ==================================================================

    View modes: ``same_season`` (two augmentations of one image), ``seasonal`` (view 2 from another
    season of the same location, drawn uniformly among the other seasons with the item's generator:
    SeCo / SSL4EO-S12 ``season=augment`` positives), ``cross_modal`` (view 1 = ``modality``, view 2 =
    ``modality2`` of the same location and season), ``single`` (one view, e.g. for evaluation).

    The zarr group is opened lazily, once per process (re-opened after a fork; never pickled), so
    the data set works with any number of DataLoader workers and with local paths or fsspec URLs.

Splits and the training-data record
    ``ArchiveDataset(splits=["train"])`` keeps only the done patches of those splits of the archive
    (the ``split`` variable written by ``softcon split``, :mod:`pipeline.split`); ``splits="all"``
    keeps every done patch on purpose; ``None`` (the default of the class, for evaluation code that
    passes its own ``indices``) does not look at the split. An archive without a split is a
    :class:`~pipeline.errors.BadInput` when splits are asked for. :meth:`ArchiveDataset.training_data`
    is what a pretraining run records (``training_data.json``, :func:`write_training_data`): the
    archive, its manifest hash, the splits, the split record and the ``patch_id`` of every patch used.

Randomness and resumption
    Each item draws everything (the other season, every augmentation) from its own
    :class:`torch.Generator`, seeded from ``(seed, epoch, index)`` (:func:`item_seed`). The result
    of ``ds[i]`` is thus a pure function of (archive, seed, epoch, i): independent of workers, batch
    composition and order, so a run resumed at epoch e sees exactly the augmentations of an
    uninterrupted one. :meth:`ArchiveDataset.set_epoch` sets the epoch; :func:`build_dataloader`'s
    sampler also stamps the epoch onto every index (``ds[(i, epoch)]``), so even persistent workers,
    which keep an old copy of the data set, see the right epoch. Its permutation is seeded by
    ``seed + epoch`` (as :class:`~torch.utils.data.DistributedSampler`), and ``set_epoch(epoch,
    skip_batches=k)`` resumes in the middle of an epoch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from pipeline.bands import MODALITY_BANDS, S1_GRD_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from pipeline.errors import BadInput
from pipeline.split import SPLIT_CODES, read_split
from pipeline.store import STATUS_DONE, open_group
from train.cpu_memory import keep_freed_memory

__all__ = [
    "PUBLISHED_STATISTICS",
    "published_statistics",
    "Normalizer",
    "compute_archive_statistics",
    "save_statistics",
    "load_statistics",
    "item_seed",
    "item_generator",
    "ArchiveDataset",
    "SPLIT_NAMES",
    "ALL_SPLITS",
    "select_split_patches",
    "TRAINING_DATA_FILE",
    "training_data_json",
    "write_training_data",
    "EpochSampler",
    "EpochDataLoader",
    "build_dataloader",
    "collate_items",
    "NAME_KEYS",
]

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


#: SSL4EO-S12 normalisation statistics, shared specs softcon.md §1.6: ``set → modality → band →
#: (mean, std)`` in archive units (S2 DN = reflectance × 10000, S1 dB). Set "A" is the "50k subset"
#: table of ``ssl4eo_dataset.py`` (used by Copernicus-Bench for SoftCon); set "B" the rounded table of
#: ``convert_rgb.py`` (used by torchgeo for the SoftCon weights).
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
        """Published SSL4EO-S12 statistics (softcon.md §1.6, set ``table``) for ``bands`` of ``modality``."""
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


# --------------------------------------------------------------------------- archive statistics
def _nodata_mask(block: np.ndarray) -> np.ndarray:
    """True where a value is nodata: 0 for integer (S2 DN) arrays, non-finite for float (S1 dB)."""
    if block.dtype.kind == "f":
        return ~np.isfinite(block)
    return block == 0


def compute_archive_statistics(store: str, modality: str, max_patches: int | None = None,
                               storage_options: dict | None = None, bands: Sequence[str] | None = None,
                               return_counts: bool = False):
    """Per-band mean and (population) std over the done patches of an archive, over valid pixels only.

    Streams one patch at a time (its season chunks), combining per-chunk counts, means and sums of
    squared deviations with Chan's parallel update in float64, so memory stays at one patch and the
    result does not suffer from cancellation. ``max_patches`` limits the work to that many done
    patches, spread evenly over the archive (deterministic). Nodata, left out of every sum and count:
    0 DN for S2 (integer arrays), NaN (any non-finite value) for S1 and any float modality; the result
    equals ``numpy.nanmean`` / ``numpy.nanstd`` over the float modality's pixels.

    Returns ``(mean, std)`` float64 arrays in the order of ``bands`` (default: the archive's bands of
    the modality), plus the per-band valid pixel counts when ``return_counts``.
    """
    group = open_group(store, "r", storage_options)
    if modality not in group:
        raise KeyError(f"{store}: no {modality} in the archive")
    arr = group[modality]
    archive_bands = list(group.attrs["band_names"][modality])
    bands = archive_bands if bands is None else list(bands)
    band_idx = np.array([archive_bands.index(b) for b in bands])
    done = np.flatnonzero(group["status"][:] == STATUS_DONE)
    if max_patches is not None and max_patches < len(done):
        if max_patches <= 0:
            raise ValueError("max_patches must be positive")
        done = done[np.unique(np.linspace(0, len(done) - 1, max_patches).round().astype(int))]
    C = len(bands)
    count = np.zeros(C, np.float64)
    mean = np.zeros(C, np.float64)
    m2 = np.zeros(C, np.float64)
    for p in done:
        patch = arr[int(p)]  # (S, C_all, H, W): the patch's season chunks
        for block in patch:
            block = block[band_idx].reshape(C, -1)
            valid = ~_nodata_mask(block)
            n_b = valid.sum(axis=1).astype(np.float64)
            x = np.where(valid, block, 0).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.where(n_b > 0, x.sum(axis=1) / n_b, 0.0)
            dev = np.where(valid, x - mean_b[:, None], 0.0)
            m2_b = (dev * dev).sum(axis=1)
            total = count + n_b
            delta = mean_b - mean
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.where(total > 0, n_b / total, 0.0)
                cross = np.where(total > 0, delta * delta * count * n_b / total, 0.0)
            mean = mean + delta * w
            m2 = m2 + m2_b + cross
            count = total
    if (count == 0).any():
        empty = [b for b, n in zip(bands, count) if n == 0]
        raise ValueError(f"{store}: no valid {modality} pixels for band(s) {empty} in the done patches")
    std = np.sqrt(m2 / count)
    return (mean, std, count.astype(np.int64)) if return_counts else (mean, std)


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


# --------------------------------------------------------------------------- per-item randomness
def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, index) (numpy SeedSequence mixing)."""
    words = np.random.SeedSequence([int(seed) % (1 << 64), int(epoch) % (1 << 64), int(index) % (1 << 64)])
    lo, hi = words.generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & ((1 << 63) - 1)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(item_seed(seed, epoch, index))
    return g


# --------------------------------------------------------------------------- splits and the record
#: Split names of the archive's ``split`` variable (:data:`pipeline.split.SPLIT_CODES`).
SPLIT_NAMES = tuple(SPLIT_CODES)
#: ``splits`` value that selects every done patch, with or without a split in the archive.
ALL_SPLITS = "all"
#: File of a run folder that records what the run trained on.
TRAINING_DATA_FILE = "training_data.json"


def _check_split_names(splits: Sequence[str] | str) -> list[str] | str:
    """``"all"`` or a non-empty list of distinct names of :data:`SPLIT_NAMES` (else :class:`BadInput`)."""
    if isinstance(splits, str):
        if splits == ALL_SPLITS:
            return ALL_SPLITS
        splits = [splits]
    names = list(splits)
    if not names:
        raise BadInput(f"splits: empty; name the splits to use ({', '.join(SPLIT_NAMES)}) "
                       f"or '{ALL_SPLITS}' for every done patch")
    unknown = [n for n in names if n not in SPLIT_NAMES]
    if unknown:
        raise BadInput(f"splits: unknown split(s) {unknown}; valid: {list(SPLIT_NAMES)} or '{ALL_SPLITS}'")
    if len(set(names)) != len(names):
        raise BadInput(f"splits: {names} names a split twice")
    return names


def select_split_patches(store: str, splits: Sequence[str] | str, storage_options: dict | None = None
                         ) -> tuple[np.ndarray | None, dict | None]:
    """``(patch indices, split record)`` of the archive's ``splits`` (e.g. ``["train"]``).

    The indices (int64, sorted) are every patch whose split code is one of ``splits``, whatever
    its status (intersect with the done patches yourself). ``splits="all"``: indices ``None`` (no
    restriction) and the record if the archive has one. An archive without a split raises
    :class:`BadInput` naming it and the command that writes one.
    """
    names = _check_split_names(splits)
    found = read_split(str(store), storage_options)
    if names == ALL_SPLITS:
        return None, (None if found is None else found[1])
    if found is None:
        raise BadInput(f"{store}: the archive has no train/val/test split; create one with "
                       f"`softcon split {store}` (or set splits: {ALL_SPLITS} to use every done patch)")
    codes, record = found
    wanted = np.array([SPLIT_CODES[n] for n in names], dtype=np.asarray(codes).dtype)
    return np.flatnonzero(np.isin(np.asarray(codes), wanted)).astype(np.int64), record


def training_data_json(record: dict[str, Any]) -> str:
    """The one JSON text of a training-data record: ``training_data.json`` and the exported
    backbone's safetensors metadata key ``training_data`` hold exactly this string."""
    return json.dumps(record, separators=(",", ":"))


def write_training_data(run_dir: str | Path, record: dict[str, Any], resume: bool = False) -> str:
    """Write ``<run_dir>/training_data.json`` (atomically) and return its text.

    On ``resume`` an existing record is kept and returned when it names the same training data
    (archive manifest hash, split hash, patch ids); a different one is a :class:`BadInput`, since
    the checkpoint was trained on other patches (the archive or its split changed since).
    """
    path = Path(run_dir) / TRAINING_DATA_FILE
    text = training_data_json(record)
    if resume and path.is_file():
        old_text = path.read_text()
        old = json.loads(old_text)

        def key(r: dict) -> tuple:
            split_hash = (r.get("split_record") or {}).get("hash")
            return r.get("archive_manifest_hash"), split_hash, r.get("splits"), r.get("patch_ids")

        if key(old) != key(record):
            raise BadInput(f"{path}: this run was trained on other patches ({old.get('n_patches')} then, "
                           f"{record.get('n_patches')} now: the archive or its split changed); "
                           "resume on the same data or start a new output_dir")
        return old_text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return text


# --------------------------------------------------------------------------- data set
ViewTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _identity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x


class ArchiveDataset(Dataset):
    """Torch data set over the (patch, season) items of the done patches of a Zarr archive.

    Parameters
    ----------
    store: archive path or fsspec URL (``file://…``, ``s3://…``); ``storage_options`` for fsspec.
    modality: image variable of view 1 / the image (``s2_l1c``, ``s2_l2a``, ``s1_grd``).
    view_mode: ``same_season`` | ``seasonal`` | ``cross_modal`` | ``single`` (module docstring).
    transforms: ``t(x, g)`` applied after normalisation, or a pair ``(t_view1, t_view2)`` (e.g. the
        two MoCo v3 presets). ``None``: no augmentation.
    transforms2: transforms of view 2 in ``cross_modal`` mode (default: those of view 2 above).
    normalizer: a :class:`Normalizer` (subset by band name when it has names), ``None`` for the
        published statistics (set A) of the selected bands, ``False`` for raw float32 values.
    modality2, bands2, normalizer2: the same for the second modality of ``cross_modal``.
    bands: subset of the modality's band names (order kept as given); default all.
    indices: patch indices to use; intersected with the done patches.
    splits: names of the archive's splits to use (e.g. ``["train"]``), intersected with the done
        patches (and ``indices``); ``"all"``: every done patch, recorded as such; ``None``: the
        split is not read. :class:`BadInput` when splits are named and the archive has none.
    seed: base seed of the per-item generators.
    """

    VIEW_MODES = ("same_season", "seasonal", "cross_modal", "single")

    def __init__(self, store: str, modality: str = "s2_l1c", view_mode: str = "same_season",
                 transforms: ViewTransform | tuple[ViewTransform, ViewTransform] | None = None,
                 transforms2: ViewTransform | None = None, normalizer: Normalizer | None | bool = None,
                 storage_options: dict | None = None, indices: Sequence[int] | np.ndarray | None = None,
                 seed: int = 0, modality2: str = "s1_grd", bands: Sequence[str] | None = None,
                 bands2: Sequence[str] | None = None, normalizer2: Normalizer | None | bool = None,
                 splits: Sequence[str] | str | None = None):
        if view_mode not in self.VIEW_MODES:
            raise ValueError(f"view_mode must be one of {self.VIEW_MODES}, got {view_mode!r}")
        self.store, self.storage_options = str(store), storage_options
        self.modality, self.view_mode, self.seed, self.epoch = modality, view_mode, int(seed), 0
        self.modality2 = modality2 if view_mode == "cross_modal" else None

        group = open_group(self.store, "r", storage_options)
        self.n_seasons = int(group.attrs["layout"]["n_seasons"])
        self.band_names, self._band_idx = self._select_bands(group, modality, bands)
        self.normalizer = self._pick_normalizer(normalizer, modality, self.band_names)
        if self.modality2 is not None:
            self.band_names2, self._band_idx2 = self._select_bands(group, self.modality2, bands2)
            self.normalizer2 = self._pick_normalizer(normalizer2, self.modality2, self.band_names2)
        else:
            self.band_names2, self._band_idx2, self.normalizer2 = None, None, None
        if view_mode == "seasonal" and self.n_seasons < 2:
            raise ValueError("seasonal views need an archive with at least two seasons")

        status = group["status"][:]
        done = np.flatnonzero(status == STATUS_DONE)
        if indices is not None:
            done = np.intersect1d(done, np.asarray(indices, dtype=np.int64))
        self.splits: list[str] | str | None = None
        self.split_record: dict | None = None
        if splits is not None:
            self.splits = _check_split_names(splits)
            in_splits, self.split_record = select_split_patches(self.store, self.splits, storage_options)
            if in_splits is not None:
                done = np.intersect1d(done, in_splits)
        self.patches = done.astype(np.int64)
        S = self.n_seasons
        self.items = np.stack([np.repeat(self.patches, S), np.tile(np.arange(S), len(self.patches))], axis=1)

        if isinstance(transforms, (tuple, list)):
            if len(transforms) != 2:
                raise ValueError("transforms must be one callable or a pair (view1, view2)")
            self.transforms1, self.transforms2 = (_identity if t is None else t for t in transforms)
        else:
            self.transforms1 = self.transforms2 = _identity if transforms is None else transforms
        if view_mode == "cross_modal" and transforms2 is not None:
            self.transforms2 = transforms2

        self._arrays: dict[str, Any] | None = None  # opened lazily, once per process
        self._pid: int | None = None
        self._label_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def training_data(self) -> dict[str, Any]:
        """What this data set trains on, as a pretraining run records it (``training_data.json``):
        the archive, its manifest hash, the splits (``"all"`` when not restricted by split), the
        archive's split record (or ``None``), and the ``patch_id`` of each patch, in index order."""
        group = open_group(self.store, "r", self.storage_options)
        ids = np.asarray(group["patch_id"][:])
        return {"archive": self.store, "archive_manifest_hash": group.attrs.get("manifest_hash"),
                "splits": ALL_SPLITS if self.splits is None else self.splits,
                "split_record": self.split_record, "n_patches": len(self.patches),
                "patch_ids": [str(ids[p]) for p in self.patches]}

    # -- construction helpers
    @staticmethod
    def _select_bands(group, modality: str, bands: Sequence[str] | None) -> tuple[list[str], np.ndarray | None]:
        if modality not in group:
            raise KeyError(f"the archive has no {modality} variable")
        archive_bands = list(group.attrs["band_names"][modality])
        if bands is None:
            return archive_bands, None
        missing = [b for b in bands if b not in archive_bands]
        if missing:
            raise KeyError(f"{modality}: band(s) {missing} not in the archive ({archive_bands})")
        idx = np.array([archive_bands.index(b) for b in bands])
        return list(bands), (None if list(bands) == archive_bands else idx)

    @staticmethod
    def _pick_normalizer(normalizer, modality: str, bands: list[str]) -> Normalizer | None:
        if normalizer is False:
            return None
        if normalizer is None or normalizer is True:
            return Normalizer.published(modality, bands)
        if normalizer.bands is not None and list(normalizer.bands) != bands:
            return normalizer.subset(bands)
        if len(normalizer) != len(bands):
            raise ValueError(f"normaliser has {len(normalizer)} channels, {modality} selection {len(bands)}")
        return normalizer

    # -- process-local zarr handles
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"], state["_label_cache"] = None, None, {}  # never pickle open handles
        return state

    def _open(self) -> dict[str, Any]:
        if self._arrays is None or self._pid != os.getpid():
            self._label_cache = {}
            group = open_group(self.store, "r", self.storage_options)
            names = [self.modality, "label_fraction", "multi_hot"]
            if self.modality2 is not None:
                names.append(self.modality2)
            self._arrays = {n: group[n] for n in names}
            self._pid = os.getpid()
        return self._arrays

    def _labels(self, arrays, p: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Label vectors of (p, s). The small label arrays are read one whole chunk (a shard's patches)
        at a time and kept for the life of the process (9 float32 + 9 uint8 per patch-season)."""
        lf, mh = arrays["label_fraction"], arrays["multi_hot"]
        step = int(lf.chunks[0])
        start = p - p % step
        block = self._label_cache.get(start)
        if block is None:
            block = (np.asarray(lf[start:start + step], np.float32), np.asarray(mh[start:start + step], np.float32))
            self._label_cache[start] = block
        return block[0][p - start, s], block[1][p - start, s]

    # -- torch API
    def set_epoch(self, epoch: int) -> None:
        """Epoch used for the per-item generators of indices given without an epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, arrays, modality: str, band_idx, normalizer, p: int, s: int) -> torch.Tensor:
        raw = arrays[modality][p, s]  # one chunk: (C_all, H, W)
        if band_idx is not None:
            raw = raw[band_idx]
        x = torch.from_numpy(np.array(raw, dtype=np.float32))  # a fresh float32 copy, scaled in place
        if normalizer is None:
            return x
        return normalizer.apply_(x, check_nan=raw.dtype.kind == "f")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), self.epoch)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        p, s = (int(v) for v in self.items[index])
        arrays = self._open()
        g = item_generator(self.seed, epoch, index)
        out: dict[str, Any] = {}
        x1 = self._read(arrays, self.modality, self._band_idx, self.normalizer, p, s)
        if self.view_mode == "single":
            out["image"] = self.transforms1(x1, g)
        else:
            if self.view_mode == "seasonal":
                # another season of the same location, uniformly among the S − 1 others
                s2 = int(torch.randint(0, self.n_seasons - 1, (), generator=g))
                s2 += s2 >= s
                x2 = self._read(arrays, self.modality, self._band_idx, self.normalizer, p, s2)
            elif self.view_mode == "cross_modal":
                x2 = self._read(arrays, self.modality2, self._band_idx2, self.normalizer2, p, s)
            else:
                x2 = x1
            out["view1"] = self.transforms1(x1, g)
            out["view2"] = self.transforms2(x2, g)
        fraction, multi_hot = self._labels(arrays, p, s)
        out["label_fraction"], out["multi_hot"] = torch.from_numpy(fraction.copy()), torch.from_numpy(multi_hot.copy())
        out["location"], out["season"], out["index"] = p, s, index
        out["bands"] = tuple(self.band_names)
        if self.view_mode == "seasonal":
            out["season2"] = s2
        elif self.view_mode == "cross_modal":
            out["bands2"] = tuple(self.band_names2)
        return out

    def __repr__(self) -> str:
        return (f"ArchiveDataset({self.store!r}, modality={self.modality!r}, view_mode={self.view_mode!r}, "
                f"items={len(self)}, patches={len(self.patches)}, bands={len(self.band_names)})")


# --------------------------------------------------------------------------- sampler and loader
class EpochSampler(Sampler):
    """Seeded sampler that yields ``(index, epoch)`` so workers always know the epoch.

    Order: a permutation seeded by ``seed + epoch`` (``shuffle``), or ``0..n-1``; with
    ``distributed`` the same through :class:`~torch.utils.data.DistributedSampler` (each rank its
    share). ``set_epoch(epoch, skip=k)`` starts the epoch after its first ``k`` indices (to resume).
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 distributed: bool = False, num_replicas: int | None = None, rank: int | None = None):
        self.n, self.shuffle, self.seed = len(dataset), bool(shuffle), int(seed)
        self.epoch, self.skip = 0, 0
        self.inner = (DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                         seed=seed, drop_last=drop_last) if distributed else None)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)
        if self.inner is not None:
            self.inner.set_epoch(self.epoch)

    def _order(self) -> list[int]:
        if self.inner is not None:
            return list(self.inner)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self._order()[self.skip:]:
            yield (i, epoch)

    def __len__(self) -> int:
        n = len(self.inner) if self.inner is not None else self.n
        return max(0, n - self.skip)


class EpochDataLoader(DataLoader):
    """A DataLoader with ``set_epoch(epoch, skip_batches=0)`` for its sampler and data set."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            if isinstance(self.sampler, EpochSampler):
                self.sampler.set_epoch(epoch, skip=skip_batches * int(self.batch_size))
            else:
                self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


NAME_KEYS = ("bands", "bands2")


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of item dicts, except the band-name keys (:data:`NAME_KEYS`): a batch holds
    them once, as a list of names (the items of one data set share them)."""
    names = {k: list(items[0][k]) for k in NAME_KEYS if k in items[0]}
    batch = default_collate([{k: v for k, v in item.items() if k not in names} for item in items])
    batch.update(names)
    return batch


def _keep_freed_memory_in_worker(worker_id: int) -> None:
    keep_freed_memory(trim_mib=256)  # a worker's working set (chunks, one batch) is far below this


def build_dataloader(dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True,
                     seed: int = 0, drop_last: bool = True, distributed: bool = False,
                     num_replicas: int | None = None, rank: int | None = None, pin_memory: bool = False,
                     persistent_workers: bool = False, prefetch_factor: int | None = None,
                     collate_fn: Callable | None = None,
                     multiprocessing_context: str | None = "forkserver",
                     keep_freed_memory: bool = False) -> EpochDataLoader:
    """DataLoader with a seeded :class:`EpochSampler` (DistributedSampler inside when ``distributed``).

    Call ``loader.set_epoch(epoch)`` before each epoch (also sets the data set's epoch). Batches are
    identical for any ``num_workers`` with the same seed and epoch. Workers start from a fork server
    by default: forking the training process itself (threads of Prefect, Dask, zarr's event loop)
    made workers die at exit now and then; pair it with ``persistent_workers`` to start them once.
    ``keep_freed_memory``: workers keep freed memory for their next reads (:mod:`train.cpu_memory`).
    """
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last, distributed=distributed,
                           num_replicas=num_replicas, rank=rank)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        kwargs["multiprocessing_context"] = multiprocessing_context
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if keep_freed_memory:
            kwargs["worker_init_fn"] = _keep_freed_memory_in_worker
    return EpochDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                           drop_last=drop_last, pin_memory=pin_memory, collate_fn=collate_fn or collate_items,
                           generator=torch.Generator().manual_seed(int(seed)), **kwargs)
