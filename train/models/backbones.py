"""Backbone registry and construction: timm ResNet-18/50 and DINOv2 ViT-S/14, ViT-B/14 for any
input channel count (13 = S2 L1C, 12 = S2 L2A, 2 = S1 GRD). Models are always created with
``pretrained=False``; weights come only from local files through :func:`~train.models.weights.load_weights`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import timm
from torch import nn

from train.models.first_layer import FirstLayerPolicy, _check_policy
from train.models.weights import load_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """Registry entry for one backbone.

    Attributes:
        timm_name: Architecture name passed to :func:`timm.create_model`.
        family: ``"vit"`` or ``"resnet"``.
        feature_dim: Dimension of the pooled feature (ViT: final-norm CLS token; ResNet: GAP).
        patch_size: ViT patch size, or the CNN's output stride.
        default_img_size: Image size the ViT position grid is built for when none is given.
        init_source: Where SoftCon's continual pretraining starts from (Wang et al., 2024,
            arXiv:2405.20462).
    """

    timm_name: str
    family: Literal["vit", "resnet"]
    feature_dim: int
    patch_size: int
    default_img_size: int = 224
    init_source: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", "resnet", 512, 32, init_source="torchvision layout"),
    "resnet50": BackboneSpec("resnet50", "resnet", 2048, 32, init_source="DINO ResNet-50"),
    "vit_small_patch14_dinov2": BackboneSpec(
        "vit_small_patch14_dinov2", "vit", 384, 14, init_source="DINOv2 ViT-S/14 (no registers)"
    ),
    "vit_base_patch14_dinov2": BackboneSpec(
        "vit_base_patch14_dinov2", "vit", 768, 14, init_source="DINOv2 ViT-B/14 (no registers)"
    ),
}
#: Short names used by the SoftCon release (``B13_rn50_softcon.pth``, ``B13_vits14_softcon.pth``).
BACKBONE_ALIASES: dict[str, str] = {
    "rn18": "resnet18",
    "rn50": "resnet50",
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
}


def list_backbones() -> list[str]:
    """Registered backbone names (aliases excluded)."""
    return sorted(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    """Return the :class:`BackboneSpec` for ``name`` or an alias of it.

    Raises:
        KeyError: ``name`` is not registered.
    """
    key = BACKBONE_ALIASES.get(name, name)
    if key not in BACKBONES:
        known = ", ".join(list_backbones() + sorted(BACKBONE_ALIASES))
        raise KeyError(f"unknown backbone {name!r}; known: {known}")
    return BACKBONES[key]


def build_backbone(
    name: str,
    in_chans: int,
    img_size: int | tuple[int, int] | None = None,
    first_layer: FirstLayerPolicy = "random",
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    band_names: Sequence[str] | None = None,
    *,
    source_band_names: Sequence[str] | None = None,
    checkpoint_key: str | None = None,
    strict: bool = False,
    dynamic_img_size: bool = True,
    **timm_kwargs: Any,
) -> tuple[nn.Module, int]:
    """Create a registered timm backbone with ``in_chans`` inputs and no classifier.

    Args:
        name: Registry name or alias (see :data:`BACKBONES`, :data:`BACKBONE_ALIASES`).
        in_chans: Number of input channels (13 S2 L1C, 12 S2 L2A, 2 S1, 3 RGB, ...).
        img_size: ViT image size (default 224: a 16×16 grid at patch 14, as in SoftCon). Ignored
            by CNNs, which accept any size.
        first_layer: Policy for a checkpoint whose first layer has a different channel count
            (:mod:`train.models.first_layer`).
        weights: Optional local checkpoint path (or an in-memory state dict) for
            :func:`load_weights`. Remote URLs are refused.
        band_names: Names of the ``in_chans`` input bands, used by ``first_layer="inflate"``.
        source_band_names: Band names of the checkpoint's first layer, if not RGB and not a
            SoftCon ``B13_``/``B2_`` file.
        checkpoint_key: Container key to select in the checkpoint (e.g. ``"student"``).
        strict: Raise :class:`WeightLoadError` if the load is not clean.
        dynamic_img_size: ViT only: interpolate ``pos_embed`` on the fly for other input sizes.
        **timm_kwargs: Extra arguments for :func:`timm.create_model` (e.g. ``drop_path_rate``).

    Returns:
        ``(model, feature_dim)``; ``model(x)`` returns pooled ``(B, feature_dim)`` features. When
        ``weights`` is given the :class:`LoadReport` is attached as ``model.load_report``.
    """
    spec = get_backbone_spec(name)
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    _check_policy(first_layer)
    if band_names is not None and len(band_names) != in_chans:
        raise ValueError(f"{len(band_names)} band_names given for in_chans={in_chans}")
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True would download from the hub; pass weights=<local file>")
    kwargs: dict[str, Any] = dict(pretrained=False, num_classes=0, in_chans=in_chans, **timm_kwargs)
    if spec.family == "vit":
        kwargs["img_size"] = spec.default_img_size if img_size is None else img_size
        kwargs["dynamic_img_size"] = dynamic_img_size
    model = timm.create_model(spec.timm_name, **kwargs)
    feature_dim = int(model.num_features)
    if feature_dim != spec.feature_dim:  # pragma: no cover - guards against timm changes
        raise RuntimeError(f"{name}: timm reports {feature_dim} features, registry {spec.feature_dim}")
    if weights is not None:
        report = load_weights(
            model,
            weights,
            first_layer=first_layer,
            band_names=band_names,
            source_band_names=source_band_names,
            checkpoint_key=checkpoint_key,
            strict=strict,
        )
        model.load_report = report
        logger.info("%s", report)
        if not report.ok:
            logger.warning("weights for %s did not load cleanly:\n%s", name, report)
    return model, feature_dim


# --------------------------------------------------------------------------------------------
# Load report
