"""Pretraining loop: SoftCon (and the baselines) on the curated archive, MoCo-v3 style.

One step, for a batch of two views ``v1``, ``v2`` with label vectors ``y``:

* online branch (trainable): backbone → projector ``z`` → predictor ``q``, on a **Siamese-masked**
  input (ViT: masked patch tokens dropped; CNN: masked cells zeroed; ``mask_ratio``);
* target branch: an EMA copy of backbone + projector (no gradient) on the full views → ``k``;
* the loss, called as its declared contract says (:mod:`train.losses.contract`): e.g. symmetric
  ``L(q1, k2, y) + L(q2, k1, y)`` for the MoCo-v3-shaped losses (InfoNCE, SoftCon), in-batch over the
  online projections of both views for NT-Xent, SupCon, MACL and triplet, MoCo v2 with the online
  projection against its queue;
* AdamW (or SGD), linear warm-up then cosine learning rate per step, EMA momentum rising from
  ``momentum`` to ``momentum_final`` on a half cosine (:mod:`train.schedules`), gradient
  accumulation, bf16 autocast on CUDA.

With ``view_mode: cross_modal`` each modality has its own encoder (an S2 and an S1 branch, each with
its EMA target) and the loss contrasts the S2 predictions with the S1 targets and vice versa.

Runs under ``torchrun`` (DDP, NCCL on GPUs, Gloo on CPU): the losses gather embeddings and labels
across ranks. Every epoch a checkpoint (:mod:`train.checkpoints`: models, optimiser state, loss
buffers, RNG states, step counters) is written atomically; ``--resume`` continues from the latest one
and, on the CPU, reproduces the losses of an uninterrupted run exactly (data order, augmentations and
masks are functions of (seed, epoch, step), never of hidden RNG state). Logs: ``metrics.csv``,
TensorBoard events under ``tensorboard/`` (:mod:`train.run_log`), a progress bar with the loss and
samples per second. The final online backbone is exported as ``backbone.safetensors``, its
BatchNorm statistics first recomputed on unmasked training batches (:mod:`train.batchnorm`).

Choices that are ours (the SoftCon paper's values, Wang et al. 2024, arXiv:2405.20462, are
UNVERIFIED): mask ratio 0.5, λ = 1, and the MoCo-v3 recipe of the SSL4EO-S12 code (Wang et al. 2023,
arXiv:2211.07044) for optimiser, temperature and momentum.

Config: :mod:`train.pretrain_config`; networks: :mod:`train.pretrain_model` (importable from here too).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from pipeline.errors import BadInput
from pipeline.progress import progress_bar
from train.augment import ms_view_transforms, sar_view_transforms
from train.batchnorm import recalibrate_batchnorm, recalibrate_for_export
from train.checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    BackboneMetadata,
    backbone_file,
    check_output_dir,
    checkpoint_path,
    export_backbone,
    latest_checkpoint,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from train.cpu_memory import keep_freed_memory
from train.data import ArchiveDataset, Normalizer, build_dataloader, write_training_data
from train.distributed import dist_setup, unwrap
from train.losses import LossContract, Online, build_loss, call_loss, loss_contract
from train.pretrain_config import LossConfig, PretrainConfig, load_config
from train.pretrain_model import Branch, PretrainModel
from train.run_log import MetricsLog
from train.schedules import lr_at, momentum_at

__all__ = [
    "CHECKPOINT_FORMAT",
    "Branch",
    "LossConfig",
    "PretrainConfig",
    "PretrainModel",
    "check_output_dir",
    "compute_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "lr_at",
    "momentum_at",
    "recalibrate_batchnorm",
    "run_pretraining",
    "save_checkpoint",
]


# --------------------------------------------------------------------------- the loss
def compute_loss(name: str, loss_fn: nn.Module, z: tuple[torch.Tensor, torch.Tensor],
                 q: tuple[torch.Tensor, torch.Tensor], k: tuple[torch.Tensor, torch.Tensor],
                 labels: torch.Tensor) -> torch.Tensor:
    """Apply the loss registered as ``name`` to the step's embeddings, as its contract says.

    Args:
        name: the loss's registry name (:data:`train.losses.LOSSES`).
        loss_fn: the loss module.
        z: online projections of both views (index = view).
        q: online predictions of both views.
        k: EMA-target keys of both views.
        labels: the batch's label vectors.

    Returns:
        The step's scalar loss (losses with a queue symmetrise themselves: ``LossCall.OWN_SYMMETRIC``).

    Raises:
        KeyError: no loss ``name`` is registered.
        TypeError: its class declares no contract.
    """
    return call_loss(loss_contract(name), loss_fn, z, q, k, labels)


def _loss_kwargs(cfg: PretrainConfig, world: int, class_counts: torch.Tensor | None, n_samples: int) -> dict:
    """The loss's keyword arguments: the configured options plus what its contract asks the run for."""
    contract = loss_contract(cfg.loss.name)
    opts = dict(cfg.loss.options)
    if world > 1 and contract.gathers:
        opts.setdefault("gather_distributed", True)
    if contract.class_counts and class_counts is not None:
        opts.setdefault("class_counts", class_counts)
        opts.setdefault("num_samples", n_samples)
    if contract.queue_dim and opts.get("queue_size", 1) and "dim" not in opts:
        opts["dim"] = cfg.proj_out
    return opts


