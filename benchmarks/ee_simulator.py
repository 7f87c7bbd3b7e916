"""A simulated Earth Engine for benchmarks: a quota-enforcing server and a transport that talks to it.

**Server** (:class:`QuotaServer`, run by :func:`start_server` as its own process on 127.0.0.1, so that
every Dask worker process shares it; it exits by itself after ``lifetime_s``). Each call is admitted
or answered 429 at once: at most ``max_concurrent`` admitted calls in flight and at most
``per_window`` admitted calls started in any ``window_s`` interval (a sliding window; refused calls
do not count). An admitted call is held for a latency drawn from the :class:`LatencyModel`, then
answered 200, or 503 with probability ``fault_rate`` (a transient fault, after the work). The server
keeps the numbers the benchmark reports (``GET /stats``): calls by answer, the time integral of calls
in flight, the largest number in flight and in any window, the latencies it served.

**Latency model** (:class:`LatencyModel`): log-normal per request kind, ``median · exp(σ·Z)``,
``Z ~ N(0, 1)``, mean ``median · exp(σ²/2)``; defaults 0.3 s for a metadata call (``computeValue``:
image selection, Dynamic World match) and 1.5 s for a ``computePixels`` call of a 264 px patch, σ = 0.5.
Every latency is multiplied by ``time_scale`` (and the quota window with it), so a run takes
``time_scale`` of the real time; numbers are reported in real-time equivalents.

**Transport** (:class:`SimTransport`): the :class:`~pipeline.sources.earthengine.Transport` the tests
fake. It serialises the request as the real client does, asks the server, raises Earth Engine's own
exception for a 429 or 503, and otherwise answers with data that depend only on the request: image
ids from a hash of the serialised selection (so every location and season gets its own), pixels from
a generator seeded by the serialised image and grid. Identical requests give identical bytes.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import math
import multiprocessing as mp
import random
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


@dataclass(frozen=True)
class LatencyModel:
    """Log-normal latency per request kind (seconds of real time, before ``time_scale``)."""

    info_median_s: float = 0.3
    pixels_median_s: float = 1.5
    sigma: float = 0.5
    time_scale: float = 1.0

    def sample(self, kind: str, rng: random.Random) -> float:
        median = self.pixels_median_s if kind == "pixels" else self.info_median_s
        return median * math.exp(self.sigma * rng.gauss(0.0, 1.0)) * self.time_scale

    def mean(self, kind: str) -> float:
        median = self.pixels_median_s if kind == "pixels" else self.info_median_s
        return median * math.exp(self.sigma ** 2 / 2) * self.time_scale


@dataclass(frozen=True)
class Quota:
    """The server-side limits (Earth Engine per project: ~40 concurrent, ~100 requests/s)."""

    max_concurrent: int = 40
    per_window: int = 100
    window_s: float = 1.0


class QuotaServer:
    """The admission rule and the counters (module docstring); thread-safe."""

    def __init__(self, quota: Quota, latency: LatencyModel, fault_rate: float = 0.0, seed: int = 0):
        self.quota, self.latency, self.fault_rate = quota, latency, fault_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._starts: collections.deque[float] = collections.deque()
            self.in_flight = 0
            self.stats = {"ok": collections.Counter(), "throttled": 0, "faults": 0, "max_in_flight": 0,
                          "max_in_window": 0, "area": 0.0, "latency_sum": 0.0, "admitted": 0,
                          "first": None, "last": None}
            self._changed = None

    def _advance(self, now: float) -> None:
        if self._changed is not None:
            self.stats["area"] += self.in_flight * (now - self._changed)
        self._changed = now

    def call(self, kind: str) -> int:
        """Serve one call of ``kind`` (``info`` or ``pixels``): returns the HTTP status."""
        q, s = self.quota, self.stats
        with self._lock:
            now = time.monotonic()
            while self._starts and self._starts[0] <= now - q.window_s:
                self._starts.popleft()
            if self.in_flight >= q.max_concurrent or len(self._starts) >= q.per_window:
                s["throttled"] += 1
                return 429
            self._advance(now)
            self._starts.append(now)
            self.in_flight += 1
            s["admitted"] += 1
            s["max_in_flight"] = max(s["max_in_flight"], self.in_flight)
            s["max_in_window"] = max(s["max_in_window"], len(self._starts))
            s["first"] = now if s["first"] is None else s["first"]
            delay = self.latency.sample(kind, self._rng)
            fault = self._rng.random() < self.fault_rate
        time.sleep(delay)
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            self.in_flight -= 1
            s["latency_sum"] += delay
            s["last"] = now
            if fault:
                s["faults"] += 1
            else:
                s["ok"][kind] += 1
        return 503 if fault else 200

    def snapshot(self) -> dict:
        with self._lock:
            out = {k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in self.stats.items()}
        return out


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/reset":
            self.server.sim.reset()
            code = 200
        else:
            code = self.server.sim.call(body.get("kind", "info"))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        data = json.dumps(self.server.sim.snapshot()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many calls connect at once: a short backlog would drop connections


def _serve(quota: dict, latency: dict, fault_rate: float, lifetime_s: float, ready) -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.sim = QuotaServer(Quota(**quota), LatencyModel(**latency), fault_rate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ready.put(server.server_address[1])
    time.sleep(lifetime_s)  # bounded in time whatever happens to the benchmark
    server.shutdown()


def start_server(quota: Quota, latency: LatencyModel, fault_rate: float = 0.0,
                 lifetime_s: float = 1800.0) -> tuple[mp.Process, str]:
    """Start the server process; returns it and its URL (``http://127.0.0.1:<port>``)."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(asdict(quota), asdict(latency), fault_rate, lifetime_s, ready),
                       daemon=True, name="ee-simulator")
    proc.start()
    return proc, f"http://127.0.0.1:{ready.get(timeout=60)}"


