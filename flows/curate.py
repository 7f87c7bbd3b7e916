"""Prefect 3 flow: manifest → locations → S1/S2 + Dynamic World patches → label vectors → Zarr archive.

Tasks work at shard granularity (``store.patches_per_shard`` locations, never one task per patch)
and run on Dask through ``prefect-dask``: a local cluster by default, or an existing scheduler when
``compute.dask_address`` (or ``--dask-address``) names one.

At most ``compute.source_concurrency`` shard tasks talk to the source at once, cluster-wide: each
holds a lease of a ``distributed.Semaphore`` named ``softcon-source-<kind>`` on the Dask scheduler.
The semaphore lives in the scheduler, so it dies with a local cluster, and a lease held by a worker
that dies is released after ``distributed.scheduler.locks.lease-timeout`` (30 s by default): slots
never outlive their holder. (A Prefect global concurrency limit would not do here: without a Prefect
server its leases live in a temporary server's memory while the slot counts stay in the database,
so every killed run leaked its slots for good.) A task waiting for a slot logs it and for how long.

Retries, one layer per concern: a request that fails transiently is retried inside the task with
exponential backoff and jitter (``compute.retries``, each retry logged); a patch still failing then
is recorded as failed with its reason (``TransientSourceError: …``). A shard task that fails as a
whole (a worker lost, a store write error) is retried by Prefect, and if it still fails its patches
are recorded as failed (``ShardFailed: …``) while the other shards go on. Both kinds are *retryable*:
the run ends with them listed, the CLI exits 1, and ``--retry-failed`` redoes them. Permanent
source errors (no cloud-free image, corrupt data) become failed patches with their reason.

One run per archive: the flow holds ``<store>.lock`` (an OS file lock, released even on ``kill -9``)
while it curates; a second run on the same store is refused.

The flow runs without a Prefect server (ephemeral mode). Its final task launches pretraining when
the manifest asks for it and the training stage is installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from pipeline import curate as steps
from pipeline.archive import Archive
from pipeline.errors import BadInput
from pipeline.jsonable import to_jsonable
from pipeline.locations import Location
from pipeline.manifest import Manifest, load_manifest
from pipeline.progress import progress_bar
from pipeline.sources import TransientSourceError
from pipeline.store import (
    ArchiveLayout,
    count_failure_kinds,
    format_failure_kinds,
)
from pipeline.store_target import archive_lock, is_local, local_path

SLOT_WAIT_LOG_S = 30.0
"""A shard task waiting for a source slot says so every this many seconds."""


def _source_limit_name(manifest: Manifest) -> str:
    return f"softcon-source-{manifest.source.kind}"


def _retry_shard(task, task_run, state) -> bool:
    """Prefect retry condition: retry a shard task after errors that may pass (I/O, transient source)."""
    try:
        state.result()
    except (TransientSourceError, OSError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001 - anything else is a bug or a permanent problem
        return False
    return False


@task(name="prepare-archive", cache_policy=NO_CACHE)
def prepare_archive(manifest: Manifest) -> tuple[list[Location], ArchiveLayout]:
    locations, layout = steps.prepare(manifest)
    get_run_logger().info("archive %s: %d locations in %d shards of %d",
                          manifest.store.path, layout.n_patches, layout.n_shards, layout.patches_per_shard)
    return locations, layout


def _task_logger():
    """The Prefect run logger inside a task, this module's logger outside one."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@contextlib.contextmanager
def source_slot(manifest: Manifest, shard: int):
    """Hold one lease of the cluster-wide ``distributed.Semaphore`` of the manifest's source.

    This bounds the *shard tasks* fetching at once (``compute.source_concurrency``). A source that
    overlaps its requests bounds the *requests* on its own, cluster-wide too: Earth Engine takes a lease
    of the ``softcon-earthengine-<project>-inflight-<n>`` and ``-rate-…`` semaphores per request (see
    :mod:`pipeline.sources.ratelimit`), bound inside the shard task by
    :func:`pipeline.curate.process_shard`; a few shards in parallel then keep the quota busy.
    """
    from distributed import Semaphore, get_worker

    try:
        get_worker()
    except ValueError:  # not on a Dask worker (a plain call in tests): nothing to share a limit with
        yield
        return
    limit = manifest.compute.source_concurrency
    semaphore = Semaphore(max_leases=limit, name=_source_limit_name(manifest))
    logger = _task_logger()
    t0 = time.monotonic()
    while not semaphore.acquire(timeout=SLOT_WAIT_LOG_S):
        logger.warning("shard %d: waiting for a slot of %s (all %d in use) for %.0f s",
                       shard, _source_limit_name(manifest), limit, time.monotonic() - t0)
    waited = time.monotonic() - t0
    if waited >= SLOT_WAIT_LOG_S:
        logger.info("shard %d: got a source slot after %.0f s", shard, waited)
    try:
        yield
    finally:
        semaphore.release()


