"""Augmentations for multispectral (S2) and SAR (S1) tensors, with explicit, reproducible randomness.

Every transform is a small class called as ``t(x, g)`` with ``x`` a float tensor ``(C, H, W)`` and
``g`` a :class:`torch.Generator`; all random draws come from ``g`` (never from the global RNG), so a
run, a resumed run and any number of DataLoader workers see exactly the same augmentations for the
same generator state (:class:`train.data.ArchiveDataset` seeds one generator per item from
``(seed, epoch, index)``). A transform always consumes the same number of draws whatever its
random outcome (e.g. a flip that is not applied still draws nothing more than one that is), which
keeps the stream aligned between views and easy to reason about.

The multispectral recipe follows the SSL4EO-S12 pretraining pipeline (github.com/zhu-xlab/SSL4EO-S12,
MoCo v3 scripts ``pretrain_moco_v3_s2c.py``), which works on the mean±2σ-normalised bands (values in [0, 1], see
:class:`train.data.Normalizer`):

* :class:`RandomResizedCrop` to ``size``, scale (0.2, 1.0), ratio (3/4, 4/3), bilinear, no antialias;
* :class:`RandomBrightnessContrast`, p = 0.8: brightness × U[0.6, 1.4], then contrast × U[0.6, 1.4]
  around the per-channel spatial mean, over all bands. The original casts to uint8 (which wraps
  around on overflow); we clamp to [0, 1] instead (``clamp=None`` disables it);
* :class:`RandomGrayscale`, p = 0.2: the per-pixel mean over channels, replicated to C channels;
* :class:`RandomGaussianBlur`, σ ~ U[0.1, 2]: p = 1.0 for view 1 and 0.1 for view 2 (MoCo v3);
  separable kernel of radius ⌈3σ⌉, reflect padding;
* :class:`RandomHorizontalFlip` (p = 0.5). SSL4EO-S12 uses no vertical flip; :class:`RandomVerticalFlip`
  is available (``vflip_p`` in the presets, default 0).

SAR (:func:`sar_view_transforms`): the same geometric transforms, plus :class:`SarIntensityJitter`
instead of the optical photometric ones (brightness/contrast/grayscale/blur are not meaningful on
speckled backscatter). Its jitter is one random **offset δ in dB**, added identically to VV and VH;
that is the same as one multiplicative gain ``10^(δ/10)`` on the linear backscatter of both
polarisations. It therefore mimics calibration / incidence-angle / moisture level changes, keeps the
cross-polarisation ratio VV − VH (dB) unchanged and never adds noise to the speckle statistics
("speckle-safe"). The data set normalises S1 per band before augmentation, so the preset converts δ
to normalised units per channel with the normaliser's scale (1/(4σ_c) for SoftCon's scaling): the
result equals shifting the dB values by δ before normalising, up to the [0, 1] clip. The range
(±2 dB, p = 0.8) is our choice; whether SoftCon used any SAR-specific augmentation is UNVERIFIED.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

__all__ = [
    "Compose",
    "RandomApply",
    "RandomResizedCrop",
    "CenterCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomBrightnessContrast",
    "RandomGrayscale",
    "RandomGaussianBlur",
    "SarIntensityJitter",
    "ms_view_transforms",
    "sar_view_transforms",
    "uniform",
]


def uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """One float from U[lo, hi) drawn from ``g``."""
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """One integer from [lo, hi] (inclusive) drawn from ``g``."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class Compose:
    """Apply transforms in order, passing the same generator along."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, g)
        return x

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class RandomApply:
    """Apply ``transform`` with probability ``p`` (one draw for the coin)."""

    def __init__(self, transform: Transform, p: float):
        self.transform, self.p = transform, float(p)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.transform(x, g) if uniform(g) < self.p else x

    def __repr__(self) -> str:
        return f"RandomApply({self.transform!r}, p={self.p})"


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


class RandomResizedCrop:
    """Crop a random area/aspect window and resize it to ``size`` (bilinear, antialias off).

    The window is drawn as in torchvision: up to 10 tries of area = U(scale)·H·W and
    log-aspect = U(log ratio); the first window that fits is used, otherwise a centre crop with the
    aspect clamped to ``ratio``. Each try consumes 4 draws (area, aspect, top, left).
    """

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def get_params(self, height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop window."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * uniform(g, *self.scale)
            aspect = math.exp(uniform(g, log_lo, log_hi))
            u_top, u_left = uniform(g), uniform(g)
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u_top * (height - h + 1)), height - h)
                left = min(int(u_left * (width - w + 1)), width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        top, left, h, w = self.get_params(x.shape[-2], x.shape[-1], g)
        return _resize(x[..., top:top + h, left:left + w], self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class CenterCrop:
    """Deterministic centre crop (for evaluation); draws nothing."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        h, w = self.size
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        if top < 0 or left < 0:
            raise ValueError(f"CenterCrop {self.size} larger than the image {tuple(x.shape[-2:])}")
        return x[..., top:top + h, left:left + w]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomHorizontalFlip:
    """Mirror left↔right (last axis) with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x.flip(-1) if uniform(g) < self.p else x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip:
    """Mirror top↔bottom (second-last axis) with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x.flip(-2) if uniform(g) < self.p else x

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(p={self.p})"


