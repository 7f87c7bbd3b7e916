"""Curation steps without Prefect: retries of transient errors, failed patches, resumable shards."""

from __future__ import annotations

import numpy as np
import zarr
from archive_helpers import curate_all

from pipeline import curate as steps
from pipeline.manifest import Manifest
from pipeline.sources import TransientSourceError
from pipeline.store import STATUS_DONE, STATUS_FAILED, STATUS_TODO


def manifest(tmp_path, name: str, **synthetic) -> Manifest:
    return Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 5, **synthetic}},
        "sampling": {"n_locations": 6, "top_n_cities": 20, "seed": 3},
        "patch": {"size_px": 24},
        "store": {"path": str(tmp_path / f"{name}.zarr"), "patches_per_shard": 3},
        "compute": {"retries": 6, "retry_delay_s": 0.0},
    })


def test_transient_errors_are_retried_to_identical_data(tmp_path):
    clean = curate_all(manifest(tmp_path, "clean"))
    flaky = curate_all(manifest(tmp_path, "flaky", fail_rate=0.3))
    assert (flaky["status"][:] == STATUS_DONE).all()
    for name in ("s2_l1c", "s1_grd", "dw_label", "multi_hot", "image_id"):
        np.testing.assert_array_equal(clean[name][:], flaky[name][:], err_msg=name)


def test_persistent_transient_error_is_recorded_as_a_retryable_failure(tmp_path):
    """Issue 10.4: a patch whose in-task retries run out is recorded as failed with its reason (the
    shard goes on and is written), so that --retry-failed can redo it.
    """
    m = manifest(tmp_path, "down", fail_rate=1.0)
    locations, layout = steps.prepare(m)
    summary = steps.process_shard(m, layout, 0, locations[layout.shard_slice(0)])
    g = zarr.open_group(m.store.path, mode="r")
    sl = layout.shard_slice(0)
    assert (g["status"][sl] == STATUS_FAILED).all()
    assert summary.failed == summary.retryable == sl.stop - sl.start
    assert all(r.startswith("TransientSourceError: season 0: still failing after") for r in g["status_reason"][sl])
    assert steps.pending_shards(m, layout, retry_failed=True)[0] == 0


def test_failed_shard_task_marks_only_its_unfinished_patches(tmp_path):
    m = manifest(tmp_path, "crash")
    locations, layout = steps.prepare(m)
    sl = layout.shard_slice(0)
    g = zarr.open_group(m.store.path, mode="r+")
    g["status"][sl.start] = STATUS_DONE  # written before the task died
    n = steps.mark_shard_failed(m, layout, 0, OSError("worker lost"))
    assert n == sl.stop - sl.start - 1
    assert g["status"][sl.start] == STATUS_DONE and (g["status"][sl.start + 1:sl.stop] == STATUS_FAILED).all()
    assert g["status_reason"][sl.start + 1] == "ShardFailed: OSError: worker lost"
    assert steps.is_retryable(g["status_reason"][sl.start + 1]) and not steps.is_retryable("NoImageFound: x")
    assert (g["status"][layout.shard_slice(1)] == STATUS_TODO).all()


def test_permanent_errors_become_failed_patches_with_reason(tmp_path):
    m = manifest(tmp_path, "cloudy", cloud_probability=1.0)
    m = m.model_copy(update={"cloud_filter": m.cloud_filter.model_copy(update={"max_cloudy_pixel_percentage": 0.0})})
    g = curate_all(m)
    assert (g["status"][:] == STATUS_FAILED).all()
    assert all(r.startswith("NoImageFound: season 0") for r in g["status_reason"][:])
    assert steps.pending_shards(m, steps.prepare(m)[1]) == []
    assert steps.pending_shards(m, steps.prepare(m)[1], retry_failed=True) == [0, 1]


def test_shard_is_skipped_once_done_and_prepare_is_idempotent(tmp_path):
    m = manifest(tmp_path, "resume")
    locations, layout = steps.prepare(m)
    first = steps.process_shard(m, layout, 1, locations[layout.shard_slice(1)])
    assert (first.done, first.skipped) == (3, 0)
    assert steps.pending_shards(m, layout) == [0]
    again = steps.process_shard(m, layout, 1, locations[layout.shard_slice(1)])
    assert (again.done, again.skipped) == (0, 3)
    locations2, _ = steps.prepare(m)
    assert locations2 == locations