@task(name="curate-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(2.0),
      retry_jitter_factor=0.5, retry_condition_fn=_retry_shard)
def curate_shard(manifest: Manifest, layout: ArchiveLayout, shard: int, locations: list[Location],
                 retry_failed: bool = False) -> dict:
    with source_slot(manifest, shard):
        summary = steps.process_shard(manifest, layout, shard, locations, retry_failed=retry_failed)
    return asdict(summary)


@task(name="archive-report", cache_policy=NO_CACHE)
def archive_report(manifest: Manifest) -> dict:
    """Summary JSON and plots (locations map, class frequencies, co-occurrence) beside the archive."""
    from pipeline.labels import plot_class_frequencies, plot_cooccurrence
    from pipeline.sampling import (
        load_cities,
        locations_to_geodataframe,
        plot_locations,
        read_locations,
    )

    path = manifest.store.path
    summary, stats = Archive.from_manifest(manifest).describe()
    if not is_local(path):
        return summary  # plots are written for local archives only
    out = local_path(path.rstrip("/") + ".report")
    if not _report_folder_is_ours(out):
        get_run_logger().warning("%s exists and was not written by softcon: the report is not written there", out)
        return summary
    out.mkdir(parents=True, exist_ok=True)
    plot_class_frequencies(stats, out / "class_frequencies.png")
    plot_cooccurrence(stats, out / "cooccurrence.png")
    gdf = locations_to_geodataframe(read_locations(steps.locations_path(path)), manifest.patch)
    cities = load_cities(manifest.sampling.city_table, manifest.sampling.top_n_cities)
    plot_locations(gdf, out / "locations.png", title=f"{manifest.name}: {len(gdf)} locations", cities=cities)
    (out / "summary.json").write_text(json.dumps({"archive": summary, "labels": to_jsonable(stats)}, indent=2))
    summary["report"] = str(out)
    return summary


