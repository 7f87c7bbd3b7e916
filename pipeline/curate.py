"""Curation steps without any orchestration: plan the archive, then process one shard of patches.

The Prefect flow in :mod:`flows.curate` composes exactly these functions; everything here is plain
Python, so it can be unit-tested and reused under any scheduler.

* :func:`prepare` samples (or re-reads) the locations, writes them as GeoParquet beside the archive
  and creates the archive template (or checks that an existing archive matches the manifest).
* :func:`pending_shards` lists the shards that still have work.
* :func:`process_shard` fetches every pending patch of one shard from the source (with retries and
  exponential backoff on transient errors), derives the label vectors and writes the shard. A source
  that can overlap its requests (Earth Engine) gets its (location, season) fetches run on a thread
  pool (:func:`fetch_parallelism`); patches are assembled in order, so the archive is the same bytes
  as with one fetch after another.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import tempfile
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.archive import Archive
from pipeline.bands import DW_CLASSES, LABEL_NODATA, MODALITY_DTYPES
from pipeline.grid import PatchGrid
from pipeline.labels import (
    label_vectors,
    read_label_provenance,
    update_label_provenance,
)
from pipeline.locations import Location
from pipeline.manifest import Manifest
from pipeline.reference import patch_products, season_products
from pipeline.sampling import (
    locations_to_geodataframe,
    read_locations,
    sample_locations,
    write_locations,
)
from pipeline.seasons import location_shift_days, season_windows
from pipeline.sources import Source, SourceError, TransientSourceError, build_source
from pipeline.split import ensure_split
from pipeline.store import (
    MODALITY_ORDER,
    NO_DATE,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_TODO,
    ArchiveLayout,
    PatchResult,
    create_archive,
    date_to_days,
    storage_options_for,
    write_patches,
)
from pipeline.store_target import check_beside, check_target, is_local, local_path

log = logging.getLogger(__name__)


def locations_path(store_path: str) -> str:
    """GeoParquet of the sampled locations, beside the archive (``<store>.locations.parquet``)."""
    return store_path.rstrip("/") + ".locations.parquet"


def prepare(manifest: Manifest, source: Source | None = None) -> tuple[list[Location], ArchiveLayout]:
    """Locations and archive template for a manifest; idempotent (a rerun re-reads the same locations).

    Nothing is written before the store path and the locations file beside it have been checked:
    curation refuses (:class:`~pipeline.store_target.StoreRefused`) to write over anything it did not
    create from this manifest.
    """
    path, so = manifest.store.path, manifest.store.storage_options or None
    state = check_target(path, storage_options_for(path, so), manifest.content_hash())
    check_beside(path)
    source = source or build_source(manifest)
    loc_path = locations_path(path)
    loc_file = local_path(loc_path) if is_local(loc_path) else None
    resuming = state == "archive"
    if resuming and loc_file is not None and loc_file.exists():
        locations = read_locations(loc_file)
    else:  # a new archive always re-plans, so a stale locations file is never reused
        locations = plan_locations(manifest)
    layout = create_archive(manifest, locations, source.describe())
    if loc_file is not None and (not resuming or not loc_file.exists()):
        gdf = locations_to_geodataframe(locations, manifest.patch)
        loc_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=loc_file.parent, prefix=loc_file.name, suffix=".tmp")
        os.close(fd)  # a fresh name: no file of the user's is ever written over
        write_locations(gdf, tmp)
        Path(tmp).replace(loc_file)  # atomic: never a half-written locations file
    ensure_split(path, so)  # every archive gets the default train/val/test split; an existing one is kept
    return locations, layout


def plan_locations(manifest: Manifest) -> list[Location]:
    """Where to curate: sampled around cities, or the locations present in a local SSL4EO-S12 copy.

    For a local copy ``sampling.n_locations`` caps how many of its locations (in id order) are used.
    """
    if manifest.source.kind == "local":
        from pipeline.sources.ssl4eo_local import list_local_locations

        found = list_local_locations(manifest.source.local.root)
        if not found:
            raise ValueError(f"source.local.root: no SSL4EO-S12 locations found under {manifest.source.local.root}")
        return found[: manifest.sampling.n_locations]
    return sample_locations(manifest.sampling, manifest.patch)


def pending_shards(manifest: Manifest, layout: ArchiveLayout, retry_failed: bool = False) -> list[int]:
    """Shards that contain at least one patch still to do (and failed ones when ``retry_failed``)."""
    status = Archive.from_manifest(manifest).open("r")["status"][:]
    todo = status == STATUS_TODO
    if retry_failed:
        todo |= status == STATUS_FAILED
    shards = np.unique(np.flatnonzero(todo) // layout.patches_per_shard)
    return [int(s) for s in shards]


def request_retries(source: Source, retries: int) -> int:
    """How often :func:`fetch_with_retries` retries a fetch of ``source``: ``retries``, or 0 for a source
    that retries its own requests (``retries_requests = True``, see :mod:`pipeline.sources.base`).
    """
    return 0 if getattr(source, "retries_requests", False) else retries


def fetch_with_retries(source: Source, location, window, grid, modalities, retries: int, base_delay: float):
    """Call ``source.fetch``; on :class:`TransientSourceError` retry with exponential backoff and jitter.

    The request-retry layer of sources that have none of their own (:func:`request_retries`). Each retry
    is logged (warning, so it reaches the flow run's log); after ``retries`` retries the last error is
    raised.
    """
    retries = request_retries(source, retries)
    attempt = 0
    while True:
        try:
            return source.fetch(location, window, grid, modalities)
        except TransientSourceError as err:
            if attempt >= retries:
                raise
            delay = base_delay * (2 ** attempt) * (0.5 + random.random())
            log.warning("transient error for patch %s season %d (%s); retry %d of %d in %.1fs",
                        location.id, window.season, err, attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1


RETRYABLE_REASONS = ("TransientSourceError", "ShardFailed")
"""Failure reasons (their prefix) that a rerun with ``--retry-failed`` may fix: the source kept
failing transiently, or the whole shard task failed. Other reasons are facts about the data."""


def is_retryable(reason: str) -> bool:
    return str(reason).startswith(RETRYABLE_REASONS)


def label_thresholds(manifest: Manifest, provenance: dict | None) -> tuple[float, float]:
    """(presence_threshold, min_valid_fraction) for patches curated into an archive now.

    The manifest's, unless the archive's label vectors were recomputed (``softcon labels``) with other
    thresholds: new patches then follow the archive's current record, so one archive never holds
    vectors made with two thresholds.
    """
    if provenance and provenance.get("source") == "relabel" and provenance.get("presence_threshold") is not None:
        return float(provenance["presence_threshold"]), float(provenance["min_valid_fraction"])
    return manifest.labels.presence_threshold, manifest.labels.min_valid_fraction


def process_patch(source: Source, manifest: Manifest, location: Location,
                  thresholds: tuple[float, float] | None = None, pool: Executor | None = None) -> PatchResult:
    """All seasons of one location. Permanent source errors give a failed result with the reason.

    ``thresholds`` (presence, min valid fraction) default to the manifest's (see :func:`label_thresholds`).
    With ``pool`` the seasons are fetched at once on it (see :func:`start_patch`).
    """
    return finish_patch(start_patch(source, manifest, location, pool), thresholds or label_thresholds(manifest, None))


@dataclass
class PendingPatch:
    """A patch whose seasons are being fetched: one future (or, without a pool, one call) per season."""

    source: Source
    manifest: Manifest
    location: Location
    windows: list
    seasons: list  # Future or zero-argument callable per window, in season order


def start_patch(source: Source, manifest: Manifest, location: Location, pool: Executor | None = None) -> PendingPatch:
    """Start fetching the seasons of one location: submitted to ``pool`` at once, or (no pool) left to
    :func:`finish_patch` to fetch one after another, stopping at the first failing season as before.
    """
    modalities = manifest.modalities.selected()
    grid = PatchGrid.for_location(location, manifest.patch.size_px, manifest.patch.resolution_m,
                                  manifest.patch.lattice_m)
    seasons = manifest.seasons
    shift = location_shift_days(manifest.sampling.seed, location.index, seasons.max_shift_days)
    windows = season_windows(seasons.reference_dates, seasons.window_days, shift)
    retries, delay = manifest.compute.retries, manifest.compute.retry_delay_s
    calls = [functools.partial(fetch_with_retries, source, location, w, grid, modalities, retries, delay)
             for w in windows]
    return PendingPatch(source, manifest, location, windows,
                        calls if pool is None else [pool.submit(c) for c in calls])


def finish_patch(pending: PendingPatch, thresholds: tuple[float, float]) -> PatchResult:
    """Assemble a patch from its seasons in season order; the first failing season (in that order, whatever
    order the answers came in) gives the failed result, exactly as fetching them one after another. What a
    season's sample carries beyond pixels and labels (its ``dw_probability``) becomes a label product.
    """
    source, manifest, location = pending.source, pending.manifest, pending.location
    modalities = manifest.modalities.selected()
    S, M, H = len(pending.windows), len(MODALITY_ORDER), manifest.patch.size_px
    images = {name: np.empty((S, len(bands), H, H), MODALITY_DTYPES[name]) for name, bands in modalities.items()}
    dw = np.empty((S, H, H), np.uint8)
    acquired = np.full((S, M), NO_DATE, np.int32)
    image_id = np.full((S, M), "", dtype=object)
    cloud = np.full((S, M), np.nan, np.float32)
    method = np.full((S,), "", dtype=object)
    samples = []
    for w, season in zip(pending.windows, pending.seasons):
        try:
            sample = season.result() if isinstance(season, Future) else season()
        except TransientSourceError as err:
            retried = request_retries(source, manifest.compute.retries)
            after = f"still failing after {retried} retries: " if retried else ""  # else the source says how often
            return _failed(pending, PatchResult(location.index, STATUS_FAILED,
                                                f"TransientSourceError: season {w.season}: {after}{err}"))
        except SourceError as err:
            return _failed(pending, PatchResult(location.index, STATUS_FAILED,
                                                f"{type(err).__name__}: season {w.season}: {err}"))
        samples.append(sample)
        for name, bands in modalities.items():
            img = sample.images.get(name)
            expected = ((len(bands), H, H), np.dtype(MODALITY_DTYPES[name]), bands)
            got = None if img is None else (img.data.shape, img.data.dtype, tuple(img.bands))
            if got != expected:
                return _failed(pending, PatchResult(location.index, STATUS_FAILED,
                                                    f"CorruptData: season {w.season}: {name} expected {expected}, "
                                                    f"got {got}"))
            images[name][w.season] = img.data
            m = MODALITY_ORDER.index(name)
            acquired[w.season, m] = date_to_days(img.acquired)
            image_id[w.season, m] = img.image_id
            cloud[w.season, m] = img.cloud_pct
        if sample.label is None:
            dw[w.season] = LABEL_NODATA
        else:
            dw[w.season] = sample.label.data
            method[w.season] = sample.label.method
    presence, min_valid = thresholds
    fractions, multi_hot = label_vectors(
        dw, n_classes=len(DW_CLASSES), presence_threshold=presence, min_valid_fraction=min_valid)
    products = patch_products(source, manifest, location, pending.windows, presence, season_products(samples))
    return PatchResult(location.index, STATUS_DONE, images=images, dw_label=dw, label_fraction=fractions,
                       multi_hot=multi_hot, acquired=acquired, image_id=image_id, cloud_pct=cloud,
                       label_method=method, products=products)


def _failed(pending: PendingPatch, result: PatchResult) -> PatchResult:
    """A failed patch: its seasons still queued are cancelled (running ones end on their own)."""
    for season in pending.seasons:
        if isinstance(season, Future):
            season.cancel()
    return result


def fetch_parallelism(source: Source) -> int:
    """How many (location, season) fetches of one shard run at once: 1 for sources that do not say.

    A source that can overlap its requests offers ``prepare_concurrent_fetch()`` (Earth Engine: it binds
    the cluster-wide request limits in the calling shard task's thread and returns how many).
    """
    prepare = getattr(source, "prepare_concurrent_fetch", None)
    return max(1, int(prepare())) if prepare is not None else 1


@dataclass
class ShardSummary:
    shard: int
    done: int
    failed: int
    skipped: int
    seconds: float
    reasons: list[str]
    retryable: int = 0
    """Failed patches whose reason a rerun with ``--retry-failed`` may fix (see :func:`is_retryable`)."""


def process_shard(manifest: Manifest, layout: ArchiveLayout, shard: int, locations: list[Location],
                  retry_failed: bool = False, source: Source | None = None) -> ShardSummary:
    """Fetch, label and write the pending patches of one shard. ``locations`` are that shard's locations."""
    t0 = time.perf_counter()
    source = source or build_source(manifest)
    group = Archive.from_manifest(manifest).open("r+")
    sl = layout.shard_slice(shard)
    status = group["status"][sl]
    wanted = (status == STATUS_TODO) | ((status == STATUS_FAILED) if retry_failed else False)
    by_index = {loc.index: loc for loc in locations}
    thresholds = label_thresholds(manifest, read_label_provenance(group))
    todo = [by_index[sl.start + int(offset)] for offset in np.flatnonzero(wanted)]
    parallel = fetch_parallelism(source)
    if parallel <= 1:
        results = [process_patch(source, manifest, loc, thresholds) for loc in todo]
    else:
        results = _fetch_concurrently(source, manifest, todo, thresholds, parallel, shard)
    # Contiguous runs keep the writes aligned (the whole shard when nothing in it was done before).
    run: list[PatchResult] = []
    for r in results:
        if run and r.index != run[-1].index + 1:
            write_patches(group, layout, run)
            run = []
        run.append(r)
    write_patches(group, layout, run)
    return ShardSummary(
        shard=shard,
        done=sum(r.status == STATUS_DONE for r in results),
        failed=sum(r.status == STATUS_FAILED for r in results),
        skipped=int((~wanted).sum()),
        seconds=time.perf_counter() - t0,
        reasons=[r.reason for r in results if r.status == STATUS_FAILED],
        retryable=sum(r.status == STATUS_FAILED and is_retryable(r.reason) for r in results),
    )


def _fetch_concurrently(source: Source, manifest: Manifest, todo: list[Location], thresholds: tuple[float, float],
                        parallel: int, shard: int) -> list[PatchResult]:
    """Every (location, season) of ``todo`` on a pool of ``parallel`` threads, assembled in patch order.

    Memory: the finished patches of the shard are held until the shard is written, as in the sequential
    path (``store.patches_per_shard`` sizes it), plus at most ``parallel`` seasons being fetched.
    """
    with ThreadPoolExecutor(parallel, thread_name_prefix=f"shard{shard}-fetch") as pool:
        pending = [start_patch(source, manifest, loc, pool) for loc in todo]
        results = []
        try:
            for i in range(len(pending)):
                patch, pending[i] = pending[i], None  # its season samples are freed once assembled
                results.append(finish_patch(patch, thresholds))
            return results
        except BaseException:  # a programming error stops the shard: drop what is still queued
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def mark_shard_failed(manifest: Manifest, layout: ArchiveLayout, shard: int, error: BaseException) -> int:
    """Record the patches of a shard whose task failed as failed (reason ``ShardFailed: …``).

    Only patches still to do are marked: what the task had written stays. Returns how many were marked.
    Called once the shard's task has ended, so no other writer touches the shard's status chunk.
    """
    group = Archive.from_manifest(manifest).open("r+")
    sl = layout.shard_slice(shard)
    status = group["status"][sl]
    todo = status == STATUS_TODO
    if not todo.any():
        return 0
    reasons = group["status_reason"][sl]
    message = f"ShardFailed: {type(error).__name__}: {error}".replace("\n", " ")[:500]
    reasons[todo] = message
    status[todo] = STATUS_FAILED
    group["status_reason"][sl] = reasons
    group["status"][sl] = status
    return int(todo.sum())


def record_curated_labels(manifest: Manifest) -> None:
    """After a run curated new patches: when the archive's labels had been imported (published labels),
    record that the new patches carry labels computed from their maps (one writer: the flow, after its shards).
    """
    group = Archive.from_manifest(manifest).open("r+")
    record = read_label_provenance(group)
    if record and record.get("source") == "published":
        presence, min_valid = label_thresholds(manifest, record)
        update_label_provenance(group, "curation", presence, min_valid,
                                note="patches curated after the import of published labels carry labels computed "
                                     "from their Dynamic World maps; import the published labels again to replace them")
