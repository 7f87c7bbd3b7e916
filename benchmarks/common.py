"""What the benchmarks share: the synthetic data they run on and how they time two sides fairly.

Every benchmark prints a ratio against a baseline measured in the same process; the helpers here
keep the inputs and the timing rule the same across them. Run a benchmark as a script
(``.venv/bin/python benchmarks/bench_x.py``): this folder is then on ``sys.path`` and the project's
packages are installed, so nothing edits the import path.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.curate import pending_shards, prepare, process_shard
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import Manifest


def synthetic_manifest(store: str | Path, n_locations: int, size: int, *, seed: int = 0, sampling_seed: int = 1,
                       cloud_probability: float = 0.1, patches_per_shard: int = 16, top_n_cities: int = 200,
                       modalities: Sequence[str] = ("s2_l1c", "s2_l2a", "s1_grd"), **extra: Any) -> Manifest:
    """The manifest of a benchmark archive from the synthetic world (``extra``: more top-level sections)."""
    return Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": seed, "cloud_probability": cloud_probability}},
        "sampling": {"n_locations": n_locations, "top_n_cities": top_n_cities, "seed": sampling_seed},
        "patch": {"size_px": size},
        "store": {"path": str(store), "patches_per_shard": patches_per_shard},
        "modalities": {m: {"enabled": m in modalities} for m in ("s2_l1c", "s2_l2a", "s1_grd")},
        **extra,
    })


def synthetic_archive(store: str | Path, n_locations: int, size: int, **options: Any) -> Manifest:
    """Curate a synthetic archive at ``store`` in this process (no Prefect); returns its manifest."""
    manifest = synthetic_manifest(store, n_locations, size, **options)
    locations, layout = prepare(manifest)
    for shard in pending_shards(manifest, layout):
        process_shard(manifest, layout, shard, locations[layout.shard_slice(shard)])
    return manifest


def fake_locations(n: int, seed: int = 0) -> list[Location]:
    """``n`` random locations (lon/lat anywhere between 60° S and 60° N) for archives filled by hand."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-170, 170, n), rng.uniform(-60, 60, n)
    return [Location(i, float(lon[i]), float(lat[i]), utm_epsg(lon[i], lat[i]), 5e5, 4e6) for i in range(n)]


def timed_pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeats: int, warmup: int = 5) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, run alternately so that both see the same machine load."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times_a), statistics.median(times_b)


def best_of_interleaved(fns: Sequence[Callable[[], Any]], repeats: int, sync: bool = True) -> list[float]:
    """Best time of each function, run in turn after a warm-up of each (dirty pages flushed first when ``sync``)."""
    if sync:
        os.sync()  # data was just written: let writeback finish before timing reads
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]
