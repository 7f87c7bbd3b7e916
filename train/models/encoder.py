"""One SoftCon branch: backbone + MoCo-v3 projector (+ optional predictor), :func:`build_encoder`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from train.models.backbones import build_backbone, get_backbone_spec
from train.models.first_layer import FirstLayerPolicy
from train.models.heads import MOCO_V3_HIDDEN, MOCO_V3_OUT, PredictionHead, ProjectionHead
from train.models.masking import DEFAULT_CNN_MASK_PATCH, vit_forward_masked, zero_masked_patches


class Encoder(nn.Module):
    """Backbone + MoCo-v3 projector (+ optional predictor) for one SoftCon branch.

    Attributes:
        backbone: timm model returning pooled ``(B, feature_dim)`` features.
        projector: :class:`ProjectionHead`.
        predictor: :class:`PredictionHead` or ``None`` (only the online branch needs one; build
            the EMA target with ``pred_hidden=None`` or ignore its predictor).
        family: ``"vit"`` or ``"resnet"``.
        mask_patch_size: Pixel size of a mask cell (ViT: its patch size).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        projector: ProjectionHead,
        *,
        family: str,
        mask_patch_size: int,
        predictor: PredictionHead | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.feature_dim = feature_dim
        self.family = family
        self.mask_patch_size = mask_patch_size

    def mask_grid(self, height: int, width: int) -> tuple[int, int]:
        """Mask grid ``(grid_h, grid_w)`` for an input of ``height × width`` pixels."""
        p = self.mask_patch_size
        if self.family == "vit":
            return height // p, width // p
        return math.ceil(height / p), math.ceil(width / p)

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled backbone features ``(B, feature_dim)``.

        Args:
            x: ``(B, C, H, W)`` input.
            mask: Optional ``(B, grid_h * grid_w)`` bool mask, ``True`` = masked (as returned by
                :func:`random_patch_mask` for :meth:`mask_grid`). ViTs drop the masked tokens;
                CNNs see the masked cells zeroed.
        """
        if mask is None:
            return self.backbone(x)
        if self.family == "vit":
            return vit_forward_masked(self.backbone, x, ~mask.reshape(mask.shape[0], -1))
        return self.backbone(zero_masked_patches(x, mask, self.mask_patch_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projection ``(B, proj_out)`` of :meth:`features`."""
        return self.projector(self.features(x, mask))

    def predict(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predictor output on the projection (online branch)."""
        if self.predictor is None:
            raise RuntimeError("this encoder was built without a predictor (pred_hidden=None)")
        return self.predictor(self(x, mask))


def build_encoder(
    backbone_name: str,
    in_chans: int,
    proj_hidden: int = MOCO_V3_HIDDEN,
    proj_out: int = MOCO_V3_OUT,
    *,
    proj_layers: int | None = None,
    pred_hidden: int | None = None,
    mask_patch_size: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    first_layer: FirstLayerPolicy = "random",
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    band_names: Sequence[str] | None = None,
    **backbone_kwargs: Any,
) -> Encoder:
    """Backbone from :func:`build_backbone` plus MoCo-v3 heads.

    Args:
        backbone_name: Registry name or alias.
        in_chans: Input channels.
        proj_hidden: Projector hidden width (MoCo v3: 4096).
        proj_out: Projector output width (MoCo v3: 256).
        proj_layers: Projector depth; default 3 for ViT, 2 for ResNet (MoCo v3).
        pred_hidden: If given, add a :class:`PredictionHead` ``proj_out → pred_hidden → proj_out``.
        mask_patch_size: Mask cell size; ViT: must equal the patch size (default); CNN default
            :data:`DEFAULT_CNN_MASK_PATCH`.
        img_size, first_layer, weights, band_names, **backbone_kwargs: passed to
            :func:`build_backbone`.
    """
    spec = get_backbone_spec(backbone_name)
    backbone, dim = build_backbone(
        backbone_name,
        in_chans,
        img_size=img_size,
        first_layer=first_layer,
        weights=weights,
        band_names=band_names,
        **backbone_kwargs,
    )
    if spec.family == "vit":
        patch = int(backbone.patch_embed.patch_size[0])
        if mask_patch_size not in (None, patch):
            raise ValueError(f"ViT mask cells must equal the patch size ({patch}), got {mask_patch_size}")
        mask_patch_size = patch
    elif mask_patch_size is None:
        mask_patch_size = DEFAULT_CNN_MASK_PATCH
    layers = proj_layers if proj_layers is not None else (3 if spec.family == "vit" else 2)
    projector = ProjectionHead(dim, proj_hidden, proj_out, layers=layers)
    predictor = PredictionHead(proj_out, pred_hidden) if pred_hidden is not None else None
    return Encoder(
        backbone,
        dim,
        projector,
        family=spec.family,
        mask_patch_size=mask_patch_size,
        predictor=predictor,
    )
