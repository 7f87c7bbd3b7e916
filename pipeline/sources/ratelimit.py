"""Request limits that hold for a whole Dask cluster, and an AIMD window that backs off on 429s.

A service with a per-project quota (Earth Engine: about 40 concurrent requests and 100 requests/s
per project) answers 429 beyond it, however many machines send. Every request therefore passes
three gates, in this order (:meth:`RequestLimiter.request`):

1. **Adaptive window** (per process, :class:`AdaptiveGate`): at most ``floor(limit)`` requests of
   this process in flight, where ``limit`` is driven by :class:`AIMDController`: additive increase on
   success (+1 per ``limit`` successes, i.e. +1 per window of requests, as TCP congestion avoidance),
   multiplicative decrease on a 429 (× 0.5, at most once per cooldown so that one overload episode,
   which answers many requests with 429 at once, halves the window once). Fewer requests in flight
   means a proportionally lower rate too (Little's law: rate = in flight / latency), so one window
   adapts both.
2. **Concurrency** (cluster-wide): a counting semaphore of ``max_concurrent`` leases, held from
   before the request is sent until its answer has arrived. The server counts a request in flight
   for a sub-interval of that, so the server never sees more than ``max_concurrent`` at once.
3. **Rate** (cluster-wide, :class:`SlidingWindowRate`): a counting semaphore of
   ``L = floor(requests_per_second · window_s)`` leases; a request takes one just before it is
   sent, and a timer releases it ``hold = window_s · (1 + RATE_SLACK)`` seconds after it was
   granted. *Why at most L requests start in any interval of length* ``window_s``: take the k
   requests sent in ``[t, t + window_s)`` and let ``g`` be the latest grant among them. Every lease
   was granted at most ``window_s`` (plus the small delay between grant and send, which the slack
   covers) before ``g``, and is released only ``hold > window_s`` after its grant, so at time ``g``
   all k leases are held at once: ``k ≤ L``. (A token bucket would allow ``2L`` in some windows:
   a full bucket plus one window's refill.)

Under Dask (the calling thread runs a Dask task) both semaphores are ``distributed.Semaphore``: the
counts live on the scheduler, every worker process on every machine takes leases from the same
counters, and the leases of a worker that dies expire after
``distributed.scheduler.locks.lease-timeout``. One :class:`RequestLimiter` per process and
semaphore name is kept (:func:`request_limiter`), so all shard tasks of a process share one AIMD
window. Outside Dask the semaphores are ``threading.BoundedSemaphore`` in this process.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from typing import Callable, Iterator, Protocol

log = logging.getLogger(__name__)

RATE_SLACK = 0.05
"""A rate lease is held ``window_s · (1 + RATE_SLACK)``: covers the delay between grant and send and
network jitter on the way to the server (costs at most 5 % of the rate quota)."""


class Lease(Protocol):
    """A counting semaphore: ``threading.BoundedSemaphore`` or ``distributed.Semaphore``."""

    def acquire(self) -> bool: ...

    def release(self) -> object: ...


# ----------------------------------------------------------------------------------------------- AIMD
class AIMDController:
    """Additive-increase / multiplicative-decrease window (Chiu & Jain 1989; TCP congestion avoidance, RFC 5681).

    Args:
        ceiling: Largest window (the configured concurrency).
        floor: Smallest window (≥ 1: one request is always allowed).
        decrease: Factor applied on a throttle (0 < decrease < 1).
        increase: Added to the window per ``limit`` successes.
        cooldown_s: At most one decrease per this many seconds.
        clock: Monotonic time in seconds (a fake one in tests).
    """

    def __init__(self, ceiling: float, *, floor: float = 1.0, decrease: float = 0.5, increase: float = 1.0,
                 cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if not 1.0 <= floor <= ceiling:
            raise ValueError("need 1 <= floor <= ceiling")
        if not 0.0 < decrease < 1.0 or increase <= 0 or cooldown_s < 0:
            raise ValueError("need 0 < decrease < 1, increase > 0, cooldown_s >= 0")
        self.ceiling, self.floor = float(ceiling), float(floor)
        self.decrease, self.increase, self.cooldown_s = float(decrease), float(increase), float(cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._limit = self.ceiling
        self._last_decrease = -math.inf
        self.throttles = 0
        self.decreases = 0

    @property
    def limit(self) -> float:
        """The current window (float; the gate admits ``floor(limit)`` requests)."""
        return self._limit

    def on_success(self) -> None:
        """A request was answered: grow the window by ``increase / limit``, up to ``ceiling``."""
        with self._lock:
            self._limit = min(self.ceiling, self._limit + self.increase / self._limit)

    def on_throttle(self) -> bool:
        """A request was refused for load (429): shrink the window unless it shrank within ``cooldown_s``.

        Returns:
            Whether the window was decreased.
        """
        with self._lock:
            self.throttles += 1
            now = self._clock()
            if now - self._last_decrease < self.cooldown_s:
                return False
            self._last_decrease = now
            self._limit = max(self.floor, self._limit * self.decrease)
            self.decreases += 1
            return True


class AdaptiveGate:
    """At most ``floor(controller.limit)`` holders at once (this process); waiters wake when it grows."""

    def __init__(self, controller: AIMDController):
        self.controller = controller
        self._cond = threading.Condition()
        self.in_flight = 0

    def acquire(self) -> None:
        with self._cond:
            while self.in_flight >= int(self.controller.limit):
                self._cond.wait()
            self.in_flight += 1

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()

    def succeeded(self) -> None:
        before = int(self.controller.limit)
        self.controller.on_success()
        if int(self.controller.limit) > before:
            with self._cond:
                self._cond.notify_all()

    def throttled(self) -> None:
        self.controller.on_throttle()


# ----------------------------------------------------------------------------------------------- rate
class SlidingWindowRate:
    """At most ``leases`` grants in any ``window_s`` interval (proof in the module docstring).

    Args:
        semaphore: Counting semaphore of ``leases`` leases (local or ``distributed``).
        window_s: The window of the quota (1 s for "requests per second").
        clock: Monotonic time in seconds.
    """

    def __init__(self, semaphore: Lease, window_s: float, clock: Callable[[], float] = time.monotonic):
        self._sem = semaphore
        self.hold_s = float(window_s) * (1.0 + RATE_SLACK)
        self._clock = clock
        self._due: collections.deque[float] = collections.deque()
        self._cond = threading.Condition()
        self._releaser: threading.Thread | None = None

    def acquire(self) -> None:
        """Take a lease; it is given back ``hold_s`` after now by a background thread."""
        self._sem.acquire()
        with self._cond:
            self._due.append(self._clock() + self.hold_s)  # holds are equal: deadlines stay in order
            if self._releaser is None:
                self._releaser = threading.Thread(target=self._release_loop, name="rate-lease-releaser",
                                                  daemon=True)
                self._releaser.start()
            self._cond.notify()

    def _release_loop(self) -> None:
        """Give leases back as they fall due; the thread ends when none is left (a new one starts on demand)."""
        while True:
            with self._cond:
                if not self._due:
                    self._releaser = None
                    return
                wait = self._due[0] - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._due.popleft()
            try:
                self._sem.release()
            except Exception as err:  # noqa: BLE001 - the cluster is gone: its leases went with it
                log.debug("rate lease not given back: %s: %s", type(err).__name__, err)


# ----------------------------------------------------------------------------------------------- limiter
class RequestLimiter:
    """The three gates of a request (module docstring). ``scope`` is ``"cluster"`` or ``"process"``."""

    def __init__(self, concurrency: Lease, rate: SlidingWindowRate, gate: AdaptiveGate, scope: str):
        self.concurrency, self.rate, self.gate, self.scope = concurrency, rate, gate, scope

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold one permit while the request runs (the rate lease outlives it, see :class:`SlidingWindowRate`)."""
        self.gate.acquire()
        try:
            self.concurrency.acquire()
            try:
                self.rate.acquire()  # last, right before sending: grant and send are close together
                yield
            finally:
                self.concurrency.release()
        finally:
            self.gate.release()

    def succeeded(self) -> None:
        """Feed a success to the AIMD window."""
        self.gate.succeeded()

    def throttled(self) -> None:
        """Feed a 429 to the AIMD window."""
        self.gate.throttled()


