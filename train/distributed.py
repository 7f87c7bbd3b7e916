"""Process-group set-up for pretraining under ``torchrun`` (DDP), and unwrapping a DDP model."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["dist_setup", "unwrap"]


def dist_setup() -> tuple[int, int, torch.device]:
    """Initialise the process group under ``torchrun`` (NCCL on GPUs, Gloo on the CPU).

    Returns:
        ``(rank, world_size, device)``: rank 0 and world size 1 without ``torchrun``; the device is
        ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
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


def unwrap(m: nn.Module) -> nn.Module:
    """The module inside a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper (else ``m``)."""
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m
