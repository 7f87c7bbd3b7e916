"""How requests reach Earth Engine, how fast, and what happens when they fail.

Every call holds a permit of a :class:`~pipeline.sources.ratelimit.RequestLimiter` while it runs: at most
``max_concurrent_requests`` in flight and ``requests_per_second`` started, cluster-wide under Dask (see
:mod:`pipeline.sources.ratelimit`), with an AIMD window that halves on a 429 and grows back on success.
Rate limits (429, "Too Many Requests", quota), server errors (5xx, "Internal error", "Service
unavailable"), deadlines and network timeouts are retried with exponential backoff and jitter (delay in
``[d/2, d]``, ``d = min(backoff_max_s, backoff_base_s·2^k)``) up to ``max_attempts`` attempts, then
:class:`~pipeline.sources.base.TransientSourceError` (:func:`call_with_retries`); no permit is held while
waiting. Permanent problems raise :class:`~pipeline.sources.base.NoImageFound`,
:class:`~pipeline.sources.base.InvalidGeometry`, :class:`~pipeline.sources.base.CorruptData` or
(anything else Earth Engine refuses) :class:`~pipeline.sources.base.SourceError`, which the flow
records as a failed patch (:func:`classify_error`). The Earth Engine client's own HTTP retries are
turned off when it is initialised, so this policy is the only one.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import re
import threading
import time
from typing import Any, Callable, Protocol, runtime_checkable

import ee

from pipeline.sources.base import CorruptData, InvalidGeometry, NoImageFound, SourceError, TransientSourceError
from pipeline.sources.ratelimit import RequestLimiter

log = logging.getLogger(__name__)

@runtime_checkable
class Transport(Protocol):
    """How requests reach Earth Engine. ``tag`` names the request ("s2_l1c", "dw", …) for logs and fakes."""

    def get_info(self, computation: ee.ComputedObject, tag: str) -> Any:
        """Evaluate ``computation`` (like ``getInfo()``) and return its JSON value."""
        ...

    def compute_pixels(self, request: dict[str, Any], tag: str) -> Any:
        """Run ``ee.data.computePixels(request)``; a structured numpy array for ``NUMPY_NDARRAY``."""
        ...


class EarthEngineTransport:
    """The real transport: the Earth Engine REST API through ``earthengine-api``."""

    def get_info(self, computation: ee.ComputedObject, tag: str) -> Any:
        return ee.data.computeValue(computation)

    def compute_pixels(self, request: dict[str, Any], tag: str) -> Any:
        try:
            return ee.data.computePixels(request)
        except (ValueError, EOFError) as err:  # the NPY payload could not be decoded
            raise CorruptData(f"undecodable computePixels payload: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------------------------- rate control
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


_TRANSIENT_CODES = re.compile(r"(?<!\d)(?<!\d\.)(?:429|500|502|503|504)(?!\d)(?!\.\d)")
_TRANSIENT_MARKERS = (
    "too many requests", "quota exceeded", "rate limit", "too many concurrent",
    "internal error", "service unavailable", "bad gateway",
    "backend error", "deadline", "timed out", "timeout", "try again", "unavailable",
    "connection reset", "connection aborted",
)
_NETWORK_MODULES = frozenset({"httplib2", "urllib3", "requests"})
_NOT_FOUND_MARKERS = ("not found", "does not exist", "no such asset")
_GEOMETRY_MARKERS = ("geometry", "projection", "crs", "coordinate", "affine", "pixel grid")
_BAND_MARKERS = ("did not match any bands", "no band named", "band not found")


def classify_error(err: BaseException, context: str) -> SourceError | None:
    """None when ``err`` is worth retrying; otherwise the typed error to raise.

    Exceptions that are neither Earth Engine, network nor source errors (programming errors, revoked
    credentials) are re-raised unchanged: they must stop the run rather than fail patches one by one.
    """
    if isinstance(err, SourceError):
        return None if err.retryable else err
    if isinstance(err, (TimeoutError, ConnectionError)) or "timeout" in type(err).__name__.lower():
        return None
    if isinstance(err, ee.ee_exception.EEException):
        msg = str(err)
        low = msg.lower()
        if any(m in low for m in _BAND_MARKERS):
            return CorruptData(f"{context}: {clip(msg)}")
        if any(m in low for m in _TRANSIENT_MARKERS) or _TRANSIENT_CODES.search(low):
            return None
        if any(m in low for m in _NOT_FOUND_MARKERS):
            return NoImageFound(f"{context}: {clip(msg)}")
        if any(m in low for m in _GEOMETRY_MARKERS):
            return InvalidGeometry(f"{context}: {clip(msg)}")
        return SourceError(f"{context}: Earth Engine refused the request: {clip(msg)}")
    if isinstance(err, (OSError, http.client.HTTPException)):  # DNS, TLS, truncated answers
        return None
    if type(err).__module__.split(".")[0] in _NETWORK_MODULES:  # e.g. httplib2.ServerNotFoundError
        return None
    raise err


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


_THROTTLE_CODES = re.compile(r"(?<!\d)(?<!\d\.)429(?!\d)(?!\.\d)")
_THROTTLE_MARKERS = ("too many requests", "quota exceeded", "rate limit", "too many concurrent")


def is_throttle(err: BaseException) -> bool:
    """Whether ``err`` says the project sends too much (429 / quota), as opposed to a failure of the server.

    Throttles shrink the AIMD window of :mod:`pipeline.sources.ratelimit`; both kinds are retried.
    """
    low = str(err).lower()
    return any(m in low for m in _THROTTLE_MARKERS) or bool(_THROTTLE_CODES.search(low))


def call_with_retries(fn: Callable[[], Any], context: str, *, max_attempts: int, delay: Callable[[int], float],
                      sleep: Callable[[float], None], limiter: RequestLimiter | None = None,
                      bucket: TokenBucket | None = None, slots: threading.Semaphore | None = None) -> Any:
    """Run ``fn`` under the request limits, retrying transient failures.

    Args:
        fn: The request, without arguments.
        context: What is being asked, for messages (location, season, modality).
        max_attempts: Attempts in all, ≥ 1.
        delay: Delay before the retry following a failed attempt (1-based), see :func:`backoff_delay`.
        sleep: How to wait between attempts.
        limiter: Held while ``fn`` runs (not while sleeping between attempts); told about successes and
            throttles (429), which drive its AIMD window.
        bucket: Without ``limiter``: rate limit, one token per attempt.
        slots: Without ``limiter``: concurrency cap, held while ``fn`` runs.

    Returns:
        What ``fn`` returned.

    Raises:
        SourceError: A permanent failure, typed by :func:`classify_error`.
        TransientSourceError: Still failing after ``max_attempts`` attempts.
    """
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
                typed = classify_error(err, context)
                if typed is not None:
                    raise typed from None
                last = err
                if is_throttle(err):
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