class RandomBrightnessContrast:
    """With probability ``p``: ``x·b``, then ``(x − mean_c)·c + mean_c`` (b, c ~ U[factors]) on all bands.

    ``mean_c`` is the per-channel spatial mean of the brightness-scaled image. Three draws (coin, b,
    c) are always consumed, whatever the coin says.
    """

    def __init__(self, p: float = 0.8, brightness: tuple[float, float] = (0.6, 1.4),
                 contrast: tuple[float, float] = (0.6, 1.4), clamp: tuple[float, float] | None = (0.0, 1.0)):
        self.p, self.brightness, self.contrast, self.clamp = float(p), tuple(brightness), tuple(contrast), clamp

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coin = uniform(g)
        b = uniform(g, *self.brightness)
        c = uniform(g, *self.contrast)
        if coin >= self.p:
            return x
        # (x·b − m)·c + m with m = mean(x·b) = b·mean(x), fused: x·(b·c) + mean(x)·b·(1 − c)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        y = x.mul(b * c).add_(mean.mul_(b * (1.0 - c)))
        return y.clamp_(*self.clamp) if self.clamp is not None else y

    def __repr__(self) -> str:
        return (f"RandomBrightnessContrast(p={self.p}, brightness={self.brightness}, "
                f"contrast={self.contrast}, clamp={self.clamp})")