def rate_leases(requests_per_second: float, window_s: float) -> int:
    """Leases of the rate semaphore: ``floor(requests_per_second · window_s)``, at least 1."""
    return max(1, int(math.floor(requests_per_second * window_s + 1e-9)))


def local_limiter(max_concurrent: int, requests_per_second: float, window_s: float = 1.0,
                  **aimd) -> RequestLimiter:
    """Limits of this process only (no Dask): ``threading`` semaphores."""
    rate = SlidingWindowRate(threading.BoundedSemaphore(rate_leases(requests_per_second, window_s)), window_s)
    gate = AdaptiveGate(AIMDController(max_concurrent, cooldown_s=aimd.pop("cooldown_s", window_s), **aimd))
    return RequestLimiter(threading.BoundedSemaphore(max_concurrent), rate, gate, "process")


_CLUSTER: dict[tuple, RequestLimiter] = {}
_CLUSTER_LOCK = threading.Lock()


def request_limiter(name: str, max_concurrent: int, requests_per_second: float, window_s: float = 1.0,
                    **aimd) -> RequestLimiter:
    """The cluster-wide limiter when the calling thread runs a Dask task, else a new local one.

    Call it in the task's own thread (Dask tells a task thread from others); the limiter may then be
    used from any thread of the process. The semaphore names carry the limits
    (``<name>-inflight-<C>``, ``<name>-rate-<L>per<W>s``): runs configured differently on one
    scheduler never share a counter, since ``distributed.Semaphore`` refuses two sizes for one name.

    Args:
        name: Names the quota (e.g. ``softcon-earthengine-<project>``).
        max_concurrent: Requests in flight, cluster-wide.
        requests_per_second: Requests started per second, cluster-wide.
        window_s: The rate's window (1 s; a time-scaled benchmark shortens it).
        **aimd: Options of :class:`AIMDController` (``cooldown_s`` defaults to ``window_s``).
    """
    worker = _dask_worker()
    if worker is None:
        return local_limiter(max_concurrent, requests_per_second, window_s, **aimd)
    key = (worker.scheduler.address, name, max_concurrent, rate_leases(requests_per_second, window_s), window_s)
    with _CLUSTER_LOCK:
        if key not in _CLUSTER:
            _CLUSTER[key] = cluster_limiter(worker.scheduler, worker.loop, name, max_concurrent, requests_per_second,
                                            window_s, **aimd)
        return _CLUSTER[key]


