"""The networks of a pretraining run: per modality an online encoder and its EMA target.

* :class:`Branch`: online encoder (backbone → projector → predictor) and an EMA copy of backbone
  and projector (MoCo v3, Chen, Xie & He 2021, arXiv:2104.02057; BYOL, Grill et al. 2020,
  arXiv:2006.07733);
* :class:`PretrainModel`: one branch for same-modality views, two for cross-modal views; its
  ``forward`` returns everything a loss may need (online projections ``z``, predictions ``q`` on
  the Siamese-masked views, EMA-target keys ``k`` on the full views);
* :func:`siamese_mask`: the seeded patch mask of the online input (SoftCon's Siamese masking,
  Wang et al. 2024, arXiv:2405.20462).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from train.distributed import unwrap
from train.models import build_encoder, random_patch_mask
from train.pretrain_config import PretrainConfig

__all__ = ["Branch", "PretrainModel", "siamese_mask"]


class Branch(nn.Module):
    """One modality's online encoder (with predictor) and its EMA target (backbone + projector)."""

    def __init__(self, backbone: str, in_chans: int, cfg: PretrainConfig, band_names: list[str]):
        super().__init__()
        self.online = build_encoder(backbone, in_chans, cfg.proj_hidden, cfg.proj_out, pred_hidden=cfg.pred_hidden,
                                    img_size=cfg.crop_size if "vit" in backbone else None,
                                    first_layer=cfg.first_layer, weights=cfg.weights, band_names=band_names)
        if cfg.stop_grad_patch_embed and hasattr(self.online.backbone, "patch_embed"):
            for p in self.online.backbone.patch_embed.parameters():
                p.requires_grad_(False)
        self.target = copy.deepcopy(self.online)
        self.target.predictor = None
        for p in self.target.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update_target(self, m: float) -> None:
        """EMA of the online weights; the target's BN statistics come from its own forwards (MoCo v3)."""
        online = dict(self.online.named_parameters())
        for name, p in self.target.named_parameters():
            p.mul_(m).add_(online[name].detach(), alpha=1 - m)


def siamese_mask(branch_online: nn.Module, x: torch.Tensor, ratio: float, seed: int) -> torch.Tensor | None:
    """The Siamese patch mask of the online input ``x``: a function of ``seed`` only, or None at ratio 0.

    Args:
        branch_online: the online encoder (it gives the mask grid of an input size).
        x: the input batch ``[B, C, H, W]``.
        ratio: the fraction of masked cells.
        seed: the mask's seed (the step's ``mask_seed`` plus the view index).

    Returns:
        A boolean ``[B, gh * gw]`` mask (True = masked), or None when ``ratio`` is 0.
    """
    if ratio <= 0:
        return None
    gh, gw = unwrap(branch_online).mask_grid(x.shape[-2], x.shape[-1])
    g = torch.Generator().manual_seed(seed)
    return random_patch_mask(x.shape[0], gh, gw, ratio, generator=g, device=x.device)


class PretrainModel(nn.Module):
    """The branches of a run: one (shared) for same-modality views, two for cross-modal views.

    ``forward`` computes everything a loss may need, so that DDP sees one forward per step.
    """

    def __init__(self, branches: list[Branch], mask_ratio: float):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.mask_ratio = mask_ratio

    def branch(self, view: int) -> Branch:
        """The branch of ``view`` (0 or 1): the shared one, or one per modality in cross-modal mode."""
        return self.branches[min(view, len(self.branches) - 1)]

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, mask_seed: int):
        """Online projections ``z``, predictions ``q`` (Siamese-masked input) and EMA targets ``k``."""
        z, q, k = [], [], []
        for view, x in enumerate((v1, v2)):
            br = self.branch(view)
            feats = br.online.features(x, siamese_mask(br.online, x, self.mask_ratio, mask_seed + view))
            zz = br.online.projector(feats)
            z.append(zz)
            q.append(br.online.predictor(zz))
            with torch.no_grad():
                k.append(br.target(x))
        return (z[0], z[1]), (q[0], q[1]), (k[0], k[1])