# --------------------------------------------------------------------------- data
def _build_data(cfg: PretrainConfig, rank: int, world: int):
    """The training data set (the configured splits' done patches) and this rank's loader."""
    sar1 = cfg.modality == "s1_grd"
    ms = {k: tuple(v) if k == "scale" else v for k, v in cfg.augment.items()}
    t1 = sar_view_transforms(cfg.crop_size) if sar1 else ms_view_transforms(cfg.crop_size, 1, **ms)
    t2 = sar_view_transforms(cfg.crop_size) if sar1 else ms_view_transforms(cfg.crop_size, 2, **ms)
    kwargs: dict[str, Any] = {}
    if cfg.statistics != "published":
        kwargs["normalizer"] = Normalizer.from_file(cfg.statistics, cfg.modality)
        if cfg.view_mode == "cross_modal":
            kwargs["normalizer2"] = Normalizer.from_file(cfg.statistics, cfg.modality2)
    if cfg.view_mode == "cross_modal":
        sar2 = cfg.modality2 == "s1_grd"
        kwargs["transforms2"] = (sar_view_transforms(cfg.crop_size) if sar2
                                 else ms_view_transforms(cfg.crop_size, 2, **ms))
        kwargs["modality2"] = cfg.modality2
    # the done patches of the configured splits only (BadInput when the archive has no split)
    ds = ArchiveDataset(cfg.archive, modality=cfg.modality, view_mode=cfg.view_mode, transforms=(t1, t2),
                        storage_options=cfg.storage_options or None, seed=cfg.seed, splits=cfg.splits,
                        labels=cfg.loss.labels, **kwargs)
    if len(ds) < cfg.batch_size * world:
        raise BadInput(f"{cfg.archive}: {len(ds)} training items (splits: {cfg.splits}), fewer than one batch "
                       f"({cfg.batch_size} × {world} processes)")
    loader = build_dataloader(ds, cfg.batch_size, num_workers=cfg.num_workers, shuffle=True, seed=cfg.seed,
                              drop_last=True, distributed=world > 1, num_replicas=world, rank=rank,
                              persistent_workers=cfg.num_workers > 0, keep_freed_memory=cfg.cpu_keep_freed_memory)
    return ds, loader


def _class_counts(ds: ArchiveDataset) -> torch.Tensor:
    """MACL's per-class counts: ``multi_hot`` summed over every season of the data set's patches only
    (``ds.patches``: the done patches of the configured splits, so never val/test patches).
    """
    mh = ds.archive.open()["multi_hot"]
    counts = torch.zeros(mh.shape[-1], dtype=torch.float64)
    for p in ds.patches:
        counts += torch.from_numpy(mh[int(p)].astype("float64")).sum(0)
    return counts


# --------------------------------------------------------------------------- the run's steps
@dataclass
class _Run:
    """What the steps of one run share."""

    cfg: PretrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    ds: ArchiveDataset
    loader: Any
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int

    @property
    def core(self) -> PretrainModel:
        """The model without its DDP wrapper."""
        return unwrap(self.model)


def _resolve_config(config: str | Path | PretrainConfig, archive: str | None, overrides: dict) -> PretrainConfig:
    """The run's config: a :class:`PretrainConfig` or YAML path, with ``archive`` and ``overrides`` applied."""
    if isinstance(config, PretrainConfig):
        return config.model_copy(update={k: v for k, v in {"archive": archive, **overrides}.items() if v is not None})
    return load_config(config, archive=archive, **overrides)


def _start_run_folder(cfg: PretrainConfig, out: Path, ds: ArchiveDataset, resume: bool) -> str:
    """Rank 0: create the run folder, write ``config.yaml`` and ``training_data.json``; returns the latter's text."""
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    # what this run trains on (contract: training_data.json, also in the exported backbone)
    return write_training_data(out, ds.training_data(), resume)


