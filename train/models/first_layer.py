"""First-layer policy for checkpoints whose input layer has another channel count.

The policy (``first_layer=``) applies only when the checkpoint's first layer has a different input
channel count than the model (same count: plain copy under either policy):

* ``"random"`` (default; the choice SoftCon is reported to have made when it continues RGB
  weights on multispectral input: Wang et al., 2024, "Multi-Label Guided Soft Contrastive Learning
  for Efficient Earth Observation Pretraining", arXiv:2405.20462, code github.com/zhu-xlab/softcon;
  not checked line by line against that code): the whole first layer (``conv1.weight``, or
  ``patch_embed.proj.weight`` *and* ``.bias``) keeps the fresh timm initialisation; everything
  else is copied.
* ``"inflate"``: a new kernel is built from the source kernel ``W`` (``O × Cs × k × k``). Target
  channels whose band name matches a source band copy that band's kernel; all other channels get
  the mean kernel ``mean_c W[:, c]``. The result is multiplied by ``Cs / C``. An RGB source
  (``Cs = 3``) is read as ``(B4, B3, B2)``, so with ``band_names`` the S2 red/green/blue bands
  receive the R/G/B kernels; without ``band_names`` (or when nothing matches, e.g. S1 VV/VH) every
  channel gets the mean kernel ("mean-tile"). The ``Cs / C`` factor keeps the summed kernel, hence
  the layer's response to a spectrally flat input, equal to the source layer's. The bias is copied
  unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.bands import S1_GRD_BANDS, S2_L1C_BANDS
from train.models.report import LoadReport

FirstLayerPolicy = Literal["random", "inflate"]
FIRST_LAYER_POLICIES: tuple[str, ...] = ("random", "inflate")

#: How an RGB first layer is read when band names are known: R→B4, G→B3, B→B2 (Sentinel-2).
RGB_AS_S2_BANDS: tuple[str, ...] = ("B4", "B3", "B2")

#: Source band orders assumed for the released SoftCon checkpoints, keyed by file-name prefix
#: (checkpoints released on Hugging Face, ``wangyi111/softcon``: ``B13_*`` = S2 L1C 13 bands,
#: ``B2_*`` = S1 GRD VV/VH).
SOFTCON_CHECKPOINT_BANDS: dict[str, tuple[str, ...]] = {"B13_": S2_L1C_BANDS, "B2_": S1_GRD_BANDS}


def _check_policy(policy: str) -> None:
    if policy not in FIRST_LAYER_POLICIES:
        raise ValueError(f"first_layer must be one of {FIRST_LAYER_POLICIES}, got {policy!r}")


def normalize_band_name(name: str) -> str:
    """Canonical band spelling: ``"b04"`` → ``"B4"``, ``"B8a"`` → ``"B8A"``, ``"vv"`` → ``"VV"``."""
    text = name.strip().upper()
    match = re.fullmatch(r"B0*(\d+)(A?)", text)
    return f"B{match.group(1)}{match.group(2)}" if match else text


def first_layer_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of the input layer (weight first, then bias if any)."""
    if isinstance(model, VisionTransformer):
        keys = ("patch_embed.proj.weight", "patch_embed.proj.bias")
    elif isinstance(model, ResNet):
        keys = ("conv1.weight", "conv1.bias")
    else:
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            return ()
        keys = (f"{first}.weight", f"{first}.bias")
    present = set(model.state_dict())
    return tuple(k for k in keys if k in present)


def inflate_first_layer(
    weight: torch.Tensor,
    in_chans: int,
    *,
    band_names: Sequence[str] | None = None,
    source_band_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, str]:
    """Build an ``O × in_chans × k × k`` kernel from an ``O × Cs × k × k`` one (module docstring).

    Returns:
        The new kernel (same dtype as ``weight``) and a one-line description for the report.
    """
    out_ch, src_ch = weight.shape[:2]
    w = weight.float()
    mean = w.mean(dim=1, keepdim=True)
    new = mean.expand(out_ch, in_chans, *w.shape[2:]).clone()
    if source_band_names is None and src_ch == 3:
        source_band_names = RGB_AS_S2_BANDS
    matched: list[str] = []
    if band_names is not None and source_band_names is not None:
        if len(band_names) != in_chans:
            raise ValueError(f"{len(band_names)} band_names for {in_chans} channels")
        if len(source_band_names) != src_ch:
            raise ValueError(f"{len(source_band_names)} source_band_names for {src_ch} channels")
        index = {normalize_band_name(b): i for i, b in enumerate(source_band_names)}
        for j, band in enumerate(band_names):
            i = index.get(normalize_band_name(band))
            if i is not None:
                new[:, j] = w[:, i]
                matched.append(f"{band}<-{source_band_names[i]}")
    scale = src_ch / in_chans
    new = new * scale
    if matched:
        how = f"inflate: copied {', '.join(matched)}; other channels mean kernel; x{src_ch}/{in_chans}"
    else:
        how = f"inflate: mean kernel tiled over {in_chans} channels; x{src_ch}/{in_chans}"
    return new.to(weight.dtype), how


def _source_bands_for(source: str, report: LoadReport) -> tuple[str, ...] | None:
    name = Path(source).name
    for prefix, bands in SOFTCON_CHECKPOINT_BANDS.items():
        if name.startswith(prefix):
            report.notes.append(f"assumed source bands {','.join(bands)} from file name prefix {prefix!r}")
            return bands
    return None
