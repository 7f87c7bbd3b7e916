"""BatchNorm recalibration of a backbone before it is exported.

During pretraining the online backbone sees only Siamese-masked inputs, so its BatchNorm running
statistics describe masked images while evaluation feeds full ones. :func:`recalibrate_batchnorm`
recomputes them from given batches (PyTorch's cumulative average); :func:`recalibrate_for_export`
applies it to a run's exported backbone and describes what was done (metadata ``bn_statistics``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from train.pretrain_config import PretrainConfig

__all__ = ["batchnorm_layers", "recalibrate_batchnorm", "recalibrate_for_export"]


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1-D, 2-D, 3-D, synchronised) of ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute the running statistics of every BatchNorm layer of ``module`` from ``batches``.

    The rule: each BN layer's running mean and variance are reset, then ``module`` runs forward
    on each input batch in training mode, without gradients, with ``momentum=None``, which is
    PyTorch's cumulative average: after N batches the running mean is the mean of the N batch
    means and the running variance the mean of the N unbiased batch variances. Parameters are not
    touched; the layers' momenta and every submodule's train/eval flag are restored afterwards.

    Args:
        module: the network whose BatchNorm statistics are recomputed.
        batches: input batches (each one forward pass).

    Returns:
        The number of forward passes (0, without consuming ``batches``, when ``module`` has no
        BatchNorm).
    """
    norms = batchnorm_layers(module)
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


def recalibrate_for_export(cfg: PretrainConfig, backbone: nn.Module, loader, views: list[int],
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

    Args:
        cfg: the run's config (``bn_recalibration_batches``, ``epochs``, ``batch_size``).
        backbone: the online backbone to be exported.
        loader: the training data loader (an ``EpochDataLoader``: ``set_epoch`` and iteration).
        views: the views this backbone's branch trains on.
        device: where ``backbone`` runs.

    Returns:
        The text of the exported backbone's ``bn_statistics`` metadata.
    """
    if not batchnorm_layers(backbone):
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
