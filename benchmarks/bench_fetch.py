"""Earth Engine fetching at the quota limit: a real curation against a simulated Earth Engine.

Each run is a real ``curate_manifest`` (Prefect flow, Dask ``LocalCluster`` of worker processes,
Zarr archive) whose Earth Engine source talks to the simulator of :mod:`ee_simulator`: a server
process on 127.0.0.1 shared by every worker that enforces 40 concurrent requests and 100 requests
per second (429 beyond), draws log-normal latencies (0.3 s metadata, 1.5 s pixels, medians) and
injects transient 503s. Latencies and the quota window are multiplied by ``--time-scale``; every
number printed is converted back to real time.

Runs: the concurrent fetcher with 1 and with 2 worker processes (the cluster-wide limit must hold
across processes: the server's largest number in flight and in any window are printed beside the
quota); the baseline, today's sequential fetching per shard (``concurrent_fetches: 1``, four shards
at once), on fewer patches; and, unless ``--no-overload``, a client configured above the server's
quota, which gets 429s and must adapt (AIMD).

Printed per run: mean requests in flight, requests/s, patches/hour, 429s received, the ratio of
achieved throughput to the quota-bound limit ``min(rate quota, concurrency quota / mean latency)``
(Little's law; goal ≥ 0.9), lost or duplicated requests and patches, peak RSS of the process tree,
and the projected wall time for 251,079 locations.

Usage: ``.venv/bin/python benchmarks/bench_fetch.py [--patches 192] [--baseline-patches 32] [--time-scale 0.4]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import zarr  # noqa: E402
from distributed import WorkerPlugin  # noqa: E402
from ee_simulator import LatencyModel, Quota, reset_server, server_stats, start_server  # noqa: E402

SSL4EO_LOCATIONS = 251_079
PRODUCTS = 4  # S2 L1C, S2 L2A, S1 GRD, Dynamic World: one metadata and one pixel request each per season


class _UseSimulator(WorkerPlugin):
    """Dask worker plugin: every Earth Engine source of the worker talks to the simulator."""

    def __init__(self, url: str):
        self.url = url

    def setup(self, worker) -> None:
        from ee_simulator import use_simulator

        use_simulator(self.url)


class PeakRss:
    """Largest summed RSS of this process and all its descendants, sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _threads(workers: int) -> int:
    """Worker threads such that the cluster runs ``source_concurrency`` (4) shard tasks at once."""
    return max(1, 4 // workers)


def manifest_for(store: Path, n: int, args, workers: int, patches_per_shard: int | None = None, **earthengine):
    from pipeline.manifest import Manifest

    scale = args.time_scale
    return Manifest.model_validate({
        "name": store.stem,
        "source": {"kind": "earthengine", "earthengine": {
            "project": "bench", "max_concurrent_requests": 40, "requests_per_second": 100 / scale,
            "rate_window_s": scale, **earthengine}},
        "sampling": {"n_locations": n, "seed": 11},
        "patch": {"size_px": args.size},
        "store": {"path": str(store), "patches_per_shard": patches_per_shard or args.patches_per_shard},
        "compute": {"n_workers": workers, "threads_per_worker": _threads(workers), "source_concurrency": 4,
                    "retries": 2},
    })


def run(name: str, manifest, url: str, workers: int, args) -> dict:
    """One curation through the simulator; the server's counters and the archive, checked."""
    from distributed import Client, LocalCluster

    from flows.curate import curate_manifest

    reset_server(url)
    with LocalCluster(n_workers=workers, threads_per_worker=_threads(workers), processes=True, memory_limit="4GiB",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(_UseSimulator(url), name="ee-simulator")
        with PeakRss() as rss:
            t0 = time.perf_counter()
            summary = curate_manifest(manifest, dask_address=cluster.scheduler_address)
            wall = time.perf_counter() - t0
    return measure(name, manifest, server_stats(url), wall, rss.peak, summary, args)


def measure(name: str, manifest, s: dict, wall: float, peak: int, summary: dict, args) -> dict:
    scale, n, S = args.time_scale, manifest.sampling.n_locations, len(manifest.seasons.reference_dates)
    busy = s["last"] - s["first"]
    served = s["admitted"]
    mean_latency = s["latency_sum"] / served
    quota = Quota(per_window=100, window_s=scale)
    limit = min(quota.per_window / quota.window_s, quota.max_concurrent / mean_latency)
    g = zarr.open_group(manifest.store.path, mode="r")
    status = g["status"][:]
    ids = g["image_id"][:][:, :, 0].ravel()
    expected = n * S * PRODUCTS
    patches_hour = n / (busy / scale) * 3600
    return {
        "name": name, "patches": n, "done": int((status == 1).sum()), "failed": summary["this_run"]["failed"],
        "distinct_l1c_ids": len(set(map(str, ids))), "expected_ids": n * S,
        "info_ok": s["ok"].get("info", 0), "pixels_ok": s["ok"].get("pixels", 0), "expected_each": expected,
        "mean_in_flight": s["area"] / busy, "max_in_flight": s["max_in_flight"], "max_in_window": s["max_in_window"],
        "rps_real": served / busy * scale, "limit_rps_real": limit * scale, "ratio": served / busy / limit,
        "throttled": s["throttled"], "faults": s["faults"], "patches_hour_real": patches_hour,
        "patches_hour_end_to_end": n / (wall / scale) * 3600, "busy_real_s": busy / scale, "wall_s": wall,
        "projected_days": SSL4EO_LOCATIONS / patches_hour / 24, "peak_rss_mib": peak / 2 ** 20,
    }


def report(r: dict) -> str:
    lost = (r["expected_each"] - r["info_ok"], r["expected_each"] - r["pixels_ok"])
    ok = r["done"] == r["patches"] and r["distinct_l1c_ids"] == r["expected_ids"] and lost == (0, 0)
    return (f"{r['name']}: {r['patches']} patches, {r['done']} done, {r['failed']} failed; "
            f"requests in flight mean {r['mean_in_flight']:.1f} (max {r['max_in_flight']}, quota 40), "
            f"max started in a window {r['max_in_window']} (quota 100); {r['rps_real']:.1f} req/s vs quota-bound "
            f"{r['limit_rps_real']:.1f} -> ratio {r['ratio']:.2f} (goal >= 0.9); {r['patches_hour_real']:.0f} "
            f"patches/h ({r['patches_hour_end_to_end']:.0f} end to end); 429s {r['throttled']}, injected 503s "
            f"{r['faults']}; missing(+)/extra(-) requests info {lost[0]}, pixels {lost[1]}; patches lost or "
            f"duplicated: {'none' if ok else 'YES'}; peak RSS {r['peak_rss_mib']:.0f} MiB; 251,079 locations in "
            f"{r['projected_days']:.1f} days  [real-time equivalents; run took {r['wall_s']:.0f} s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=192, help="locations of each concurrent run")
    parser.add_argument("--baseline-patches", type=int, default=32, help="locations of the sequential baseline")
    parser.add_argument("--overload-patches", type=int, default=96, help="locations of the over-quota run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker processes per run")
    parser.add_argument("--time-scale", type=float, default=0.4, help="latencies and quota window x this")
    parser.add_argument("--info-median", type=float, default=0.3, help="metadata latency median (s, real)")
    parser.add_argument("--pixels-median", type=float, default=1.5, help="264 px pixel latency median (s, real)")
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal sigma of the latencies")
    parser.add_argument("--fault-rate", type=float, default=0.01, help="share of admitted calls answered 503")
    parser.add_argument("--size", type=int, default=32, help="patch size of the archive (px; latency is modelled)")
    parser.add_argument("--patches-per-shard", type=int, default=16)
    parser.add_argument("--no-overload", action="store_true", help="skip the over-quota (AIMD) run")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="softcon-bench-fetch-"))
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # one temporary Prefect server, shared by the workers
        os.environ["PREFECT_API_URL"] = str(client.api_url)
    latency = LatencyModel(args.info_median, args.pixels_median, args.sigma, args.time_scale)
    proc, url = start_server(Quota(window_s=args.time_scale), latency, args.fault_rate)
    print(f"simulator {url}: quota 40 concurrent, 100 req/s; latency medians {args.info_median} s metadata, "
          f"{args.pixels_median} s pixels, sigma {args.sigma}; time scale {args.time_scale}", flush=True)
    lines = []
    try:
        for w in args.workers:
            m = manifest_for(tmp / f"concurrent{w}.zarr", args.patches, args, w)
            lines.append(report(run(f"concurrent, {w} worker process(es)", m, url, w, args)))
            print(lines[-1], flush=True)
        m = manifest_for(tmp / "baseline.zarr", args.baseline_patches, args, 2,  # 4 shards, all at once
                         patches_per_shard=max(1, args.baseline_patches // 4), concurrent_fetches=1)
        base = run("baseline (sequential per shard, 4 shards at once)", m, url, 2, args)
        lines.append(report(base))
        print(lines[-1], flush=True)
        if not args.no_overload:
            m = manifest_for(tmp / "overload.zarr", args.overload_patches, args, 2, max_concurrent_requests=80)
            ee_opts = m.source.earthengine.model_copy(update={"requests_per_second": 200 / args.time_scale})
            m = m.model_copy(update={"source": m.source.model_copy(update={"earthengine": ee_opts})})
            lines.append(report(run("over-quota client (80 concurrent, 200 req/s configured), 2 workers", m, url, 2,
                                    args)))
            print(lines[-1], flush=True)
        print("\nsummary:\n  " + "\n  ".join(lines))
    finally:
        proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