def test_shard_retry_condition_only_for_errors_that_may_pass():
    from prefect.states import Completed, Failed

    from flows.curate import _retry_shard

    assert _retry_shard(None, None, Failed(data=TransientSourceError("429")))
    assert _retry_shard(None, None, Failed(data=OSError("store write failed")))
    assert not _retry_shard(None, None, Failed(data=ValueError("bug")))
    assert not _retry_shard(None, None, Completed(data=1))


class _AlwaysTransient:
    """A source that fails transiently on every fetch and counts the calls."""

    name, synthetic = "flaky-service", True

    def __init__(self, retries_requests: bool):
        self.retries_requests = retries_requests
        self.calls = 0

    def fetch(self, location, window, grid, modalities):
        self.calls += 1
        raise TransientSourceError("HTTP 503 after the source's own attempts")

    def describe(self):
        return {"name": self.name, "synthetic": True}


def test_one_request_retry_layer_a_source_that_retries_itself_is_not_retried_again(tmp_path):
    """compute.retries is the request layer only for sources without one of their own (Earth Engine has one)."""
    m = manifest(tmp_path, "layers")
    location = steps.prepare(m)[0][0]
    own = _AlwaysTransient(retries_requests=True)
    result = steps.process_patch(own, m, location)
    assert own.calls == 1, "a source that retries its own requests was retried again by the curation"
    assert result.status == STATUS_FAILED
    assert result.reason == "TransientSourceError: season 0: HTTP 503 after the source's own attempts"
    plain = _AlwaysTransient(retries_requests=False)
    result = steps.process_patch(plain, m, location)
    assert plain.calls == 1 + m.compute.retries
    assert result.reason.startswith(f"TransientSourceError: season 0: still failing after {m.compute.retries} retries")


def test_the_earth_engine_source_declares_its_own_request_retries():
    from pipeline.sources.earthengine import EarthEngineSource

    assert EarthEngineSource.retries_requests is True
    assert steps.request_retries(EarthEngineSource, 6) == 0


class ConcurrentSource:
    """The synthetic source offering concurrent fetches (like Earth Engine): answers come back in a random
    order, and ``fail`` (location index → seasons) raise a permanent error, later seasons answering first.
    """

    def __init__(self, inner, fail: dict[int, set[int]] | None = None):
        import threading

        self.inner, self.fail = inner, fail or {}
        self.name, self.synthetic = inner.name, inner.synthetic
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def prepare_concurrent_fetch(self) -> int:
        return 4

    def describe(self):
        return self.inner.describe()

    def fetch(self, location, window, grid, modalities):
        import random
        import threading
        import time

        from pipeline.sources import NoImageFound

        with self._lock:
            self.threads.add(threading.current_thread().name)
        seasons = self.fail.get(location.index, set())
        time.sleep(0.02 if window.season in seasons and window.season == min(seasons) else random.random() * 0.005)
        if window.season in seasons:
            raise NoImageFound(f"nothing in season {window.season}")
        return self.inner.fetch(location, window, grid, modalities)


def test_concurrent_fetches_write_the_same_archive_and_report_the_first_failing_season(tmp_path):
    from pipeline.sources import build_source

    seq_m, par_m = manifest(tmp_path, "seq"), manifest(tmp_path, "par")
    fail = {1: {1, 3}}  # season 3 fails first in time, season 1 first in order
    seq = curate_all(seq_m)  # the synthetic source alone: one fetch after another
    wrapped = ConcurrentSource(build_source(par_m), fail)
    par = curate_all(par_m, wrapped)
    assert len(wrapped.threads) > 1 and all(t.startswith("shard") for t in wrapped.threads)
    status = par["status"][:]
    assert status[1] == STATUS_FAILED and str(par["status_reason"][1]) == "NoImageFound: season 1: nothing in season 1"
    done = status == STATUS_DONE
    assert done.sum() == len(status) - 1 and (seq["status"][:] == STATUS_DONE).all()
    for name in ("s2_l1c", "s2_l2a", "s1_grd", "dw_label", "multi_hot", "image_id", "acquired"):
        np.testing.assert_array_equal(par[name][:][done], seq[name][:][done], err_msg=name)
