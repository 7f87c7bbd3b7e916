"""Backbones, local weight loading, MoCo-v3 heads and Siamese masking for SoftCon pretraining.

One job per module; every name is re-exported here, so ``from train.models import …`` is the
stable import path:

* :mod:`~train.models.backbones`: registry (:data:`BACKBONES`, :data:`BACKBONE_ALIASES`,
  :class:`BackboneSpec`) and :func:`build_backbone` (timm ``resnet18``, ``resnet50``,
  ``vit_small_patch14_dinov2``, ``vit_base_patch14_dinov2``, any input channel count, never
  downloaded).
* :mod:`~train.models.weights`: :func:`load_weights` → :class:`LoadReport`, built from
  :mod:`~train.models.checkpoint_io` (safe reading, unwrapping containers and prefixes),
  :mod:`~train.models.layouts` (DINOv2 / timm ViT and torchvision ResNet key layouts,
  :func:`resize_pos_embed`), :mod:`~train.models.first_layer` (first-layer policy ``"random"`` /
  ``"inflate"``, :func:`inflate_first_layer`) and :mod:`~train.models.report`.
* :mod:`~train.models.heads`: :class:`ProjectionHead`, :class:`PredictionHead` as in MoCo v3.
* :mod:`~train.models.encoder`: :func:`build_encoder` → :class:`Encoder` (``.backbone``,
  ``.projector``, optional ``.predictor``).
* :mod:`~train.models.masking`: :func:`random_patch_mask` (``True`` = masked),
  :func:`vit_forward_masked`, :func:`zero_masked_patches`.
"""

from __future__ import annotations

from train.models.backbones import (
    BACKBONE_ALIASES,
    BACKBONES,
    BackboneSpec,
    build_backbone,
    get_backbone_spec,
    list_backbones,
)
from train.models.checkpoint_io import (
    CONTAINER_KEYS,
    SELECT_PREFIXES,
    WRAPPER_PREFIXES,
    read_checkpoint,
    unwrap_state_dict,
)
from train.models.encoder import Encoder, build_encoder
from train.models.first_layer import (
    FIRST_LAYER_POLICIES,
    RGB_AS_S2_BANDS,
    SOFTCON_CHECKPOINT_BANDS,
    FirstLayerPolicy,
    first_layer_keys,
    inflate_first_layer,
    normalize_band_name,
)
from train.models.heads import CPU_HIDDEN, CPU_OUT, MOCO_V3_HIDDEN, MOCO_V3_OUT, PredictionHead, ProjectionHead
from train.models.layouts import resize_pos_embed
from train.models.masking import (
    DEFAULT_CNN_MASK_PATCH,
    DEFAULT_MASK_RATIO,
    random_patch_mask,
    vit_forward_masked,
    zero_masked_patches,
)
from train.models.report import LoadReport, ShapeMismatch, WeightLoadError
from train.models.weights import load_weights

__all__ = [
    "BACKBONES",
    "BACKBONE_ALIASES",
    "CONTAINER_KEYS",
    "CPU_HIDDEN",
    "CPU_OUT",
    "DEFAULT_CNN_MASK_PATCH",
    "DEFAULT_MASK_RATIO",
    "FIRST_LAYER_POLICIES",
    "MOCO_V3_HIDDEN",
    "MOCO_V3_OUT",
    "RGB_AS_S2_BANDS",
    "SELECT_PREFIXES",
    "SOFTCON_CHECKPOINT_BANDS",
    "WRAPPER_PREFIXES",
    "BackboneSpec",
    "Encoder",
    "FirstLayerPolicy",
    "LoadReport",
    "PredictionHead",
    "ProjectionHead",
    "ShapeMismatch",
    "WeightLoadError",
    "build_backbone",
    "build_encoder",
    "first_layer_keys",
    "get_backbone_spec",
    "inflate_first_layer",
    "list_backbones",
    "load_weights",
    "normalize_band_name",
    "random_patch_mask",
    "read_checkpoint",
    "resize_pos_embed",
    "unwrap_state_dict",
    "vit_forward_masked",
    "zero_masked_patches",
]
