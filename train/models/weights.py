"""Local weight loading into timm backbones: :func:`load_weights` → :class:`LoadReport`.

Safetensors or ``torch.load(..., weights_only=True)``; unwraps checkpoint containers and prefixes;
adapts the official DINOv2 ViT layout, the torchvision / DINO ResNet layout and the released
SoftCon ``B13_*`` / ``B2_*`` backbone-only state dicts to timm; resizes ``pos_embed``; applies a
first-layer policy (:mod:`train.models.first_layer`) when the input channel count differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from train.models.checkpoint_io import _strip_prefixes, read_checkpoint, unwrap_state_dict
from train.models.first_layer import (
    FirstLayerPolicy,
    _check_policy,
    _source_bands_for,
    first_layer_keys,
    inflate_first_layer,
)
from train.models.layouts import _adapt_resnet, _adapt_vit
from train.models.report import LoadReport, ShapeMismatch, WeightLoadError


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str] | Mapping[str, Any],
    *,
    first_layer: FirstLayerPolicy = "random",
    band_names: Sequence[str] | None = None,
    source_band_names: Sequence[str] | None = None,
    checkpoint_key: str | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load a local checkpoint into a timm backbone, adapting key layouts; returns a report.

    Steps: read (:func:`read_checkpoint`) → unwrap containers (:func:`unwrap_state_dict`) → strip
    ``module.``/``_orig_mod.`` and select ``backbone.``/``base_encoder.``/``encoder.`` sub-dicts →
    layout adapter (DINOv2/timm ViT or torchvision ResNet) → shape checks, ``pos_embed``
    interpolation and the first-layer policy → ``model.load_state_dict(strict=False)``.

    Args:
        model: A timm ``VisionTransformer`` or ``ResNet`` (other modules get name-for-name loading).
        path: Local ``.safetensors`` / ``.pth`` / ``.pt`` file, or an in-memory state dict.
        first_layer: ``"random"`` or ``"inflate"``; used only when the checkpoint's first layer
            has a different input channel count.
        band_names: Names of the model's input bands (for ``"inflate"``).
        source_band_names: Names of the checkpoint's input bands. Defaults: RGB = ``(B4, B3, B2)``;
            ``B13_*`` files = S2 L1C order; ``B2_*`` files = ``(VV, VH)``.
        checkpoint_key: Container to select (e.g. ``"student"``) instead of the default order.
        strict: Raise :class:`WeightLoadError` (message = the report) unless ``report.ok``.
            Channel mismatches handled by the first-layer policy do not count as failures.
    """
    _check_policy(first_layer)
    if isinstance(path, Mapping):
        report = LoadReport()
        raw: Any = path
    else:
        report = LoadReport(source=os.fspath(path))
        raw = read_checkpoint(path)
    sd = unwrap_state_dict(raw, checkpoint_key, report.container)
    model_sd = model.state_dict()
    sd = _strip_prefixes(sd, set(model_sd), report)

    if isinstance(model, VisionTransformer):
        sd = _adapt_vit(sd, model, report)
    elif isinstance(model, ResNet):
        sd = _adapt_resnet(sd, model, report)
    else:
        report.layout = "as-is"

    first_keys = first_layer_keys(model)
    weight_key = first_keys[0] if first_keys else None
    bias_key = first_keys[1] if len(first_keys) > 1 else None
    policy_skipped: set[str] = set()
    to_load: dict[str, torch.Tensor] = {}

    for key, value in sd.items():
        if key not in model_sd:
            report.unexpected_keys.append(key)
            continue
        target = model_sd[key]
        if value.shape == target.shape:
            to_load[key] = value
            continue
        src_shape, dst_shape = tuple(value.shape), tuple(target.shape)
        channel_mismatch = (
            key == weight_key
            and value.ndim == target.ndim == 4
            and src_shape[0] == dst_shape[0]
            and src_shape[2:] == dst_shape[2:]
        )
        if not channel_mismatch:
            report.shape_mismatched_keys[key] = ShapeMismatch(
                src_shape, dst_shape, "skipped (model keeps its init)", False
            )
            continue
        if first_layer == "random":
            policy_skipped.add(key)
            report.shape_mismatched_keys[key] = ShapeMismatch(
                src_shape, dst_shape, "first layer kept random init (policy 'random')", True
            )
            continue
        src_bands = source_band_names
        if src_bands is None and src_shape[1] != 3:
            src_bands = _source_bands_for(report.source, report)
        new, how = inflate_first_layer(
            value, dst_shape[1], band_names=band_names, source_band_names=src_bands
        )
        to_load[key] = new
        report.adapted_keys[key] = how
        report.shape_mismatched_keys[key] = ShapeMismatch(src_shape, dst_shape, how, True)

    if bias_key is not None and weight_key in policy_skipped and bias_key in to_load:
        del to_load[bias_key]
        policy_skipped.add(bias_key)
        report.ignored_keys[bias_key] = "first-layer bias kept random init (policy 'random')"

    result = model.load_state_dict(to_load, strict=False)
    report.loaded_keys = sorted(to_load)
    for key in result.missing_keys:
        if key in policy_skipped or key in report.shape_mismatched_keys:
            continue
        if key.endswith("num_batches_tracked"):
            report.ignored_keys.setdefault(key, "BN step counter absent from checkpoint (left at 0)")
            continue
        report.missing_keys.append(key)
    # load_state_dict(strict=False) cannot report unexpected keys we filtered out already.
    if strict and not report.ok:
        raise WeightLoadError(f"strict load failed:\n{report}")
    return report