def _build_model(cfg: PretrainConfig, ds: ArchiveDataset, contract: LossContract, device: torch.device,
                 world: int) -> nn.Module:
    """The branches (two in cross-modal mode) on ``device``, wrapped in DDP when ``world > 1``."""
    branches = [Branch(cfg.backbone, len(ds.band_names), cfg, ds.band_names)]
    if cfg.view_mode == "cross_modal":
        branches.append(Branch(cfg.backbone2 or cfg.backbone, len(ds.band_names2), cfg, ds.band_names2))
    model: nn.Module = PretrainModel(branches, cfg.mask_ratio).to(device)
    if world > 1:
        uses_predictor = contract.online is Online.PREDICTION
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not uses_predictor or cfg.view_mode == "cross_modal")
    return model


def _build_optimizer(cfg: PretrainConfig, core: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters (the schedule sets the learning rate per step)."""
    params = [p for p in core.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)


def _steps_per_epoch(cfg: PretrainConfig, loader) -> int:
    """Optimisation steps per epoch: the loader's batches over ``accumulate``, capped by ``max_steps_per_epoch``."""
    steps = len(loader) // cfg.accumulate
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def _resume(run: _Run) -> tuple[int, int]:
    """Restore the latest checkpoint; returns ``(first epoch to run, global step)``."""
    ckpt = latest_checkpoint(run.out)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run.out / CHECKPOINT_DIR}")
    meta = load_checkpoint(ckpt, run.model, run.loss_fn, run.optimizer)
    return int(meta["epoch"]) + 1, int(meta["global_step"])


def _train_step(run: _Run, it, global_step: int, autocast) -> tuple[float, int]:
    """One optimisation step (``accumulate`` micro-batches from ``it``); returns (loss, samples, all ranks)."""
    cfg, model = run.cfg, run.model
    run.optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    n_samples = 0
    label_key = run.ds.label_key  # the item key of cfg.loss.labels (train.data.dataset.LABEL_KEYS)
    for micro in range(cfg.accumulate):
        batch = next(it)
        v1 = batch["view1"].to(run.device, non_blocking=True)
        v2 = batch["view2"].to(run.device, non_blocking=True)
        labels = batch[label_key].to(run.device)
        mask_seed = ((cfg.seed * 1_000_003 + global_step) * cfg.accumulate + micro) * 4 + run.rank * 7919
        last = micro == cfg.accumulate - 1
        sync = contextlib.nullcontext() if last or run.world == 1 else model.no_sync()
        with sync:
            with autocast():
                z, q, k = model(v1, v2, mask_seed)
                loss = compute_loss(cfg.loss.name, run.loss_fn, z, q, k, labels)
            (loss / cfg.accumulate).backward()
        step_loss += float(loss.detach()) / cfg.accumulate
        n_samples += v1.shape[0] * run.world
    run.optimizer.step()
    return step_loss, n_samples


