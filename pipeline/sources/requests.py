"""Requests to a remote service, shared by the sources that make them (Earth Engine, STAC).

One policy for every request: it runs while holding a permit of the request limits (a
:class:`~pipeline.sources.ratelimit.RequestLimiter`, cluster-wide under Dask, or an in-process
:class:`TokenBucket` and semaphore), and a transient failure is retried with exponential backoff and
jitter (:func:`backoff_delay`) up to ``max_attempts`` attempts, without holding a permit while waiting;
then :class:`~pipeline.sources.base.TransientSourceError`. What counts as transient is the source's
call (``classify``); permanent problems are raised as the source's typed errors and recorded as failed
patches. A source using this sets ``retries_requests = True``: the curation does not retry it again
(see ``docs/architecture.md``, "Retries").
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from typing import Any, Callable

from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.sources.base import InvalidGeometry, SourceError, TransientSourceError
from pipeline.sources.ratelimit import RequestLimiter

log = logging.getLogger(__name__)

#: ``(err, context)`` → None when ``err`` is worth retrying, else the typed error to raise.
Classifier = Callable[[BaseException, str], "SourceError | None"]


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts up to ``capacity`` (≥ 1)."""

    def __init__(self, rate: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.capacity = max(1.0, float(capacity if capacity is not None else rate))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._last = clock()

    def acquire(self) -> float:
        """Take one token, sleeping while none is available; returns the time waited (s)."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)
            waited += wait


def clip(text: str, n: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (1-based): uniform in [d/2, d], d = min(max_s, base_s·2^(attempt-1)).

    Args:
        attempt: The number of the attempt that just failed (1 for the first).
        base_s: Delay scale of the first retry.
        max_s: Upper bound of ``d``.
        rng: Source of the jitter.

    Returns:
        The delay in seconds.
    """
    d = min(max_s, base_s * (2.0 ** (attempt - 1)))
    return d / 2.0 + rng.random() * d / 2.0


def typed_errors_only(err: BaseException, context: str) -> SourceError | None:
    """The default classification: a retryable :class:`SourceError` is retried, another one raised, and
    anything else (a programming error) stops the run unchanged.
    """
    if isinstance(err, SourceError):
        return None if err.retryable else err
    raise err


def call_with_retries(fn: Callable[[], Any], context: str, *, max_attempts: int, delay: Callable[[int], float],
                      sleep: Callable[[float], None], classify: Classifier | None = None,
                      throttle: Callable[[BaseException], bool] | None = None, limiter: RequestLimiter | None = None,
                      bucket: TokenBucket | None = None, slots: threading.Semaphore | None = None) -> Any:
    """Run ``fn`` under the request limits, retrying transient failures.

    Args:
        fn: The request, without arguments.
        context: What is being asked, for messages (location, season, modality).
        max_attempts: Attempts in all, ≥ 1.
        delay: Delay before the retry following a failed attempt (1-based), see :func:`backoff_delay`.
        sleep: How to wait between attempts.
        classify: ``(err, context)`` → None to retry ``err``, or the typed error to raise instead
            (default :func:`typed_errors_only`); it may re-raise ``err`` to stop the run.
        throttle: Whether an error says "you send too much" (a 429), which shrinks ``limiter``'s window.
        limiter: Held while ``fn`` runs (not while sleeping between attempts); told about successes and
            throttles (429), which drive its AIMD window.
        bucket: Without ``limiter``: rate limit, one token per attempt.
        slots: Without ``limiter``: concurrency cap, held while ``fn`` runs.

    Returns:
        What ``fn`` returned.

    Raises:
        SourceError: A permanent failure, typed by ``classify``.
        TransientSourceError: Still failing after ``max_attempts`` attempts.
    """
    classify = classify or typed_errors_only
    if limiter is None:
        permit = _bucket_and_slots(bucket, slots)
        succeeded = throttled = _nothing
    else:
        permit, succeeded, throttled = limiter.request, limiter.succeeded, limiter.throttled
    last: BaseException | None = None
    for attempt in range(1, max_attempts + 1):
        with permit():
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - classified below
                typed = classify(err, context)
                if typed is not None:
                    raise typed from None
                last = err
                if throttle is not None and throttle(err):
                    throttled()
            else:
                succeeded()
                return result
        if attempt < max_attempts:
            wait = delay(attempt)
            log.info("%s: transient error (%s), retry %d/%d in %.1f s", context, clip(str(last), 160),
                     attempt, max_attempts - 1, wait)
            sleep(wait)
    raise TransientSourceError(
        f"{context}: still failing after {max_attempts} attempts: "
        f"{type(last).__name__}: {clip(str(last))}")


def _nothing() -> None:
    return None


def _bucket_and_slots(bucket: TokenBucket | None, slots: threading.Semaphore | None):
    @contextlib.contextmanager
    def permit():
        if bucket is not None:
            bucket.acquire()
        if slots is None:
            yield
            return
        with slots:
            yield
    return permit


def check_grid(grid: PatchGrid, location: Location) -> None:
    values = (grid.x0, grid.y0, grid.resolution)
    if not all(math.isfinite(v) for v in values) or grid.resolution <= 0 or grid.size <= 0:
        raise InvalidGeometry(f"location {location.id}: invalid patch grid {grid}")
    if not (1024 <= grid.epsg <= 32767):
        raise InvalidGeometry(f"location {location.id}: invalid EPSG code {grid.epsg}")



class PerProcessState:
    """Pickling for sources that travel to Dask workers: the attributes named in ``PER_PROCESS`` (locks,
    limiters, pools, clients) are left out, and ``_setup_runtime()`` makes them anew in the receiving process.
    """

    PER_PROCESS: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in self.PER_PROCESS:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        raise NotImplementedError


__all__ = [
    "Classifier", "PerProcessState", "TokenBucket", "backoff_delay", "call_with_retries", "check_grid", "clip",
    "typed_errors_only",
]
