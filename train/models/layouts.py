"""Key-layout adapters (official DINOv2 / timm ViT, torchvision ResNet → timm) and ``pos_embed`` resizing."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer

from train.models.report import LoadReport, ShapeMismatch

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def _adapt_vit(
    sd: dict[str, torch.Tensor], model: VisionTransformer, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Official DINOv2 (``facebookresearch/dinov2``) or timm ViT layout → timm ``VisionTransformer``.

    * ``blocks.<chunk>.<i>.*`` (``block_chunks > 0`` training checkpoints) → ``blocks.<i>.*``
      (DINOv2 chunks keep global block indices, so only the chunk level is removed);
    * ``register_tokens`` → ``reg_token``;
    * ``mask_token`` (DINOv2/iBOT masked-token embedding; timm has none) → ignored;
    * ``head.*`` → ignored when the model has no classifier;
    * ``pos_embed`` → resized to the model's grid by :func:`resize_pos_embed` when needed;
    * everything else (``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
      mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``, ``cls_token``) has the same names in both layouts.
    """
    model_sd = model.state_dict()
    official = any(_CHUNKED_BLOCK.match(k) for k in sd) or "mask_token" in sd or "register_tokens" in sd
    report.layout = "dinov2-official" if official else "timm-vit"
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = _CHUNKED_BLOCK.match(key)
        if match:
            new = f"blocks.{match.group(2)}.{match.group(3)}"
            report.adapted_keys[new] = "renamed blocks.<chunk>.<i>.* -> blocks.<i>.* (DINOv2 chunks)"
        elif key == "register_tokens" and "reg_token" in model_sd:
            new = "reg_token"
            report.adapted_keys[new] = "renamed register_tokens -> reg_token"
        elif key == "mask_token" and key not in model_sd:
            report.ignored_keys[key] = "DINOv2 mask token (no counterpart in timm ViT)"
            continue
        elif key.startswith("head.") and key not in model_sd:
            report.ignored_keys[key] = "classifier/projection head (model has num_classes=0)"
            continue
        else:
            new = key
        out[new] = value

    pos = out.get("pos_embed")
    target = model_sd.get("pos_embed")
    if pos is not None and target is not None and pos.shape != target.shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        n_src = pos.shape[1] - prefix
        side = math.isqrt(max(n_src, 0))
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
        if pos.ndim == 3 and pos.shape[-1] == target.shape[-1] and side * side == n_src > 0:
            out["pos_embed"] = resize_pos_embed(pos, grid, num_prefix_tokens=prefix)
            action = f"bicubic resize {side}x{side} -> {grid[0]}x{grid[1]} grid"
            report.adapted_keys["pos_embed"] = action
            report.shape_mismatched_keys["pos_embed"] = ShapeMismatch(
                tuple(pos.shape), tuple(target.shape), action, True
            )
    return out


def _adapt_resnet(
    sd: dict[str, torch.Tensor], model: ResNet, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Torchvision / DINO / SoftCon ResNet layout → timm ``ResNet``.

    timm's ResNet uses torchvision's names (``conv1``, ``bn1``, ``layerK.J.{conv1..3,bn1..3,
    downsample.0,downsample.1}``), so the only change is dropping the classifier ``fc.*``, which a
    ``num_classes=0`` model replaces by ``Identity`` (SoftCon's RN50 files already have none).
    """
    model_keys = set(model.state_dict())
    report.layout = "torchvision-resnet"
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("fc.", "head.")) and key not in model_keys:
            report.ignored_keys[key] = "classifier/projection head (model has num_classes=0)"
            continue
        out[key] = value
    return out


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    *,
    old_grid: tuple[int, int] | None = None,
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Interpolate an absolute position embedding ``(1, P + H*W, D)`` to a new ``H' × W'`` grid.

    The ``P`` prefix entries (CLS) are kept as they are; the grid part is reshaped to an image and
    resampled with ``F.interpolate`` (bicubic, ``align_corners=False``, no antialias: the settings
    DINOv2 uses when it interpolates at run time; DINOv2 additionally adds a 0.1 offset to the scale
    factor, which is not reproduced here).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position tokens; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed.clone()
    dim = grid.shape[-1]
    image = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=tuple(new_grid), mode=mode, align_corners=False, antialias=antialias)
    grid = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
