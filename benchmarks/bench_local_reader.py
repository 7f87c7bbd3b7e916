"""Local SSL4EO-S12 reader throughput, as a ratio to bare rasterio reads of the same files.

A generated copy of the shared sample (``../shared/data/ssl4eo_s12``, location 0000200, two seasons)
is replicated into ``--locations`` location folders with new 7-digit ids in a temporary directory.
One *patch* is one (location, season) with every band of the three modalities (S2 L1C 13, L2A 12,
S1 2) resampled to 264 × 264. The seasons are the manifest's default reference dates and windows
(:func:`pipeline.seasons.season_windows`, no shift); only the seasons that every modality of the
sample fills under the reader's assignment (:func:`~pipeline.sources.ssl4eo_local.assign_seasons`)
are timed (06-21 and 09-22 for the shared sample).

* reader: :meth:`pipeline.sources.ssl4eo_local.SSL4EOLocalSource.fetch` for each location and season
  (it lists the acquisition folders, reads ``metadata.json``, checks dtypes, records CRS and bounds).
* baseline: for the same patches, with the band file paths listed beforehand (outside the timing):
  open each band file with rasterio, ``read(1, out_shape=(264, 264), resampling=bilinear)``, and
  stack each modality's bands in canonical order.

Each side runs once to warm up (page cache, GDAL), then ``--repeats`` times (3); the best wall time
of each is kept. The two alternate (and swap order every repeat) so that drift from other load on
the machine affects both alike; the ratio of patches per CPU-second (``time.process_time``), less
sensitive to a busy machine, is printed beside it. Goal: ratio ≥ 0.9.

Usage: ``.venv/bin/python benchmarks/bench_local_reader.py [--locations 50] [--repeats 3] [--root DIR]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from pipeline.bands import MODALITY_BANDS, MODALITY_DTYPES
from pipeline.grid import PatchGrid
from pipeline.manifest import SeasonsConfig
from pipeline.seasons import SeasonWindow, season_windows
from pipeline.sources.ssl4eo_local import (
    MODALITY_DIRS,
    SSL4EOLocalSource,
    assign_seasons,
    list_acquisitions,
    list_local_locations,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 264
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "ssl4eo_s12"


def replicate(src_root: Path, dst_root: Path, n: int) -> list[str]:
    """Copy the sample's (single) location into ``n`` location folders with new 7-digit ids."""
    found = sorted(p.name for p in (src_root / MODALITY_DIRS["s2_l1c"]).iterdir() if p.is_dir())
    if not found:
        raise SystemExit(f"no location under {src_root / MODALITY_DIRS['s2_l1c']}")
    source_id = found[0]
    ids = [f"{1_000_000 + i:07d}" for i in range(n)]
    for sub in MODALITY_DIRS.values():
        for new_id in ids:
            shutil.copytree(src_root / sub / source_id, dst_root / sub / new_id)
    return ids


def default_windows() -> list[SeasonWindow]:
    """The manifest's default seasons: its reference dates and window length, no per-location shift."""
    seasons = SeasonsConfig()
    return season_windows(seasons.reference_dates, seasons.window_days, 0)


def assigned_folders(root: Path, loc_id: str, reference_dates: list[dt.date]) -> dict[str, dict[int, Path]]:
    """Modality → (season index → acquisition folder), as the reader assigns them."""
    return {name: assign_seasons(list_acquisitions(root / sub / loc_id), reference_dates)
            for name, sub in MODALITY_DIRS.items()}


def filled_seasons(root: Path, loc_id: str, reference_dates: list[dt.date]) -> list[int]:
    """The season indices that every modality of the location fills."""
    per_modality = assigned_folders(root, loc_id, reference_dates).values()
    return sorted(set.intersection(*(set(folders) for folders in per_modality)))


def plan_baseline(root: Path, location_ids: list[str], reference_dates: list[dt.date],
                  seasons: list[int]) -> list[list[tuple[str, list[Path]]]]:
    """Per patch: (modality, band file paths in canonical order), listed before timing."""
    patches = []
    for loc_id in location_ids:
        folders = assigned_folders(root, loc_id, reference_dates)
        for s in seasons:
            patches.append([(name, [folders[name][s] / f"{band}.tif" for band in MODALITY_BANDS[name]])
                            for name in MODALITY_BANDS])
    return patches


