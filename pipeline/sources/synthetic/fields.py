"""Deterministic random fields of the synthetic world: seeded generators, resampling and smooth noise.

Every random number of the synthetic source comes from :func:`seeded_rng`, keyed by a stream id (the
``ST_*`` constants, one per use) and fixed-length integer keys, so any process or thread draws the same
values. Smooth multi-octave noise (:func:`smooth_fields`) is generated on a coarse grid and resampled
with separable pixel-area-aligned kernels (:func:`zoom_to`).
"""

from __future__ import annotations

import functools

import numpy as np

# Random streams: the first element of every seed tuple, so that no two uses share a sequence.
ST_PLACE, ST_FIELDS, ST_PARCELS, ST_TEXTURE = 1, 2, 3, 4
ST_S2_PHASE, ST_S2_COVER, ST_S2_SCENE, ST_S2_NOISE = 11, 12, 13, 14
ST_S1_PHASE, ST_S1_META, ST_S1_SCENE = 21, 22, 23
ST_LABEL, ST_FAIL = 31, 32


def seeded_rng(stream: int, seed: int, *keys: int) -> np.random.Generator:
    """Generator seeded by a fixed-length tuple (stream, seed, up to 4 keys), each as two 32-bit words.

    The fixed length matters: numpy's SeedSequence pads short entropy with zeros, so variable-length
    tuples could collide.
    """
    if len(keys) > 4:
        raise ValueError("at most 4 keys")
    words: list[int] = []
    for k in (stream, seed, *keys, *([0] * (4 - len(keys)))):
        k = int(k) % (1 << 64)
        words += [k & 0xFFFFFFFF, k >> 32]
    return np.random.default_rng(words)


@functools.lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (n_out, taps) of a pixel-area-aligned 1-D resampling, edges clamped.

    Output pixel i samples the input at x = (i + 0.5)·n_in/n_out − 0.5 (the convention of GDAL and
    OpenCV resize): order 0 = nearest, 1 = linear, 3 = Keys cubic convolution (a = −0.5).
    """
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5
    if order == 0:
        idx = np.floor(x + 0.5)[:, None]
        w = np.ones_like(idx)
    elif order == 1:
        i0 = np.floor(x)
        f = (x - i0)[:, None]
        idx = i0[:, None] + np.arange(2)[None]
        w = np.concatenate([1 - f, f], axis=1)
    elif order == 3:
        i0 = np.floor(x)
        idx = i0[:, None] + np.arange(-1, 3)[None]
        d = np.abs(x[:, None] - idx)
        a = -0.5
        w = np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                     np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))
    else:
        raise ValueError(f"unsupported interpolation order {order}")
    idx = np.clip(idx, 0, n_in - 1).astype(np.intp)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    idx.flags.writeable = False
    w.flags.writeable = False
    return idx, w


def zoom_to(a: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resample the last two axes of a square ``a`` to ``size`` × ``size`` (separable, float32)."""
    n = a.shape[-1]
    if n == size:
        return a
    idx, w = _taps(n, size, order)
    rows = a[..., idx[:, 0], :] * w[:, 0, None]
    for t in range(1, idx.shape[1]):
        rows += a[..., idx[:, t], :] * w[:, t, None]
    out = rows[..., idx[:, 0]] * w[:, 0]
    for t in range(1, idx.shape[1]):
        out += rows[..., idx[:, t]] * w[:, t]
    return out


def normalise(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit std along the last two axes (in place, float32)."""
    axes = (-2, -1)
    a -= a.mean(axis=axes, keepdims=True)
    a /= np.maximum(a.std(axis=axes, keepdims=True), 1e-6)
    return a


def smooth_fields(
    rng: np.random.Generator, n: int, size: int, extent_m: float, scales_m: tuple[float, ...],
    persistence: float = 0.6,
) -> np.ndarray:
    """``n`` independent smooth random fields (n, size, size), float32, zero mean and unit std.

    Octaves of white noise with one cell per ``scale`` metres are spline-upsampled onto a grid a quarter
    of the final size, summed with weights ``persistence**k``, then bilinearly upsampled once.
    """
    mid = max(8, -(-size // 4))
    acc = np.zeros((n, mid, mid), np.float32)
    amp = 1.0
    for scale in scales_m:
        cells = int(np.clip(round(extent_m / scale), 2, mid))
        noise = rng.standard_normal((n, cells, cells), dtype=np.float32)
        acc += amp * zoom_to(noise, mid, order=3)
        amp *= persistence
    return normalise(zoom_to(acc, size, order=1))


def top_fraction(field: np.ndarray, frac: float, within: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ``frac`` highest values of ``field`` (among ``within`` pixels)."""
    vals = field.ravel() if within is None else field[within]
    k = int(round(min(max(frac, 0.0), 1.0) * vals.size))
    if k <= 0:
        return np.zeros(field.shape, bool)
    thr = np.partition(vals, vals.size - k)[vals.size - k]
    out = field >= thr
    if within is not None:
        out &= within
    return out
