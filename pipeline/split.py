"""The archive's train/val/test split: by location, spatially blocked, seeded.

SSL4EO-S12 samples each location as a Gaussian offset (σ = 50 km) around one of the most populous
cities (Wang et al., "SSL4EO-S12", IEEE Geoscience and Remote Sensing Magazine 2023, arXiv:2211.07044),
so neighbouring locations share a city and overlap in content. A random split by location would put
near-duplicates on both sides; the split therefore assigns whole **units** of locations, never a unit
to two splits:

* ``by="city"`` (default): the unit is the archive's ``city`` coordinate (the sampling city).
  Locations without a city (e.g. planned from a local SSL4EO-S12 copy, which records none) fall back
  to their grid cell (below), so they are still blocked in space.
* ``by="grid"``: the unit is a cell of a coarse, approximately equal-area grid of ``grid_km``
  (default 100 km), see :func:`grid_cells`.

Assignment rule (our choice, deterministic for a given archive and arguments):

1. The distinct unit keys are sorted, then shuffled with ``numpy.random.default_rng(seed)``.
2. Walking the shuffled units in order, **test** takes units first, then **val**, then **train** takes
   every unit left: the units are cut into three consecutive runs.
3. Test (then val) takes the next unit while that brings its number of *locations* closer to its
   target ``share × n_patches`` (``count + size / 2 < target``), and always takes a first unit when its
   target is above zero (so a small archive still gets a non-empty test and val split). The last unit
   is always left for train.

Realised shares therefore differ from the targets by whole units only: test and val each end within
half a unit of their target (within one unit when they took a first unit to avoid being empty), and
train gets the rest. With many units, each much smaller than the targets, every split is within one
(largest) unit's size of its target. The realised counts are recorded: read them rather than assume
the targets.

Storage (see the shared contract): the variable ``split`` [patch], uint8 codes
``{"train": 0, "val": 1, "test": 2}`` (fill 255 = unassigned), chunked and compressed like ``status``,
and the root attribute ``split``, the record::

    {"version": 1, "by": "city" | "grid", "val": 0.1, "test": 0.2, "seed": 0,
     "grid_km": 100.0,          # by grid, or by city when some location had no city
     "hash": "<sha256 hex of the uint8 codes' bytes>",
     "counts": {"train": n, "val": n, "test": n},    # locations
     "units": {"train": n, "val": n, "test": n},     # units (cities / cells)
     "created": "<iso time>"}

The split is derived metadata, not user data: :func:`write_split` replaces it. It removes the old
record first, writes the array, and writes the new record last, so an interrupted rewrite leaves an
archive without a split (which :func:`ensure_split` completes) and never a record describing other
codes. Readers check that the record's hash matches the array (:func:`read_split` raises
:class:`~pipeline.store_target.ArchiveError` when it does not, e.g. a tampered array).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from typing import Any

import numpy as np

from pipeline.archive import Archive
from pipeline.errors import BadInput
from pipeline.store_target import ArchiveError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
SPLIT_FILL = 255
"""Fill value of the ``split`` array: a patch no split was written for (never in a valid split)."""
SPLIT_VERSION = 1
SPLIT_BY = ("city", "grid")
DEFAULTS: dict[str, Any] = {"by": "city", "val": 0.1, "test": 0.2, "seed": 0, "grid_km": 100.0}
EARTH_RADIUS_KM = 6371.0
KM_PER_DEGREE = 2.0 * math.pi * EARTH_RADIUS_KM / 360.0  # ≈ 111.19 km per degree of latitude


def check_split_arguments(by: str, val: float, test: float, seed: int, grid_km: float) -> None:
    """Raise :class:`BadInput` (one line naming the argument) unless the arguments define a split."""
    if by not in SPLIT_BY:
        raise BadInput(f"split by={by!r}: choose one of {', '.join(SPLIT_BY)}")
    for name, share in (("val", val), ("test", test)):
        if not isinstance(share, (int, float)) or not math.isfinite(share) or share < 0 or share >= 1:
            raise BadInput(f"split {name}={share}: a share of locations must be >= 0 and < 1")
    if val + test >= 1:
        raise BadInput(f"split val={val}, test={test}: val + test must be < 1 so that train keeps locations")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput(f"split seed={seed}: must be an integer >= 0")
    if not isinstance(grid_km, (int, float)) or not math.isfinite(grid_km) or grid_km <= 0:
        raise BadInput(f"split grid_km={grid_km}: the grid cell size must be a number of km > 0")


def grid_cells(lon: np.ndarray, lat: np.ndarray, grid_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each (lon, lat) in an approximately equal-area grid of ``grid_km`` cells.

    Construction (our choice, on a sphere of radius 6371 km):

    * Rows are latitude bands of equal height ``grid_km`` km: ``row = floor(lat · K / grid_km)`` with
      ``K = 2π · 6371 / 360`` km per degree.
    * Each row is cut into ``n = max(1, floor(360 · K · cos(φc) / grid_km))`` columns of equal
      longitude width, ``φc`` being the row's centre latitude: about ``grid_km`` km wide there, and a
      whole number of columns around the globe (no sliver cell at the antimeridian).
      ``col = floor((lon + 180) mod 360 / 360 · n)``.

    Cells are thus about ``grid_km × grid_km`` km (slightly wider, at most by a factor
    ``n / (n - 1)``, and their width varies with latitude inside a row by ``cos``); rows near the
    poles have few columns.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    row = np.floor(lat * KM_PER_DEGREE / grid_km).astype(np.int64)
    centre = np.clip((row + 0.5) * grid_km / KM_PER_DEGREE, -90.0, 90.0)
    circumference = 360.0 * KM_PER_DEGREE * np.cos(np.radians(centre))
    n_cols = np.maximum(1, np.floor(circumference / grid_km)).astype(np.int64)
    col = np.floor(np.mod(lon + 180.0, 360.0) / 360.0 * n_cols).astype(np.int64)
    col = np.minimum(col, n_cols - 1)  # lon + 180 == 360 - ε rounding
    return row, col


def location_units(lon: np.ndarray, lat: np.ndarray, city: np.ndarray, by: str,
                   grid_km: float) -> tuple[np.ndarray, int]:
    """The unit key of each location (``city:<name>`` or ``cell:<row>:<col>``) and how many fell back.

    ``by="city"`` uses the city name; a location whose city is empty (or blank) falls back to its grid
    cell. ``by="grid"`` uses the grid cell for every location. Returns the keys and the number of
    locations that used the grid under ``by="city"`` (0 for ``by="grid"``).
    """
    row, col = grid_cells(lon, lat, grid_km)
    cells = np.array([f"cell:{r}:{c}" for r, c in zip(row.tolist(), col.tolist())], dtype=object)
    if by == "grid":
        return cells, 0
    names = [str(c).strip() for c in np.asarray(city, dtype=object).tolist()]
    keys = np.array([f"city:{n}" if n else cell for n, cell in zip(names, cells)], dtype=object)
    return keys, sum(1 for n in names if not n)


def assign_units(keys: np.ndarray, val: float, test: float, seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """Split codes (uint8 per location) for unit ``keys`` by the rule in the module docstring.

    Returns the codes and how many units each split got.
    """
    keys = np.asarray(keys, dtype=object)
    n = len(keys)
    codes = np.full(n, SPLIT_CODES["train"], dtype=np.uint8)
    n_units = {name: 0 for name in SPLIT_CODES}
    if n == 0:
        return codes, n_units
    unique, inverse = np.unique(keys.astype(str), return_inverse=True)  # sorted: independent of row order
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    unit_code = np.full(len(unique), SPLIT_CODES["train"], dtype=np.uint8)
    pos = 0
    for name, share in (("test", test), ("val", val)):
        target = share * n
        count = 0
        while pos < len(order) - 1 and target > 0:  # the last unit always stays for train
            size = int(sizes[order[pos]])
            if count > 0 and not count + size / 2 < target:
                break
            unit_code[order[pos]] = SPLIT_CODES[name]
            count += size
            n_units[name] += 1
            pos += 1
    n_units["train"] = len(order) - pos
    codes[:] = unit_code[inverse]
    return codes, n_units


def codes_hash(codes: np.ndarray) -> str:
    """sha256 hex of the codes as uint8 bytes (the record's ``hash``)."""
    return hashlib.sha256(np.ascontiguousarray(codes, dtype=np.uint8).tobytes()).hexdigest()


def split_counts(codes: np.ndarray) -> dict[str, int]:
    return {name: int((codes == code).sum()) for name, code in SPLIT_CODES.items()}


def compute_split(lon: np.ndarray, lat: np.ndarray, city: np.ndarray, by: str = "city", val: float = 0.1,
                  test: float = 0.2, seed: int = 0, grid_km: float = 100.0) -> tuple[np.ndarray, dict]:
    """Codes and record (without ``created``) for locations given as arrays; nothing is written."""
    check_split_arguments(by, val, test, seed, grid_km)
    keys, fell_back = location_units(lon, lat, city, by, grid_km)
    codes, n_units = assign_units(keys, val, test, int(seed))
    record: dict[str, Any] = {"version": SPLIT_VERSION, "by": by, "val": float(val), "test": float(test),
                              "seed": int(seed)}
    if by == "grid" or fell_back:
        record["grid_km"] = float(grid_km)
    record.update(hash=codes_hash(codes), counts=split_counts(codes), units=n_units)
    return codes, record


def write_split(path: str, by: str = "city", val: float = 0.1, test: float = 0.2, seed: int = 0,
                grid_km: float = 100.0, storage_options: dict | None = None) -> dict:
    """Compute the split of the archive at ``path`` and store it, replacing any earlier split.

    Order of writes: the old record is removed, the ``split`` array written (chunked like ``status``),
    the new record written last. Returns the record.
    """
    check_split_arguments(by, val, test, seed, grid_km)
    group = Archive.of(path, storage_options).open("r+")
    codes, record = compute_split(group["lon"][:], group["lat"][:], group["city"][:], by=by, val=val,
                                  test=test, seed=seed, grid_km=grid_km)
    record["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if "split" in group.attrs:
        del group.attrs["split"]
    status = group["status"]
    existing = group["split"] if "split" in group else None
    if existing is None or existing.shape != status.shape or existing.dtype != np.uint8 \
            or existing.chunks != status.chunks:
        array = group.create_array(
            name="split", shape=status.shape, dtype="uint8", chunks=status.chunks,
            compressors=status.compressors, fill_value=SPLIT_FILL, dimension_names=("patch",),
            attributes={"flag_values": list(SPLIT_NAMES), "flag_meanings": " ".join(SPLIT_NAMES.values()),
                        "description": "train/val/test split by location; see the root attribute 'split'"},
            overwrite=True)
    else:
        array = existing
    array[:] = codes
    Archive.of(path, storage_options).open("r+").attrs["split"] = record  # fresh root metadata, record last
    return record


def read_split(path: str, storage_options: dict | None = None) -> tuple[np.ndarray, dict] | None:
    """Per-patch codes and the record, or None when the archive has no split (no record).

    Raises :class:`ArchiveError` when the record does not describe the array (hash, length, counts,
    codes): a split changed outside :func:`write_split` or a record without its array.
    """
    group = Archive.of(path, storage_options).open("r")
    record = group.attrs.get("split")
    if record is None:
        return None
    fix = f"rewrite it with: softcon split {path}"
    if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
        raise ArchiveError(f"{path}: the split record is malformed; {fix}")
    if "split" not in group:
        raise ArchiveError(f"{path}: the split record has no split array; {fix}")
    array = group["split"]
    n_patches = group["status"].shape[0]
    if array.shape != (n_patches,) or array.dtype != np.uint8:
        raise ArchiveError(f"{path}: the split array has shape {array.shape} and dtype {array.dtype}, "
                           f"expected ({n_patches},) uint8; {fix}")
    codes = array[:]
    if codes_hash(codes) != record["hash"]:
        raise ArchiveError(f"{path}: the split array does not match its record (hash differs): it was changed "
                           f"outside softcon split; {fix}")
    if not np.isin(codes, list(SPLIT_NAMES)).all():
        raise ArchiveError(f"{path}: the split array holds codes other than {sorted(SPLIT_NAMES)}; {fix}")
    if record.get("counts") != split_counts(codes):
        raise ArchiveError(f"{path}: the split record's counts do not match its array; {fix}")
    return codes, dict(record)


def split_indices(path: str, name: str, storage_options: dict | None = None) -> np.ndarray:
    """Sorted int64 patch indices in split ``name`` (train | val | test).

    The same as :meth:`pipeline.archive.Archive.split_patches`.

    Raises :class:`ArchiveError` naming the archive when it has no split.
    """
    from pipeline.archive import (
        Archive,  # pipeline.archive reads splits through this module
    )

    return Archive(path, storage_options).split_patches(name)


def ensure_split(path: str, storage_options: dict | None = None) -> dict:
    """The archive's split record; writes the default split (:data:`DEFAULTS`) when it has none.

    An existing split is never changed (only read and checked, which costs one byte per patch); a
    damaged one raises :class:`ArchiveError` rather than being silently replaced.
    """
    found = read_split(path, storage_options)
    if found is not None:
        return found[1]
    return write_split(path, storage_options=storage_options, **DEFAULTS)
