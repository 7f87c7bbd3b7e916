"""End-to-end fine-tuning: the whole backbone plus a linear head, a few epochs.

Recipe (ours; sized for small CPU runs, the same code runs on a GPU):

* a deep copy of the backbone (the caller's model is not modified) → ``nn.Linear`` head
  (truncated-normal init, std 0.01, zero bias; drawn from ``seed``);
* AdamW with two parameter groups: backbone ``lr``, head ``head_lr``; weight decay on weights,
  none on biases and norm parameters; linear warm-up over ``warmup_epochs`` then cosine to 0, per step;
* loss: BCE-with-logits (multi-label) or cross-entropy (single-label);
* input: the task image → ``normalizer`` → optional resize → random dihedral augmentation per
  sample (horizontal / vertical flips and, for square images, transposition; remote-sensing scenes
  have no canonical orientation) when ``augment``;
* data order and augmentations from ``torch.Generator(seed)``; bf16 autocast on CUDA when ``amp``;
* after training, the test split is scored in eval mode with the metrics of the linear probe.

The result records the mean training loss of every epoch (``train_losses``) and of every step.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from train.evaluate.bootstrap import BootstrapConfig, classification_intervals
from train.evaluate.features import prepare_batch, resolve_device
from train.evaluate.probe import classification_metrics

__all__ = ["FinetuneModel", "dihedral_augment", "finetune"]


class FinetuneModel(nn.Module):
    """Backbone + linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def dihedral_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips (and transposition for square images), drawn independently per sample."""
    b = x.shape[0]
    r = torch.rand(b, 3, generator=g).to(x.device)
    x = torch.where((r[:, 0] < 0.5).view(b, 1, 1, 1), x.flip(-1), x)
    x = torch.where((r[:, 1] < 0.5).view(b, 1, 1, 1), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where((r[:, 2] < 0.5).view(b, 1, 1, 1), x.transpose(-1, -2), x)
    return x


def _param_groups(model: FinetuneModel, lr: float, head_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if name.startswith("head.") else "backbone"
        decay = p.ndim >= 2
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in groups.items():
        out.append({"params": params, "lr": head_lr if part == "head" else lr,
                    "weight_decay": weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '-nodecay'}"})
    return out


def _labels_to(y: Any, multilabel: bool, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(y).to(device)
    return y.float() if multilabel else y.long()


def finetune(backbone: nn.Module, train_set: Dataset, test_set: Dataset | None, *, num_classes: int,
             multilabel: bool, feature_dim: int | None = None, normalizer=None, epochs: int = 3,
             lr: float = 1e-4, head_lr: float = 1e-3, weight_decay: float = 0.05, batch_size: int = 32,
             warmup_epochs: float = 0.0, device: str | torch.device = "cpu", seed: int = 0,
             resize_to: int | None = None, augment: bool = True, num_workers: int = 0,
             max_steps_per_epoch: int | None = None, amp: bool = False,
             bootstrap: BootstrapConfig | Mapping[str, Any] | None = None, test_groups: Any = None) -> dict[str, Any]:
    """Fine-tune a copy of ``backbone`` with a linear head on ``train_set``; score ``test_set``.

    Args:
        backbone: module returning pooled ``(B, D)`` features (e.g. an
            :class:`~train.evaluate.features.EvalBackbone`); ``feature_dim`` defaults to its
            ``feature_dim`` attribute.
        train_set, test_set: task data sets (items ``{"image", "label", ...}``); ``test_set=None``
            only trains.
        lr, head_lr: backbone and head learning rates.
        max_steps_per_epoch: cap the steps per epoch (smoke runs).
        bootstrap, test_groups: percentile bootstrap intervals of the test metrics, resampling whole
            groups (:func:`~train.evaluate.bootstrap.classification_intervals`); None = no intervals.

    Returns:
        ``{"metrics", "per_class_ap", "train_losses", "step_losses", "config", "seconds"}``.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    dim = feature_dim if feature_dim is not None else getattr(backbone, "feature_dim", None)
    if dim is None:
        raise ValueError("feature_dim is unknown; pass feature_dim=")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FinetuneModel(copy.deepcopy(backbone), int(dim), num_classes).to(dev)
    if not any(True for p in model.backbone.parameters()):
        raise ValueError("the backbone has no parameters to fine-tune (e.g. the pixel baseline)")
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(_param_groups(model, lr, head_lr, weight_decay))
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) > batch_size,
                        generator=g, num_workers=num_workers)
    steps_per_epoch = len(loader) if max_steps_per_epoch is None else min(len(loader), max_steps_per_epoch)
    total = max(1, epochs * steps_per_epoch)
    warm = round(warmup_epochs * steps_per_epoch)
    aug_g = torch.Generator().manual_seed(seed + 1)
    use_amp = amp and dev.type == "cuda"
    epoch_losses: list[float] = []
    step_losses: list[float] = []
    step = 0
    for _ in range(epochs):
        model.train()
        seen, total_loss = 0, 0.0
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            cosine = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            factor = (step + 1) / warm if step < warm else cosine
            for grp, base in zip(opt.param_groups, base_lrs):
                grp["lr"] = base * factor
            x = prepare_batch(batch["image"], normalizer, resize_to)
            if augment:
                x = dihedral_augment(x, aug_g)
            x = x.to(dev, non_blocking=True)
            y = _labels_to(batch["label"], multilabel, dev)
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
                logits = model(x)
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, y) if multilabel else F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            step_losses.append(float(loss.detach()))
            total_loss += float(loss.detach()) * x.shape[0]
            seen += x.shape[0]
        epoch_losses.append(total_loss / max(1, seen))

    metrics: dict[str, float] = {}
    per_class: list[float | None] = []
    intervals: dict[str, Any] | None = None
    if test_set is not None and len(test_set):  # type: ignore[arg-type]
        model.eval()
        scores, targets = [], []
        with torch.no_grad():
            for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=num_workers):
                x = prepare_batch(batch["image"], normalizer, resize_to).to(dev)
                with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
                    out = model(x)
                scores.append(out.float().cpu())
                targets.append(torch.as_tensor(batch["label"]))
        metrics, per_class = classification_metrics(torch.cat(scores), torch.cat(targets), num_classes)
        cfg = BootstrapConfig.coerce(bootstrap)
        if cfg is not None:
            intervals = classification_intervals(torch.cat(scores), torch.cat(targets), num_classes, threshold=0.0,
                                                 groups=test_groups, config=cfg)
    return {"metrics": metrics, "per_class_ap": per_class, **({"intervals": intervals} if intervals else {}),
            "train_losses": epoch_losses, "step_losses": step_losses,
            "config": {"epochs": epochs, "lr": lr, "head_lr": head_lr, "weight_decay": weight_decay,
                       "batch_size": batch_size, "warmup_epochs": warmup_epochs, "seed": seed,
                       "augment": "dihedral" if augment else None, "resize_to": resize_to,
                       "steps": step, "n_train": len(train_set),  # type: ignore[arg-type]
                       "n_test": len(test_set) if test_set is not None else 0},  # type: ignore[arg-type]
            "seconds": round(time.perf_counter() - t0, 3)}

