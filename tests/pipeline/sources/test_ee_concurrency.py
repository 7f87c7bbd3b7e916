"""Earth Engine requests in parallel: AIMD window, sliding-window rate, cluster-wide limits, and a
concurrent curation that writes the same archive as a sequential one, faults and all.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path

import ee  # noqa: E402
import numpy as np
import pytest
import zarr
from archive_helpers import curate_all
from ee_fakes import AnyLocationTransport

from pipeline import curate as steps
from pipeline.manifest import Manifest
from pipeline.sources.earthengine import EarthEngineSource
from pipeline.sources.earthengine.transport import call_with_retries, is_throttle
from pipeline.sources.ratelimit import (
    RATE_SLACK,
    AdaptiveGate,
    AIMDController,
    SlidingWindowRate,
    cluster_limiter,
    local_limiter,
)
from pipeline.store import STATUS_DONE

EEException = ee.ee_exception.EEException


# ------------------------------------------------------------------------------------------ AIMD
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_aimd_halves_once_per_cooldown_then_grows_back_additively():
    clock = FakeClock()
    c = AIMDController(40, cooldown_s=1.0, clock=clock)
    assert c.limit == 40
    assert c.on_throttle() and c.limit == 20
    clock.now = 0.5  # the same overload episode: its other 429s do not shrink again
    assert not c.on_throttle() and not c.on_throttle() and c.limit == 20
    clock.now = 1.5
    assert c.on_throttle() and c.limit == 10 and (c.throttles, c.decreases) == (4, 2)
    for _ in range(10):  # +1 per window of `limit` successes
        c.on_success()
    assert 10.9 < c.limit < 11.0
    for _ in range(5000):
        c.on_success()
    assert c.limit == 40  # recovered, capped at the ceiling
    for k in range(20):
        clock.now = 10.0 + 2 * k
        c.on_throttle()
    assert c.limit == 1.0  # never below the floor


def test_aimd_rejects_nonsense():
    with pytest.raises(ValueError):
        AIMDController(4, floor=5)
    with pytest.raises(ValueError):
        AIMDController(4, decrease=1.0)


def test_gate_admits_floor_of_the_window_and_wakes_waiters_when_it_grows():
    clock = FakeClock()
    gate = AdaptiveGate(AIMDController(4, clock=clock))
    gate.controller.on_throttle()  # window 2
    gate.acquire()
    gate.acquire()
    entered = threading.Event()

    def third():
        gate.acquire()
        entered.set()

    t = threading.Thread(target=third, daemon=True)
    t.start()
    assert not entered.wait(0.1)  # a third holder must wait
    gate.succeeded()
    gate.succeeded()  # 2 → 2.5 → 2.9: still 2
    assert not entered.wait(0.05)
    gate.succeeded()  # → 3.24: room for a third
    assert entered.wait(2.0)
    t.join()


# ------------------------------------------------------------------------------------------ rate
def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def test_sliding_window_rate_never_exceeds_its_leases_in_any_window():
    rate = SlidingWindowRate(threading.BoundedSemaphore(5), window_s=0.2)
    deadlines: list[float] = []

    class RecordingDeque(collections.deque):
        """The limiter's own grant times (deadline - hold), not times seen by a thread that may be descheduled."""

        def append(self, due):
            deadlines.append(due)
            super().append(due)

    rate._due = RecordingDeque()

    def worker():
        for _ in range(4):
            rate.acquire()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants = [d - rate.hold_s for d in deadlines]
    assert len(grants) == 20
    assert _max_in_window(grants, 0.2) <= 5
    assert time.monotonic() - t0 >= 3 * 0.2 * (1 + RATE_SLACK) - 0.01  # 20 grants need 4 windows
    time.sleep(0.3)
    assert rate._releaser is None  # the releaser thread ends when every lease is back


def test_throttles_shrink_the_window_and_successes_grow_it():
    limiter = local_limiter(8, 1e6)
    answers = iter([EEException("Too Many Requests (429)"), EEException("HttpError 503: Service Unavailable"),
                    "ok"])

    def fn():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    assert call_with_retries(fn, "x", limiter=limiter, max_attempts=5, delay=lambda a: 0.0,
                             sleep=lambda s: None) == "ok"
    c = limiter.gate.controller
    assert c.throttles == 1 and c.decreases == 1  # the 503 is retried but is no throttle
    assert 4.0 < c.limit < 4.5  # halved to 4, then one success
    assert is_throttle(EEException("Quota exceeded")) and not is_throttle(EEException("Internal error 500"))
    assert not is_throttle(EEException("429.5 km away"))


