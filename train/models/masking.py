"""Siamese masking: random patch masks, masked ViT forward, zeroed cells for CNNs.

Mask convention: :func:`random_patch_mask` returns ``True`` = **masked** (hidden from the online
branch). :func:`vit_forward_masked` takes the complement, ``keep_mask = ~mask``.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

#: Default Siamese mask ratio. The SoftCon paper (arXiv:2405.20462) gives no ratio we could confirm: its method figure
#: shows about 2/3 of a 16×16 grid masked, but that is an illustration. 0.5 is the conservative
#: choice: FLIP (Li et al., 2023) found 50 % token dropping kept contrastive accuracy while roughly
#: halving the online branch's compute, and 75 % traded accuracy for speed. Pass ``ratio=`` to
#: change it (e.g. 0.67 to follow the figure).
DEFAULT_MASK_RATIO: float = 0.5
#: Mask cell size in pixels for CNNs: 14 px gives the 16×16 grid of the SoftCon figure at 224 px.
DEFAULT_CNN_MASK_PATCH: int = 14


def random_patch_mask(
    batch: int,
    grid_h: int,
    grid_w: int,
    ratio: float = DEFAULT_MASK_RATIO,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random patch mask, ``True`` = masked, with exactly ``round(ratio * N)`` masked cells per row.

    Every sample masks the same number of cells (so a ViT can drop them and keep a dense batch);
    at least one cell stays visible. Cells are flattened row-major (``index = row * grid_w + col``),
    the order of ViT patch tokens.

    Args:
        batch: Number of samples ``B``.
        grid_h, grid_w: Mask grid (ViT: patch grid; see :meth:`Encoder.mask_grid`).
        ratio: Fraction of cells to mask, ``0 <= ratio < 1`` (default :data:`DEFAULT_MASK_RATIO`;
            the paper's value is UNVERIFIED).
        generator: Optional ``torch.Generator`` for reproducible masks; the mask is drawn on its
            device and then moved to ``device``.
        device: Output device (default: the generator's device, else CPU).

    Returns:
        Bool tensor ``(B, grid_h * grid_w)``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if batch < 0 or grid_h < 1 or grid_w < 1:
        raise ValueError(f"invalid mask shape batch={batch}, grid={grid_h}x{grid_w}")
    n = grid_h * grid_w
    n_masked = min(int(math.floor(ratio * n + 0.5)), n - 1)
    draw_device = generator.device if generator is not None else (device or "cpu")
    noise = torch.rand(batch, n, generator=generator, device=draw_device)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=draw_device)
    if n_masked > 0:
        mask.scatter_(1, noise.argsort(dim=1)[:, :n_masked], True)
    return mask if device is None else mask.to(device)


def vit_forward_masked(
    model: VisionTransformer, x: torch.Tensor, keep_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Timm ViT forward that drops masked patch tokens; returns pooled features ``(B, D)``.

    Follows ``forward_features`` + ``forward_head(pre_logits=True)``: patch embedding, prefix
    tokens (CLS, registers) and positional embedding; then only the prefix tokens and the *kept*
    patch tokens (each with its own positional embedding, order preserved) go through the blocks;
    final norm; pooling as configured in timm (CLS token for DINOv2 models). With
    ``keep_mask=None`` or all ``True`` this equals ``model(x)`` for a ``num_classes=0`` model.

    Args:
        model: timm ``VisionTransformer``.
        x: ``(B, C, H, W)`` input.
        keep_mask: Bool ``(B, N)`` or ``(B, grid_h, grid_w)``, ``True`` = keep; every row must
            keep the same number of patches.
    """
    tokens = model.patch_embed(x)
    n_patches = tokens.shape[1] * tokens.shape[2] if tokens.ndim == 4 else tokens.shape[1]
    tokens = model._pos_embed(tokens)  # (B, prefix + N, D), positional embedding added
    tokens = model.patch_drop(tokens)
    tokens = model.norm_pre(tokens)
    if keep_mask is not None:
        batch, dim = tokens.shape[0], tokens.shape[-1]
        keep = keep_mask.reshape(keep_mask.shape[0], -1).to(device=tokens.device, dtype=torch.bool)
        if keep.shape != (batch, n_patches):
            raise ValueError(f"keep_mask has shape {tuple(keep_mask.shape)}, expected ({batch}, {n_patches})")
        counts = keep.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError("every sample must keep the same number of patches")
        n_prefix = tokens.shape[1] - n_patches
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        kept = patches[keep].reshape(batch, int(counts[0]), dim)  # row-major: token order preserved
        tokens = torch.cat([prefix, kept], dim=1)
    if getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled():
        for blk in model.blocks:
            tokens = checkpoint(blk, tokens, use_reentrant=False)
    else:
        tokens = model.blocks(tokens)
    tokens = model.norm(tokens)
    return model.forward_head(tokens, pre_logits=True)


def zero_masked_patches(
    x: torch.Tensor, mask: torch.Tensor, patch_size: int, fill: float = 0.0
) -> torch.Tensor:
    """Set the pixels of masked cells to ``fill`` (CNN Siamese masking, as drawn in the figure).

    The grid is ``ceil(H / patch_size) × ceil(W / patch_size)``; edge cells may be partial.
    Applied to the normalised network input, so 0 is the normalised value, not raw DN.

    Args:
        x: ``(B, C, H, W)``.
        mask: Bool ``(B, grid_h * grid_w)`` or ``(B, grid_h, grid_w)``, ``True`` = masked.
        patch_size: Cell size in pixels.
        fill: Value written into masked cells.
    """
    batch, _, height, width = x.shape
    gh, gw = math.ceil(height / patch_size), math.ceil(width / patch_size)
    if mask.numel() != batch * gh * gw:
        raise ValueError(f"mask with {mask.numel()} cells does not fit a {batch}x{gh}x{gw} grid")
    cells = mask.reshape(batch, gh, gw).to(device=x.device, dtype=torch.bool)
    pixels = cells.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    pixels = pixels[:, :height, :width].unsqueeze(1)
    return x.masked_fill(pixels, fill)
