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

import http.client
import logging
import re
from typing import Any, Callable, Protocol, runtime_checkable

import ee

from pipeline.sources import requests
from pipeline.sources.base import (
    CorruptData,
    InvalidGeometry,
    NoImageFound,
    SourceError,
)
from pipeline.sources.requests import TokenBucket, backoff_delay, clip  # noqa: F401 - part of this module's interface

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


_THROTTLE_CODES = re.compile(r"(?<!\d)(?<!\d\.)429(?!\d)(?!\.\d)")
_THROTTLE_MARKERS = ("too many requests", "quota exceeded", "rate limit", "too many concurrent")


def is_throttle(err: BaseException) -> bool:
    """Whether ``err`` says the project sends too much (429 / quota), as opposed to a failure of the server.

    Throttles shrink the AIMD window of :mod:`pipeline.sources.ratelimit`; both kinds are retried.
    """
    low = str(err).lower()
    return any(m in low for m in _THROTTLE_MARKERS) or bool(_THROTTLE_CODES.search(low))


def call_with_retries(fn: Callable[[], Any], context: str, **kwargs: Any) -> Any:
    """:func:`pipeline.sources.requests.call_with_retries` with Earth Engine's error classification
    (:func:`classify_error`) and throttle detection (:func:`is_throttle`); same keyword arguments.
    """
    return requests.call_with_retries(fn, context, classify=classify_error, throttle=is_throttle, **kwargs)