# ------------------------------------------------------------------------------------------ cluster-wide
def test_two_processes_worth_of_limiters_share_the_cluster_limits():
    """Two limiters (as two worker processes would have) on one scheduler's semaphores: together at most
    `max_concurrent` in flight and at most L = rate·window starts in any window.
    """
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        limiters = [cluster_limiter(client.scheduler, client.loop, "softcon-test", 3, 50.0, 0.2)
                    for _ in range(2)]
        assert limiters[0].gate is not limiters[1].gate and limiters[0].scope == "cluster"
        lock = threading.Lock()
        state = {"now": 0, "max": 0}
        starts: list[float] = []

        def work(limiter):
            for _ in range(6):
                with limiter.request():
                    with lock:
                        starts.append(time.monotonic())
                        state["now"] += 1
                        state["max"] = max(state["max"], state["now"])
                    time.sleep(0.01)
                    with lock:
                        state["now"] -= 1

        threads = [threading.Thread(target=work, args=(limiters[i % 2],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(starts) == 36
        assert 2 <= state["max"] <= 3
        assert _max_in_window(starts, 0.2) <= 10  # L = 50/s · 0.2 s
        time.sleep(0.25)  # the last rate leases go back before the cluster closes


# ------------------------------------------------------------------------------------------ same archive
class FlakyTransport(AnyLocationTransport):
    """:class:`AnyLocationTransport` that is slow (so requests overlap), answers a random share of calls
    with a 429 or a 503 before doing anything, and records how many requests were in flight.
    """

    def __init__(self, fail_rate: float = 0.0, delay_s: float = 0.002, seed: int = 0):
        super().__init__(mode={"0000002"})
        self.fail_rate, self.delay_s = fail_rate, delay_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.faults = self.calls = 0

    def _call(self, answer, *args):
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fault = self._rng.random() < self.fail_rate
            self.faults += fault
        try:
            time.sleep(self.delay_s)
            if fault:
                raise EEException(self._rng.choice(["Too Many Requests (429)", "503 Service Unavailable"]))
            return answer(*args)
        finally:
            with self._lock:
                self.in_flight -= 1

    def get_info(self, computation, tag):
        return self._call(super().get_info, computation, tag)

    def compute_pixels(self, request, tag):
        return self._call(super().compute_pixels, request, tag)


def ee_manifest(store: Path, **earthengine) -> Manifest:
    return Manifest.model_validate({
        "source": {"kind": "earthengine",
                   "earthengine": {"project": "offline-test", "requests_per_second": 1e4, **earthengine}},
        "sampling": {"n_locations": 6, "top_n_cities": 20, "seed": 7},
        "patch": {"size_px": 16},
        "store": {"path": str(store), "patches_per_shard": 3},
    })


def ee_archive(manifest: Manifest, transport: FlakyTransport) -> zarr.Group:
    source = EarthEngineSource(manifest.source.earthengine, manifest.cloud_filter.max_cloudy_pixel_percentage,
                               transport=transport, resampling=manifest.patch.resampling, max_attempts=12,
                               sleep=lambda s: None)
    locations, _ = steps.prepare(manifest, source=source)
    transport.bind(locations, manifest.patch.size_px, manifest.patch.resolution_m)
    return curate_all(manifest, source)


@pytest.mark.usefixtures("ee_offline")
def test_concurrent_curation_writes_the_same_archive_as_sequential(tmp_path):
    seq_t = FlakyTransport()
    seq = ee_archive(ee_manifest(tmp_path / "seq.zarr", concurrent_fetches=1), seq_t)
    par_t = FlakyTransport(fail_rate=0.25, seed=3)
    par = ee_archive(ee_manifest(tmp_path / "par.zarr", max_concurrent_requests=5, concurrent_fetches=8), par_t)

    assert seq_t.max_in_flight == 1  # concurrent_fetches: 1 is the former, one-request-at-a-time path
    assert 3 <= par_t.max_in_flight <= 5 and par_t.faults > 10  # overlapped, under the cap, faults retried
    assert par_t.calls == seq_t.calls + par_t.faults  # every request once, plus one retry per fault
    assert (seq["status"][:] == STATUS_DONE).all() and (par["status"][:] == STATUS_DONE).all()
    ids = [str(p) for p in par["patch_id"][:]]
    assert ids == [str(p) for p in seq["patch_id"][:]] and len(set(ids)) == 6  # none lost or duplicated
    names = sorted(name for name, _ in seq.arrays())
    assert names == sorted(name for name, _ in par.arrays()) and "s2_l1c" in names
    for name in names:
        np.testing.assert_array_equal(par[name][:], seq[name][:], err_msg=name)
    assert set(par["label_method"][:].ravel()) == {"matched", "mode"}