def _http(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        data = json.dumps(body or {}).encode()
        conn.request(method, path, body=data if method == "POST" else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def server_stats(url: str) -> dict:
    return json.loads(_http(url, "GET", "/stats")[1])


def reset_server(url: str) -> None:
    _http(url, "POST", "/reset")


# ----------------------------------------------------------------------------------------------- client
_DTYPES = {"s2_l1c": np.uint16, "s2_l2a": np.uint16, "s1_grd": np.float32, "dw": np.uint8}


class SimTransport:
    """Earth Engine transport against the simulator (module docstring)."""

    def __init__(self, url: str):
        self.url = url

    def _ask(self, kind: str) -> None:
        import ee

        status, _ = _http(self.url, "POST", "/call", {"kind": kind})
        if status == 429:
            raise ee.ee_exception.EEException("Too Many Requests: request rate or concurrency quota exceeded (429)")
        if status != 200:
            raise ee.ee_exception.EEException(f"HttpError {status}: Service Unavailable")

    def get_info(self, computation, tag: str):
        key = hashlib.sha256(computation.serialize().encode()).hexdigest()
        self._ask("info")
        h = int(key[:12], 16)
        if tag == "dw":
            return {"matched": 1, "window": 3}
        extra = ({"orbitProperties_pass": ["ASCENDING"]} if tag == "s1_grd"
                 else {"CLOUDY_PIXEL_PERCENTAGE": [(h % 2000) / 100.0]})
        return {"count": 3, "ids": [f"{tag}_{key[:20]}"], "times": [1_600_000_000_000 + h % 10_000_000_000],
                **extra}

    def compute_pixels(self, request: dict, tag: str):
        grid = request["grid"]
        text = request["expression"].serialize() + json.dumps(grid, sort_keys=True) + ",".join(request["bandIds"])
        self._ask("pixels")
        rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))
        h, w = grid["dimensions"]["height"], grid["dimensions"]["width"]
        bands, dtype = request["bandIds"], _DTYPES[tag]
        out = np.zeros((h, w), dtype=[(b, dtype) for b in bands])
        for b in bands:
            if tag == "dw":
                out[b] = rng.integers(0, 9, (h, w))
            elif tag == "s1_grd":
                out[b] = rng.normal(-12.0, 4.0, (h, w))
            else:
                out[b] = rng.integers(1, 10_000, (h, w))
        return out


def offline_earth_engine() -> None:
    """Initialise earthengine-api without network: its bundled algorithm table (``ee.apitestcase``), as the
    library's own tests do. Internal names of earthengine-api 1.7.x; for benchmarks and tests only.
    """
    import ee
    from ee import apitestcase

    ee.data._install_cloud_api_resource = lambda: None
    ee.data.getAlgorithms = apitestcase.GetAlgorithms
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Reset()
    ee.Initialize(None, "", project="offline-benchmark")


def use_simulator(url: str) -> None:
    """In this process, let every :class:`EarthEngineSource` made without a transport use the simulator."""
    from pipeline.sources.earthengine import source as ee_source

    offline_earth_engine()
    ee_source.EarthEngineTransport = lambda: SimTransport(url)
    ee_source.initialize_earth_engine = lambda options, timeout: None