def cluster_limiter(scheduler_rpc, loop, name: str, max_concurrent: int, requests_per_second: float,
                    window_s: float = 1.0, **aimd) -> RequestLimiter:
    """A new limiter on the ``distributed.Semaphore`` pair of ``name`` (its own AIMD window).

    Args:
        scheduler_rpc: The scheduler's RPC handle (``worker.scheduler`` or ``client.scheduler``).
        loop: The event loop that handle runs on (``worker.loop`` or ``client.loop``).
        name: As in :func:`request_limiter`.
        max_concurrent: As in :func:`request_limiter`.
        requests_per_second: As in :func:`request_limiter`.
        window_s: As in :func:`request_limiter`.
        **aimd: As in :func:`request_limiter`.
    """
    from distributed import Semaphore

    leases = rate_leases(requests_per_second, window_s)
    where = dict(scheduler_rpc=scheduler_rpc, loop=loop)
    concurrency = Semaphore(max_leases=max_concurrent, name=f"{name}-inflight-{max_concurrent}", **where)
    rate = Semaphore(max_leases=leases, name=f"{name}-rate-{leases}per{window_s:g}s", **where)
    gate = AdaptiveGate(AIMDController(max_concurrent, cooldown_s=aimd.pop("cooldown_s", window_s), **aimd))
    return RequestLimiter(concurrency, SlidingWindowRate(rate, window_s), gate, "cluster")


def _dask_worker():
    """The Dask worker running the calling thread's task, or None."""
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency of the flow
        return None
    try:
        return get_worker()
    except ValueError:
        return None