def run_baseline(patches) -> int:
    for patch in patches:
        out = {}
        for name, paths in patch:
            bands = []
            for path in paths:
                with rasterio.open(path) as src:
                    bands.append(src.read(1, out_shape=(SIZE, SIZE), resampling=Resampling.bilinear))
            out[name] = np.stack(bands).astype(MODALITY_DTYPES[name], copy=False)
    return len(patches)


def run_reader(source: SSL4EOLocalSource, jobs) -> int:
    for loc, grid, win in jobs:
        source.fetch(loc, win, grid, MODALITY_BANDS)
    return len(jobs)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints patches per second of both and their ratio (goal >= 0.9).")
    parser.add_argument("--locations", type=int, default=50, help="location folders to generate (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, best kept (default 3)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"SSL4EO-S12 sample to replicate (default {DEFAULT_ROOT})")
    args = parser.parse_args(argv)
    if args.locations < 1 or args.repeats < 1:
        parser.error("--locations and --repeats must be >= 1")
    if not args.root.is_dir():
        parser.error(f"sample not found: {args.root}")

    with tempfile.TemporaryDirectory(prefix="bench_local_reader_") as tmp:
        root = Path(tmp) / "ssl4eo_s12"
        ids = replicate(args.root, root, args.locations)
        locations = list_local_locations(root)
        assert [loc.id for loc in locations] == ids
        windows = default_windows()
        refs = [w.reference for w in windows]
        seasons = filled_seasons(root, ids[0], refs)  # every location is a copy of the same one
        if not seasons:
            raise SystemExit(f"no season is filled by every modality of {args.root} for {refs}")
        n_seasons = len(seasons)
        jobs = [(loc, PatchGrid.for_location(loc, SIZE, 10.0), windows[s]) for loc in locations for s in seasons]
        patches = plan_baseline(root, ids, refs, seasons)
        source = SSL4EOLocalSource(root, resampling="bilinear", reference_dates=refs)

        # same pixels, so the comparison is between equal work
        first = source.fetch(jobs[0][0], jobs[0][2], jobs[0][1], MODALITY_BANDS)
        for name, paths in patches[0]:
            bare = []
            for path in paths:
                with rasterio.open(path) as src:
                    bare.append(src.read(1, out_shape=(SIZE, SIZE), resampling=Resampling.bilinear))
            np.testing.assert_array_equal(first.images[name].data, np.stack(bare).astype(MODALITY_DTYPES[name]))

        sides = {"baseline": lambda: run_baseline(patches), "reader": lambda: run_reader(source, jobs)}
        for fn in sides.values():  # warm-up
            fn()
        wall = {k: [] for k in sides}
        cpu = {k: [] for k in sides}
        for r in range(args.repeats):
            for key in (("baseline", "reader") if r % 2 == 0 else ("reader", "baseline")):
                w0, c0 = time.perf_counter(), time.process_time()
                sides[key]()
                wall[key].append(time.perf_counter() - w0)
                cpu[key].append(time.process_time() - c0)
        n = len(jobs)
        rate = {k: n / min(v) for k, v in wall.items()}
        cpu_rate = {k: n / min(v) for k, v in cpu.items()}
        ratio = rate["reader"] / rate["baseline"]
        cpu_ratio = cpu_rate["reader"] / cpu_rate["baseline"]
        season_names = ", ".join(f"{s} ({refs[s].strftime('%m-%d')})" for s in seasons)
        print(f"local SSL4EO-S12 reader, {args.locations} locations x {n_seasons} seasons [{season_names}] = "
              f"{n} patches ({sum(len(p) for _, p in patches[0])} band files each, {SIZE} px), "
              f"best of {args.repeats}")
        for key, label in (("baseline", "bare rasterio"), ("reader", "reader fetch")):
            print(f"  {label + ':':15}{rate[key]:8.1f} patches/s  ({min(wall[key]):.3f} s wall, "
                  f"{cpu_rate[key]:.1f} patches per CPU-second)")
        print(f"  ratio reader / bare rasterio = {ratio:.3f}  (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}); "
              f"per CPU-second {cpu_ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