def _train_epoch(run: _Run, epoch: int, global_step: int, autocast, report) -> tuple[int, list[float]]:
    """The optimisation steps of ``epoch``: schedule, step, EMA update of the targets, ``report``.

    Returns:
        The global step reached and the epoch's step losses.
    """
    cfg = run.cfg
    run.model.train()
    run.loader.set_epoch(epoch)
    it = iter(run.loader)
    epoch_losses = []
    for _ in range(run.steps_per_epoch):
        t0 = time.perf_counter()
        lr = lr_at(cfg, global_step, run.steps_per_epoch, run.world)
        m = momentum_at(cfg, global_step, run.total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        step_loss, n_samples = _train_step(run, it, global_step, autocast)
        for br in run.core.branches:
            br.update_target(m)
        global_step += 1
        epoch_losses.append(step_loss)
        report(epoch, global_step, step_loss, lr, m, n_samples / max(1e-9, time.perf_counter() - t0))
    del it
    return global_step, epoch_losses


def _save_epoch(run: _Run, epoch: int, global_step: int, epoch_losses: list[float]) -> None:
    """Rank 0: the epoch's checkpoint, then only the ``keep_checkpoints`` latest are kept."""
    meta = {"epoch": epoch, "global_step": global_step, "config": run.cfg.model_dump(mode="json"),
            "mean_loss": sum(epoch_losses) / max(1, len(epoch_losses))}
    save_checkpoint(checkpoint_path(run.out, epoch), run.model, run.loss_fn, run.optimizer, meta)
    rotate_checkpoints(run.out, run.cfg.keep_checkpoints)


def _export_backbones(run: _Run, training_data: str) -> None:
    """Rank 0, after the last epoch: each branch's online backbone, BN statistics recalibrated first."""
    cfg, ds, core = run.cfg, run.ds, run.core
    normalizers = [ds.normalizer, ds.normalizer2]
    for i, br in enumerate(core.branches):
        modality = cfg.modality if i == 0 else cfg.modality2
        arch = cfg.backbone if i == 0 else (cfg.backbone2 or cfg.backbone)
        views = [v for v in (0, 1) if min(v, len(core.branches) - 1) == i]  # the views this branch sees
        bn_statistics = recalibrate_for_export(cfg, br.online.backbone, run.loader, views, run.device)
        normalizer = normalizers[i].to_dict() if normalizers[i] is not None else None
        meta = BackboneMetadata(backbone=arch, modality=modality, bands=ds.band_names if i == 0 else ds.band_names2,
                                bn_statistics=bn_statistics, normalizer=normalizer, training_data=training_data)
        export_backbone(run.out / backbone_file(i, modality), br.online.backbone, meta)


def run_pretraining(config: str | Path | PretrainConfig, archive: str | None = None, resume: bool = False,
                    progress: bool | None = None, stop_after_epochs: int | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """Train according to ``config``; returns a summary.

    Args:
        config: a YAML path or a :class:`PretrainConfig`.
        archive: replaces the config's archive.
        resume: continue from the latest checkpoint in ``output_dir``.
        progress: show a progress bar (default: on rank 0 when stderr is a terminal).
        stop_after_epochs: end this invocation after that many epochs (the schedule still spans
            ``epochs``), e.g. for jobs on preemptible machines that are resumed later.
        **overrides: other config keys to replace.

    Returns:
        ``output_dir``, ``epochs``, ``steps`` (global step reached), ``finished``, ``losses`` (this
        invocation's step losses), ``seconds``, ``world_size``, ``rank`` and ``device``.
    """
    cfg = _resolve_config(config, archive, overrides)
    contract = loss_contract(cfg.loss.name)  # an unknown loss is refused before anything is written
    rank, world, device = dist_setup()
    if device.type == "cpu" and cfg.cpu_keep_freed_memory:
        keep_freed_memory()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume)
    torch.manual_seed(cfg.seed)

    ds, loader = _build_data(cfg, rank, world)  # archive and split checked before anything is written
    training_data = _start_run_folder(cfg, out, ds, resume) if rank == 0 else ""
    model = _build_model(cfg, ds, contract, device, world)
    counts = _class_counts(ds) if contract.class_counts else None
    loss_fn = build_loss(cfg.loss.name, **_loss_kwargs(cfg, world, counts, len(ds))).to(device)
    optimizer = _build_optimizer(cfg, unwrap(model))
    steps_per_epoch = _steps_per_epoch(cfg, loader)
    run = _Run(cfg, out, rank, world, device, ds, loader, model, loss_fn, optimizer,
               steps_per_epoch, cfg.epochs * steps_per_epoch)
    start_epoch, global_step = _resume(run) if resume else (0, 0)

    use_amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    log = MetricsLog(out, resume, global_step) if rank == 0 else None
    show = progress if progress is not None else (rank == 0 and os.isatty(2))
    history: list[float] = []
    t_start = time.perf_counter()
    try:
        with progress_bar(show) as bar:
            task = bar.add_task("pretraining", total=run.total_steps, completed=global_step, status="")

            def report(epoch: int, step: int, loss: float, lr: float, m: float, rate: float) -> None:
                history.append(loss)
                if log is None:
                    return
                log.step(epoch, step, loss, lr, m, rate)
                if show:
                    bar.update(task, advance=1, status=f"epoch {epoch} loss {loss:.4f} {rate:.0f} samples/s")
                elif step % cfg.log_every == 0:
                    print(f"epoch {epoch} step {step}/{run.total_steps} loss {loss:.4f} "
                          f"lr {lr:.3g} {rate:.0f} samples/s", flush=True)

            end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start_epoch + stop_after_epochs)
            for epoch in range(start_epoch, end_epoch):
                global_step, epoch_losses = _train_epoch(run, epoch, global_step, autocast, report)
                if log is not None:
                    _save_epoch(run, epoch, global_step, epoch_losses)
                    log.flush()
                if world > 1:
                    dist.barrier()
    finally:
        if log is not None:
            log.close()
    finished = global_step >= run.total_steps
    if rank == 0 and finished:
        _export_backbones(run, training_data)
    return {"output_dir": str(out), "epochs": cfg.epochs, "steps": global_step, "finished": finished,
            "losses": history,
            "seconds": round(time.perf_counter() - t_start, 1), "world_size": world, "rank": rank,
            "device": str(device)}