def _report_folder_is_ours(out: Path) -> bool:
    """A report may be written to a folder that does not exist, is empty, or holds an earlier report."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    try:
        earlier = json.loads((out / "summary.json").read_text())
        return "manifest_hash" in earlier["archive"]
    except (OSError, ValueError, KeyError, TypeError):
        return not any(out.iterdir())


def launch_pretraining(manifest: Manifest) -> str:
    """Final step: the pretraining flow on the new archive when the manifest asks for it (it resumes)."""
    if not manifest.pretrain.enabled:
        get_run_logger().info("pretraining not requested (pretrain.enabled is false)")
        return "not requested"
    if not manifest.pretrain.config:
        raise ValueError("pretrain.enabled is true but pretrain.config names no training config")
    from flows.pretrain import pretrain

    result = pretrain(manifest.pretrain.config, archive=manifest.store.path)
    return f"done: {result['output_dir']}"


def launch_evaluation(manifest: Manifest, run_dir: str) -> str:
    """After pretraining, when asked: evaluate the new backbone against the baselines."""
    if not manifest.evaluate.enabled:
        return "not requested"
    from flows.evaluate import evaluate_checkpoints

    tasks = {name: dict(kwargs) for name, kwargs in manifest.evaluate.tasks.items()}
    if "archive" in tasks:
        tasks["archive"].setdefault("store", manifest.store.path)
    evaluate_checkpoints([run_dir], tasks, protocols=list(manifest.evaluate.protocols),
                         out_dir=manifest.evaluate.out_dir)
    return f"done: {manifest.evaluate.out_dir}"


@flow(name="curate-ssl4eo-s12-ml")
def curate(manifest: Manifest, retry_failed: bool = False, show_progress: bool = False) -> dict:
    """Curate the archive a loaded manifest describes; resumes where a previous run stopped.

    Holds the archive's lock for the whole run (a second run on the same store is refused). A shard
    whose task fails is recorded as failed and the other shards go on; patches that failed for a
    retryable reason are listed in ``this_run["retryable"]`` and pretraining is then not started.
    """
    with archive_lock(manifest.store.path):
        summary = _curate_locked(manifest, retry_failed, show_progress)
    if summary["this_run"]["retryable"]:
        summary["pretraining"] = ("not started: curation is incomplete; rerun with --retry-failed "
                                  "(it pretrains once every patch is curated)")
        return summary
    summary["pretraining"] = launch_pretraining(manifest)
    if summary["pretraining"].startswith("done: "):
        summary["evaluation"] = launch_evaluation(manifest, summary["pretraining"].removeprefix("done: "))
    return summary


def _curate_locked(manifest: Manifest, retry_failed: bool, show_progress: bool) -> dict:
    logger = get_run_logger()
    locations, layout = prepare_archive(manifest)
    shards = steps.pending_shards(manifest, layout, retry_failed=retry_failed)
    logger.info("%d of %d shards to do", len(shards), layout.n_shards)
    task_with_retries = curate_shard.with_options(retries=manifest.compute.retries)
    futures = {}
    for shard in shards:
        sl = layout.shard_slice(shard)
        futures[task_with_retries.submit(manifest, layout, shard, locations[sl], retry_failed)] = shard
    del locations  # only the shards' slices travel to the workers
    totals = {"done": 0, "failed": 0, "skipped": 0, "retryable": 0}
    reasons: dict[str, int] = {}
    t0 = time.perf_counter()
    with progress_bar(show_progress) as progress:
        bar = progress.add_task("curating shards", total=len(shards), status="")
        for i, fut in enumerate(as_completed(list(futures)), 1):
            shard = futures[fut]
            try:
                res = fut.result()
            except BadInput:
                raise  # a configuration problem (e.g. credentials refused) fails every shard alike: stop
            except Exception as err:  # noqa: BLE001 - recorded in the archive; the other shards go on
                n = steps.mark_shard_failed(manifest, layout, shard, err)
                logger.error("shard %d failed after its retries (%s: %s); %d patches recorded as failed",
                             shard, type(err).__name__, err, n)
                res = {"shard": shard, "done": 0, "failed": n, "skipped": 0, "retryable": n, "seconds": 0.0,
                       "reasons": [f"ShardFailed: {type(err).__name__}"] * n}
            for k in totals:
                totals[k] += res[k]
            count_failure_kinds(res["reasons"], reasons)
            progress.update(bar, advance=1, status=f"patches done {totals['done']}, failed {totals['failed']}")
            logger.info("shard %d: %d done, %d failed (%.1fs); %d/%d shards, totals %s",
                        res["shard"], res["done"], res["failed"], res["seconds"], i, len(shards), totals)
    if totals["done"]:
        steps.record_curated_labels(manifest)
    summary = archive_report(manifest)
    summary["this_run"] = {**totals, "shards": len(shards), "failure_reasons": reasons,
                           "seconds": round(time.perf_counter() - t0, 1)}
    logger.info("archive %s: %s", manifest.store.path, summary["status"])
    if totals["retryable"]:
        logger.error("%d patches failed for reasons a rerun may fix (%s); rerun with --retry-failed",
                     totals["retryable"], format_failure_kinds(reasons))
    return summary


def task_runner_for(manifest: Manifest, dask_address: str | None = None):
    """DaskTaskRunner on an existing scheduler, or on a local cluster sized by ``compute``."""
    from prefect_dask import DaskTaskRunner

    address = dask_address or manifest.compute.dask_address
    if address:
        return DaskTaskRunner(address=address)
    c = manifest.compute
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": c.n_workers, "threads_per_worker": c.threads_per_worker,
                        "memory_limit": c.memory_limit, "processes": c.processes, "dashboard_address": None},
    )


@flow(name="curate-manifest")
def curate_manifest(manifest: Manifest | str = "data_manifest.yaml", dask_address: str | None = None,
                    retry_failed: bool = False, show_progress: bool = False) -> dict:
    """Entry point of the CLI and of deployments: pick the Dask task runner, run :func:`curate` as a subflow.

    ``manifest`` is a loaded :class:`~pipeline.manifest.Manifest` (the CLI loads and checks it once) or,
    for deployments, the path of a manifest file, loaded here once; the flows below only see the model.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    flow_with_runner = curate.with_options(task_runner=task_runner_for(manifest, dask_address))
    with _api_url_for_workers():
        return flow_with_runner(manifest, retry_failed=retry_failed, show_progress=show_progress)


@contextlib.contextmanager
def _api_url_for_workers():
    """Point Dask worker processes at this flow's Prefect API.

    Without a configured ``PREFECT_API_URL`` Prefect runs a temporary server inside this process;
    worker processes started by a local cluster would otherwise each start (and orphan) their own.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
