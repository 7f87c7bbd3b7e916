"""Pretraining loop: SoftCon (and the baselines) on the curated archive, MoCo-v3 style.

One step, for a batch of two views ``v1``, ``v2`` with label vectors ``y``:

* online branch (trainable): backbone → projector ``z`` → predictor ``q``, on a **Siamese-masked**
  input (ViT: masked patch tokens dropped; CNN: masked cells zeroed; ``mask_ratio``);
* target branch: an EMA copy of backbone + projector (no gradient) on the full views → ``k``;
* symmetric loss ``L(q1, k2, y) + L(q2, k1, y)`` for the MoCo-v3-shaped losses (InfoNCE, SoftCon,
  MulSupCon, MoCo v3, BYOL); in-batch losses over the online projections of both views for
  NT-Xent, SupCon, MACL and triplet; MoCo v2 uses the online projection against its queue;
* AdamW (or SGD), linear warm-up then cosine learning rate per step, EMA momentum rising from
  ``momentum`` to ``momentum_final`` on a half cosine, gradient accumulation, bf16 autocast on CUDA.

With ``view_mode: cross_modal`` each modality has its own encoder (an S2 and an S1 branch, each with
its EMA target) and the loss contrasts the S2 predictions with the S1 targets and vice versa.

Runs under ``torchrun`` (DDP, NCCL on GPUs, Gloo on CPU): the losses gather embeddings and labels
across ranks. Every epoch a checkpoint (``checkpoints/epoch-XXXX.safetensors``: models, optimiser
state, loss buffers, RNG states, step counters) is written atomically; ``--resume`` continues from
the latest one and, on the CPU, reproduces the losses of an uninterrupted run exactly (data order,
augmentations and masks are functions of (seed, epoch, step), never of hidden RNG state).
Logs: ``metrics.csv``, TensorBoard events under ``tensorboard/``, a progress bar with the loss and
samples per second. The final online backbone is exported as ``backbone.safetensors``, its
BatchNorm statistics first recomputed on unmasked training batches (``bn_recalibration_batches``).

Choices that are ours (the SoftCon paper's values are UNVERIFIED): mask ratio 0.5, λ = 1, the
MoCo-v3 recipe of the SSL4EO-S12 code for optimiser, temperature and momentum (softcon.md §3.6).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import BadInput
from pipeline.progress import progress_bar
from train.cpu_memory import keep_freed_memory
from train.data import ArchiveDataset, Normalizer, build_dataloader, write_training_data
from train.augment import ms_view_transforms, sar_view_transforms
from train.losses import build_loss
from train.models import build_encoder, random_patch_mask

CHECKPOINT_FORMAT = "softcon-pretrain-v1"

# Losses whose forward is (q, k[, labels]) and that the loop symmetrises; the rest are listed below.
PAIR_LOSSES = {"infonce", "softcon", "mulsupcon"}
LABELLED_PAIR_LOSSES = {"softcon", "mulsupcon"}
MULTIVIEW_LOSSES = {"ntxent", "simclr", "supcon", "macl", "triplet"}  # online projections of both views
LABELLED_MULTIVIEW = {"supcon", "macl", "triplet"}


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "softcon"
    labels: Literal["multi_hot", "fraction"] = "multi_hot"
    """Which label vector feeds label-aware losses (SoftCon's label similarity, SupCon positives …)."""
    options: dict[str, Any] = {}
    """Keyword arguments of the loss class (e.g. temperature, lam, soft_term, label_similarity)."""


class PretrainConfig(BaseModel):
    """A pretraining run (YAML). Defaults are sized for a 2-core CPU: ResNet-18, 64 px crops."""

    model_config = ConfigDict(extra="forbid")
    archive: str = "output/ssl4eo_s12_ml_mini.zarr"
    storage_options: dict[str, Any] = {}
    splits: list[Literal["train", "val", "test"]] | Literal["all"] = ["train"]
    """The archive's splits to train on (``softcon split STORE`` writes them; an archive without one is
    refused): by default ``[train]``, so val and test patches stay unseen for evaluation; e.g.
    ``[train, val]``, or ``all`` for every done patch, split or not. An empty list or null is refused
    (say ``all``). The patches used are recorded in ``<output_dir>/training_data.json``."""
    output_dir: str = "runs/softcon-mini"
    modality: Literal["s2_l1c", "s2_l2a", "s1_grd"] = "s2_l1c"
    view_mode: Literal["same_season", "seasonal", "cross_modal"] = "same_season"
    modality2: Literal["s2_l1c", "s2_l2a", "s1_grd"] = "s1_grd"
    statistics: str = "published"
    """Per-band normalisation statistics: ``published`` (SSL4EO-S12 set A, softcon.md §1.6) or the path of
    a JSON written by ``softcon stats`` (the archive's own statistics). Scaling: clip((x − (μ−2σ)) / 4σ, 0, 1)."""
    crop_size: int = Field(64, ge=8)
    backbone: str = "resnet18"
    backbone2: str | None = None
    """Encoder of the second modality in cross-modal mode (default: same architecture)."""
    weights: str | None = None
    """Local weight file for continual pretraining (safetensors or .pth; DINO/DINOv2/torchvision layouts)."""
    first_layer: Literal["random", "inflate"] = "random"
    stop_grad_patch_embed: bool = False
    """MoCo v3's trick for ViTs: freeze the patch embedding."""
    proj_hidden: int = 512
    proj_out: int = 128
    pred_hidden: int = 512
    loss: LossConfig = LossConfig(options={"temperature": 0.2, "lam": 1.0, "soft_term": "bce"})
    mask_ratio: float = Field(0.5, ge=0, lt=1)
    """Siamese masking ratio on the online branch (our choice; the paper's value is UNVERIFIED)."""
    momentum: float = Field(0.99, ge=0, le=1)
    momentum_final: float = Field(1.0, ge=0, le=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    base_lr: float = Field(5e-3, gt=0)
    """Learning rate for a batch of 256, scaled linearly with the effective batch size. Our CPU default
    (short runs, small batches); the SSL4EO-S12 MoCo-v3 recipe uses 1.5e-4 at batch 1024 on GPUs."""
    weight_decay: float = Field(0.1, ge=0)
    sgd_momentum: float = 0.9
    epochs: int = Field(5, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    batch_size: int = Field(32, ge=2)
    """Per-process batch size."""
    accumulate: int = Field(1, ge=1)
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    amp: bool = True
    """bf16 autocast when running on CUDA (ignored on the CPU)."""
    max_steps_per_epoch: int | None = None
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    bn_recalibration_batches: int = Field(20, ge=0)
    """Before export, the BatchNorm running statistics of the exported (ResNet) backbone are recomputed
    over this many unmasked training batches (:func:`recalibrate_batchnorm`): training fills them with
    Siamese-masked inputs, evaluation feeds full images. 0 exports the statistics of training. Our
    choice (default 20); ViTs have no BatchNorm. The export records it (metadata ``bn_statistics``)."""
    cpu_keep_freed_memory: bool = True
    """Keep freed CPU memory for the next step instead of returning it to the OS (glibc ``mallopt``, see
    :mod:`train.cpu_memory`): in the data loader workers, and in the training process when it runs on
    the CPU. Faster steps and reads; resident memory stays at its peak."""

    @field_validator("splits")
    @classmethod
    def _splits_named(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError("empty; name the splits to train on (e.g. [train]) or say 'all' for every done patch")
            if len(set(v)) != len(v):
                raise ValueError(f"{v} names a split twice")
        return v


def load_config(path: str | Path, **overrides: Any) -> PretrainConfig:
    """Read a YAML training config; relative paths are resolved against its folder."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = PretrainConfig.model_validate(data)
    base = path.parent

    def fix(p: str | None) -> str | None:
        if p is None or "://" in p or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    stats = cfg.statistics if cfg.statistics == "published" else fix(cfg.statistics)
    return cfg.model_copy(update={"archive": fix(cfg.archive), "output_dir": fix(cfg.output_dir),
                                  "weights": fix(cfg.weights), "statistics": stats})


# --------------------------------------------------------------------------- distributed helpers
def _dist_setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


# --------------------------------------------------------------------------- schedules
def lr_at(cfg: PretrainConfig, step: int, steps_per_epoch: int, world: int) -> float:
    """Linear warm-up, then half-cosine decay to 0, per optimisation step."""
    peak = cfg.base_lr * cfg.batch_size * cfg.accumulate * world / 256
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def momentum_at(cfg: PretrainConfig, step: int, total_steps: int) -> float:
    """EMA momentum rising from ``momentum`` to ``momentum_final`` on a half cosine (MoCo v3)."""
    progress = min(1.0, step / max(1, total_steps))
    return cfg.momentum_final - (cfg.momentum_final - cfg.momentum) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- model pieces
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


def _mask(branch_online: nn.Module, x: torch.Tensor, ratio: float, seed: int) -> torch.Tensor | None:
    if ratio <= 0:
        return None
    gh, gw = _unwrap(branch_online).mask_grid(x.shape[-2], x.shape[-1])
    g = torch.Generator().manual_seed(seed)
    return random_patch_mask(x.shape[0], gh, gw, ratio, generator=g, device=x.device)


def _loss_kwargs(cfg: PretrainConfig, world: int, class_counts: torch.Tensor | None, n_samples: int) -> dict:
    opts = dict(cfg.loss.options)
    name = cfg.loss.name
    if world > 1 and name != "byol":
        opts.setdefault("gather_distributed", True)
    if name == "macl" and class_counts is not None:
        opts.setdefault("class_counts", class_counts)
        opts.setdefault("num_samples", n_samples)
    if name in {"moco_v2", "mulsupcon"} and opts.get("queue_size", 1) and "dim" not in opts:
        opts["dim"] = cfg.proj_out
    return opts


def compute_loss(name: str, loss_fn: nn.Module, z: tuple[torch.Tensor, torch.Tensor],
                 q: tuple[torch.Tensor, torch.Tensor], k: tuple[torch.Tensor, torch.Tensor],
                 labels: torch.Tensor) -> torch.Tensor:
    """Apply a loss to the step's embeddings: ``z`` online projections, ``q`` predictions, ``k`` targets.

    Index = view. Losses with a queue (MoCo v2, MulSupCon with ``queue_size``) are symmetrised with
    the queue as it was at the start of the step in both directions, and the keys of both views
    are enqueued once, after both (their ``symmetric`` methods).
    """
    if name == "mulsupcon":
        return loss_fn.symmetric(q[0], q[1], k[0], k[1], labels)
    if name in PAIR_LOSSES:
        extra = (labels,) if name in LABELLED_PAIR_LOSSES else ()
        return loss_fn(q[0], k[1], *extra) + loss_fn(q[1], k[0], *extra)
    if name == "moco_v3":
        return loss_fn(q[0], q[1], k[0], k[1])
    if name == "byol":
        return loss_fn(q[0], q[1], k[0], k[1])
    if name == "moco_v2":
        return loss_fn.symmetric(z[0], z[1], k[0], k[1])
    if name in {"ntxent", "simclr"}:
        return loss_fn(z[0], z[1])
    if name in LABELLED_MULTIVIEW:
        return loss_fn(torch.stack([z[0], z[1]], dim=1), labels)
    raise ValueError(f"loss.name: no training rule for loss '{name}'")


# --------------------------------------------------------------------------- BatchNorm recalibration
def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute the running statistics of every BatchNorm layer of ``module`` from ``batches``.

    The rule: each BN layer's running mean and variance are reset, then ``module`` runs forward
    on each input batch in training mode, without gradients, with ``momentum=None``, which is
    PyTorch's cumulative average: after N batches the running mean is the mean of the N batch
    means and the running variance the mean of the N unbiased batch variances. Parameters are not
    touched; the layers' momenta and every submodule's train/eval flag are restored afterwards.
    Returns the number of forward passes (0, without consuming ``batches``, when ``module`` has
    no BatchNorm).
    """
    norms = _batchnorms(module)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    modes = {m: m.training for m in module.modules()}
    n = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        module.train()
        for x in batches:
            module(x)
            n += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return n


def _recalibrate_for_export(cfg: PretrainConfig, backbone: nn.Module, loader, views: list[int],
                            device: torch.device) -> str:
    """Recalibrate ``backbone``'s BN statistics before export; returns the ``bn_statistics`` record.

    During training the online backbone sees only Siamese-masked views (part of every input zeroed
    after normalisation), so its running statistics describe masked images, while evaluation feeds
    full images. The inputs used instead: the unmasked views this branch trains on (``views``: 0 =
    view 1, 1 = view 2), of the first ``cfg.bn_recalibration_batches`` batches of the training
    loader's order for epoch ``cfg.epochs`` (one past the last training epoch: the training
    patches with fresh, seeded augmentations), each view its own forward pass of ``batch_size``
    images as in training. Our choice over exporting the EMA target: SoftCon and MoCo v3 release
    the online (base) encoder, and the target's statistics, though of unmasked views, were
    gathered with the target's EMA weights, not with the weights that are exported.
    """
    if not _batchnorms(backbone):
        return "none"
    if cfg.bn_recalibration_batches == 0:
        return "as trained: running averages over Siamese-masked online inputs (bn_recalibration_batches: 0)"

    def inputs():
        loader.set_epoch(cfg.epochs)
        for i, batch in enumerate(loader):
            if i >= cfg.bn_recalibration_batches:
                return
            for v in views:
                yield batch[f"view{v + 1}"].to(device, non_blocking=True)

    passes = recalibrate_batchnorm(backbone, inputs())
    n_batches = passes // len(views)
    names = " and ".join(f"view{v + 1}" for v in views)
    return (f"recalibrated on {n_batches} unmasked training batches ({names} of each, "
            f"{cfg.batch_size} images per forward pass, cumulative average)")


# --------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, torch.Tensor]:
    state = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda.{i}"] = s
    return state


def _set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: Path, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> None:
    """Models, loss buffers (queues), optimiser state and RNG states in one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in _unwrap(model).state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in loss_fn.state_dict().items():
        tensors[f"loss.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    tensors.update(_rng_state())
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "meta": json.dumps(meta),
        "optim_param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_checkpoint(path: Path, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    tensors = load_file(str(path))
    _unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    loss_state = {k[5:]: v for k, v in tensors.items() if k.startswith("loss.")}
    if loss_state:
        loss_fn.load_state_dict(loss_state)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for pid, extra in json.loads(metadata["optim_scalars"]).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["optim_param_groups"])})
    _set_rng_state(tensors)
    return json.loads(metadata["meta"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob("epoch-*.safetensors"))
    return found[-1] if found else None


def check_output_dir(output_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run where it would write over something (:class:`BadInput`).

    A fresh run may use a folder that does not exist, is empty, or holds only the start of an
    earlier run of ours that never reached its first checkpoint (its ``config.yaml`` and logs). A
    folder with checkpoints or an exported backbone is continued with ``--resume``, never overwritten;
    a folder with other content is not a run folder at all.
    """
    if resume or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise BadInput(f"output_dir: {output_dir} is a file, not a run folder; choose another output_dir")
    if latest_checkpoint(output_dir) is not None or (output_dir / "backbone.safetensors").exists():
        raise BadInput(f"output_dir: {output_dir} already holds a run; continue it with --resume "
                       "or choose a new output_dir (nothing was changed)")
    if any(output_dir.iterdir()) and not (output_dir / "config.yaml").is_file():
        raise BadInput(f"output_dir: {output_dir} is not empty and is not a run folder; refusing to write "
                       "there: choose a new output_dir")


# --------------------------------------------------------------------------- the run
class PretrainModel(nn.Module):
    """The branches of a run: one (shared) for same-modality views, two for cross-modal views.

    ``forward`` computes everything a loss may need, so that DDP sees one forward per step.
    """

    def __init__(self, branches: list[Branch], mask_ratio: float):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.mask_ratio = mask_ratio

    def branch(self, view: int) -> Branch:
        return self.branches[min(view, len(self.branches) - 1)]

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, mask_seed: int):
        """Online projections ``z``, predictions ``q`` (Siamese-masked input) and EMA targets ``k``."""
        z, q, k = [], [], []
        for view, x in enumerate((v1, v2)):
            br = self.branch(view)
            feats = br.online.features(x, _mask(br.online, x, self.mask_ratio, mask_seed + view))
            zz = br.online.projector(feats)
            z.append(zz)
            q.append(br.online.predictor(zz))
            with torch.no_grad():
                k.append(br.target(x))
        return (z[0], z[1]), (q[0], q[1]), (k[0], k[1])


def _build_data(cfg: PretrainConfig, rank: int, world: int):
    sar1 = cfg.modality == "s1_grd"
    t1 = sar_view_transforms(cfg.crop_size) if sar1 else ms_view_transforms(cfg.crop_size, 1)
    t2 = sar_view_transforms(cfg.crop_size) if sar1 else ms_view_transforms(cfg.crop_size, 2)
    kwargs: dict[str, Any] = {}
    if cfg.statistics != "published":
        kwargs["normalizer"] = Normalizer.from_file(cfg.statistics, cfg.modality)
        if cfg.view_mode == "cross_modal":
            kwargs["normalizer2"] = Normalizer.from_file(cfg.statistics, cfg.modality2)
    if cfg.view_mode == "cross_modal":
        sar2 = cfg.modality2 == "s1_grd"
        kwargs["transforms2"] = sar_view_transforms(cfg.crop_size) if sar2 else ms_view_transforms(cfg.crop_size, 2)
        kwargs["modality2"] = cfg.modality2
    # the done patches of the configured splits only (BadInput when the archive has no split)
    ds = ArchiveDataset(cfg.archive, modality=cfg.modality, view_mode=cfg.view_mode, transforms=(t1, t2),
                        storage_options=cfg.storage_options or None, seed=cfg.seed, splits=cfg.splits, **kwargs)
    if len(ds) < cfg.batch_size * world:
        raise BadInput(f"{cfg.archive}: {len(ds)} training items (splits: {cfg.splits}), fewer than one batch "
                       f"({cfg.batch_size} × {world} processes)")
    loader = build_dataloader(ds, cfg.batch_size, num_workers=cfg.num_workers, shuffle=True, seed=cfg.seed,
                              drop_last=True, distributed=world > 1, num_replicas=world, rank=rank,
                              persistent_workers=cfg.num_workers > 0, keep_freed_memory=cfg.cpu_keep_freed_memory)
    return ds, loader


def _class_counts(ds: ArchiveDataset) -> torch.Tensor:
    """MACL's per-class counts: ``multi_hot`` summed over every season of the data set's patches only
    (``ds.patches``: the done patches of the configured splits, so never val/test patches)."""
    from pipeline.store import open_group

    mh = open_group(ds.store, "r", ds.storage_options)["multi_hot"]
    counts = torch.zeros(mh.shape[-1], dtype=torch.float64)
    for p in ds.patches:
        counts += torch.from_numpy(mh[int(p)].astype("float64")).sum(0)
    return counts


def run_pretraining(config: str | Path | PretrainConfig, archive: str | None = None, resume: bool = False,
                    progress: bool | None = None, stop_after_epochs: int | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """Train according to ``config`` (a YAML path or a :class:`PretrainConfig`); returns a summary.

    ``resume`` continues from the latest checkpoint in ``output_dir``; ``stop_after_epochs`` ends
    this invocation after that many epochs (the schedule still spans ``epochs``), e.g. for jobs
    on preemptible machines that are resumed later.
    """
    if isinstance(config, PretrainConfig):
        cfg = config.model_copy(update={k: v for k, v in {"archive": archive, **overrides}.items() if v is not None})
    else:
        cfg = load_config(config, archive=archive, **overrides)
    rank, world, device = _dist_setup()
    if device.type == "cpu" and cfg.cpu_keep_freed_memory:
        keep_freed_memory()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(cfg.seed)

    ds, loader = _build_data(cfg, rank, world)  # archive and split checked before anything is written
    training_data = ""
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        # what this run trains on (contract: training_data.json, also in the exported backbone)
        training_data = write_training_data(out, ds.training_data(), resume)
    branches = [Branch(cfg.backbone, len(ds.band_names), cfg, ds.band_names)]
    if cfg.view_mode == "cross_modal":
        branches.append(Branch(cfg.backbone2 or cfg.backbone, len(ds.band_names2), cfg, ds.band_names2))
    model: nn.Module = PretrainModel(branches, cfg.mask_ratio).to(device)
    if world > 1:
        uses_predictor = cfg.loss.name in PAIR_LOSSES | {"moco_v3", "byol"}
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not uses_predictor or cfg.view_mode == "cross_modal")
    core: PretrainModel = _unwrap(model)

    counts = _class_counts(ds) if cfg.loss.name == "macl" else None
    loss_fn = build_loss(cfg.loss.name, **_loss_kwargs(cfg, world, counts, len(ds))).to(device)
    params = [p for p in core.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)

    steps_per_epoch = len(loader) // cfg.accumulate
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    start_epoch, global_step = 0, 0
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_dir}")
        meta = load_checkpoint(ckpt, model, loss_fn, optimizer)
        start_epoch, global_step = int(meta["epoch"]) + 1, int(meta["global_step"])

    use_amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    writer = None
    csv_file = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=global_step if resume else None)
        csv_path = out / "metrics.csv"
        new = not (resume and csv_path.exists())
        csv_file = open(csv_path, "w" if new else "a", newline="")
        csv_writer = csv.writer(csv_file)
        if new:
            csv_writer.writerow(["epoch", "step", "loss", "lr", "momentum", "samples_per_s"])
    show = progress if progress is not None else (rank == 0 and os.isatty(2))
    history: list[float] = []
    t_start = time.perf_counter()
    try:
        with progress_bar(show) as bar:
            task = bar.add_task("pretraining", total=total_steps, completed=global_step, status="")
            end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start_epoch + stop_after_epochs)
            for epoch in range(start_epoch, end_epoch):
                model.train()
                loader.set_epoch(epoch)
                it = iter(loader)
                epoch_losses = []
                for step_in_epoch in range(steps_per_epoch):
                    t0 = time.perf_counter()
                    lr = lr_at(cfg, global_step, steps_per_epoch, world)
                    m = momentum_at(cfg, global_step, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    optimizer.zero_grad(set_to_none=True)
                    step_loss = 0.0
                    n_samples = 0
                    for micro in range(cfg.accumulate):
                        batch = next(it)
                        v1 = batch["view1"].to(device, non_blocking=True)
                        v2 = batch["view2"].to(device, non_blocking=True)
                        labels = batch["multi_hot" if cfg.loss.labels == "multi_hot" else "label_fraction"].to(device)
                        mask_seed = ((cfg.seed * 1_000_003 + global_step) * cfg.accumulate + micro) * 4 + rank * 7919
                        last = micro == cfg.accumulate - 1
                        sync = contextlib.nullcontext() if last or world == 1 else model.no_sync()
                        with sync:
                            with autocast():
                                z, q, k = model(v1, v2, mask_seed)
                                loss = compute_loss(cfg.loss.name, loss_fn, z, q, k, labels)
                            (loss / cfg.accumulate).backward()
                        step_loss += float(loss.detach()) / cfg.accumulate
                        n_samples += v1.shape[0] * world
                    optimizer.step()
                    for br in core.branches:
                        br.update_target(m)
                    global_step += 1
                    epoch_losses.append(step_loss)
                    history.append(step_loss)
                    rate = n_samples / max(1e-9, time.perf_counter() - t0)
                    if rank == 0:
                        csv_writer.writerow([epoch, global_step, f"{step_loss:.6f}", f"{lr:.6g}", f"{m:.6f}", f"{rate:.1f}"])
                        writer.add_scalar("train/loss", step_loss, global_step)
                        writer.add_scalar("train/lr", lr, global_step)
                        writer.add_scalar("train/momentum", m, global_step)
                        writer.add_scalar("train/samples_per_s", rate, global_step)
                        if show:
                            bar.update(task, advance=1, status=f"epoch {epoch} loss {step_loss:.4f} {rate:.0f} samples/s")
                        elif global_step % cfg.log_every == 0:
                            print(f"epoch {epoch} step {global_step}/{total_steps} loss {step_loss:.4f} "
                                  f"lr {lr:.3g} {rate:.0f} samples/s", flush=True)
                del it
                if rank == 0:
                    meta = {"epoch": epoch, "global_step": global_step, "config": cfg.model_dump(mode="json"),
                            "mean_loss": sum(epoch_losses) / max(1, len(epoch_losses))}
                    save_checkpoint(ckpt_dir / f"epoch-{epoch:04d}.safetensors", model, loss_fn, optimizer, meta)
                    for old in sorted(ckpt_dir.glob("epoch-*.safetensors"))[:-cfg.keep_checkpoints]:
                        old.unlink()
                    csv_file.flush()
                if world > 1:
                    dist.barrier()
    finally:
        if writer is not None:
            writer.close()
        if csv_file is not None:
            csv_file.close()
    finished = global_step >= total_steps
    if rank == 0 and finished:
        normalizers = [ds.normalizer, ds.normalizer2]
        for i, br in enumerate(core.branches):
            modality = cfg.modality if i == 0 else cfg.modality2
            arch = cfg.backbone if i == 0 else (cfg.backbone2 or cfg.backbone)
            name = "backbone.safetensors" if i == 0 else f"backbone-{modality}.safetensors"
            views = [v for v in (0, 1) if min(v, len(core.branches) - 1) == i]  # the views this branch sees
            bn_statistics = _recalibrate_for_export(cfg, br.online.backbone, loader, views, device)
            meta = {"format": "softcon-backbone", "backbone": arch, "modality": modality,
                    "bands": json.dumps(ds.band_names if i == 0 else ds.band_names2),
                    "bn_statistics": bn_statistics}
            if normalizers[i] is not None:  # evaluation scales inputs the same way ("auto")
                meta["normalizer"] = json.dumps(normalizers[i].to_dict())
            meta["training_data"] = training_data  # the text of training_data.json (evaluation checks overlap)
            save_file({k: v.detach().cpu().contiguous() for k, v in br.online.backbone.state_dict().items()},
                      str(out / name), metadata=meta)
    return {"output_dir": str(out), "epochs": cfg.epochs, "steps": global_step, "finished": finished,
            "losses": history,
            "seconds": round(time.perf_counter() - t_start, 1), "world_size": world, "rank": rank,
            "device": str(device)}