class RandomGrayscale:
    """With probability ``p``: replace every channel by the per-pixel mean over channels ("band-mean gray")."""

    def __init__(self, p: float = 0.2):
        self.p = float(p)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if uniform(g) >= self.p:
            return x
        return x.mean(dim=-3, keepdim=True).expand_as(x).clone()

    def __repr__(self) -> str:
        return f"RandomGrayscale(p={self.p})"


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ⌈3σ⌉ (at least 1)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _correlate_reflect(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """``y[i] = sum_t k[t] x[reflect(i + t - r)]`` along ``dim`` (-1 or -2) of a (C, H, W) tensor.

    A weighted sum of ``2r + 1`` shifted slices of the reflect-padded input: several times faster on
    the CPU than a grouped ``conv2d`` with a 1-D kernel, for the same result.
    """
    r = (k.numel() - 1) // 2
    padded = F.pad(x, (r, r) if dim == -1 else (0, 0, r, r), mode="reflect")
    n = x.shape[dim]
    out = padded.narrow(dim, 0, n) * float(k[0])
    for t in range(1, 2 * r + 1):
        out.add_(padded.narrow(dim, t, n), alpha=float(k[t]))
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) tensor, each channel alone, reflect padding."""
    k = gaussian_kernel1d(sigma, x.dtype)
    r = (k.numel() - 1) // 2
    H, W = x.shape[-2:]
    if r >= min(H, W):  # reflect padding needs the pad smaller than the side
        r = min(H, W) - 1
        k = k[(k.numel() - 1) // 2 - r:(k.numel() - 1) // 2 + r + 1]
        k = k / k.sum()
    return _correlate_reflect(_correlate_reflect(x, k, -1), k, -2)


class RandomGaussianBlur:
    """With probability ``p``: Gaussian blur with σ ~ U[sigma] (two draws, always consumed)."""

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)):
        self.p, self.sigma = float(p), tuple(sigma)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coin = uniform(g)
        s = uniform(g, *self.sigma)
        return gaussian_blur(x, s) if coin < self.p else x

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p}, sigma={self.sigma})"


class SarIntensityJitter:
    """With probability ``p``: add one offset δ ~ U[offset_db] (dB) to every channel (VV and VH alike).

    An offset δ in dB is a gain ``10^(δ/10)`` on linear backscatter, the same for both
    polarisations, so VV − VH (dB) is preserved and speckle statistics are untouched.
    ``db_scale`` converts dB into the units of ``x`` per channel: ``None`` when ``x`` is in dB, the
    normaliser's :meth:`~train.data.Normalizer.scale` (1/(4σ_c) for SoftCon scaling) when ``x`` is
    normalised. ``clamp`` re-applies the normaliser's clip afterwards (``None``: no clip).
    """

    def __init__(self, p: float = 0.8, offset_db: tuple[float, float] = (-2.0, 2.0),
                 db_scale: Sequence[float] | torch.Tensor | None = None,
                 clamp: tuple[float, float] | None = None):
        self.p, self.offset_db, self.clamp = float(p), tuple(offset_db), clamp
        self.db_scale = None if db_scale is None else torch.as_tensor(db_scale, dtype=torch.float32).reshape(-1)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coin = uniform(g)
        delta = uniform(g, *self.offset_db)
        if coin >= self.p:
            return x
        if self.db_scale is None:
            x = x + delta
        else:
            if self.db_scale.numel() != x.shape[-3]:
                raise ValueError(f"db_scale has {self.db_scale.numel()} channels, image has {x.shape[-3]}")
            x = x + (delta * self.db_scale.to(x.dtype)).view(-1, 1, 1)
        return x.clamp(*self.clamp) if self.clamp is not None else x

    def __repr__(self) -> str:
        return (f"SarIntensityJitter(p={self.p}, offset_db={self.offset_db}, "
                f"db_scale={None if self.db_scale is None else self.db_scale.tolist()}, clamp={self.clamp})")


def ms_view_transforms(size: int = 224, view: int = 1, *, scale: tuple[float, float] = (0.2, 1.0),
                       blur_p: float | None = None, gray_p: float = 0.2, jitter_p: float = 0.8,
                       hflip_p: float = 0.5, vflip_p: float = 0.0) -> Compose:
    """SSL4EO-S12 / MoCo v3 multispectral view (Chen et al. 2021, arXiv:2104.02057).

    Blur p = 1.0 (view 1) or 0.1 (view 2).

    Input: normalised bands in [0, 1] (``C`` any, e.g. 13 for L1C). Order as in the original:
    crop, brightness/contrast, grayscale, blur, flips.
    """
    if view not in (1, 2):
        raise ValueError("view must be 1 or 2")
    if blur_p is None:
        blur_p = 1.0 if view == 1 else 0.1
    return Compose([
        RandomResizedCrop(size, scale=scale),
        RandomBrightnessContrast(p=jitter_p),
        RandomGrayscale(p=gray_p),
        RandomGaussianBlur(p=blur_p),
        RandomHorizontalFlip(hflip_p),
        RandomVerticalFlip(vflip_p),
    ])


def sar_view_transforms(size: int = 224, *, normalizer=None, scale: tuple[float, float] = (0.2, 1.0),
                        jitter_p: float = 0.8, offset_db: tuple[float, float] = (-2.0, 2.0),
                        hflip_p: float = 0.5, vflip_p: float = 0.0) -> Compose:
    """S1 view: crop, flips and the dB intensity jitter (VV/VH alike).

    ``normalizer``: the :class:`~train.data.Normalizer` the data set applies before the transforms
    (default: published S1 VV/VH statistics, SoftCon scaling); pass ``False`` when the input is raw dB.
    """
    if normalizer is None:
        from train.data import Normalizer

        normalizer = Normalizer.published("s1_grd")
    if normalizer is False:
        db_scale, clamp = None, None
    else:
        db_scale = normalizer.scale()
        clamp = (0.0, 1.0) if normalizer.mode == "softcon" else None
    return Compose([
        RandomResizedCrop(size, scale=scale),
        SarIntensityJitter(p=jitter_p, offset_db=offset_db, db_scale=db_scale, clamp=clamp),
        RandomHorizontalFlip(hflip_p),
        RandomVerticalFlip(vflip_p),
    ])
