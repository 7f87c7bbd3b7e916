"""The epoch-aware sampler and DataLoader of the training data set.

:func:`build_dataloader`'s sampler stamps the epoch onto every index (``ds[(i, epoch)]``), so even
persistent workers, which keep an old copy of the data set, see the right epoch. Its permutation is
seeded by ``seed + epoch`` (as :class:`~torch.utils.data.DistributedSampler`), and
``set_epoch(epoch, skip_batches=k)`` resumes in the middle of an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from train.cpu_memory import keep_freed_memory
from train.data.dataset import collate_items


class EpochSampler(Sampler):
    """Seeded sampler that yields ``(index, epoch)`` so workers always know the epoch.

    Order: a permutation seeded by ``seed + epoch`` (``shuffle``), or ``0..n-1``; with
    ``distributed`` the same through :class:`~torch.utils.data.DistributedSampler` (each rank its
    share). ``set_epoch(epoch, skip=k)`` starts the epoch after its first ``k`` indices (to resume).
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 distributed: bool = False, num_replicas: int | None = None, rank: int | None = None):
        self.n, self.shuffle, self.seed = len(dataset), bool(shuffle), int(seed)
        self.epoch, self.skip = 0, 0
        self.inner = (DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                         seed=seed, drop_last=drop_last) if distributed else None)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)
        if self.inner is not None:
            self.inner.set_epoch(self.epoch)

    def _order(self) -> list[int]:
        if self.inner is not None:
            return list(self.inner)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self._order()[self.skip:]:
            yield (i, epoch)

    def __len__(self) -> int:
        n = len(self.inner) if self.inner is not None else self.n
        return max(0, n - self.skip)


class EpochDataLoader(DataLoader):
    """A DataLoader with ``set_epoch(epoch, skip_batches=0)`` for its sampler and data set."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            if isinstance(self.sampler, EpochSampler):
                self.sampler.set_epoch(epoch, skip=skip_batches * int(self.batch_size))
            else:
                self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)



def _keep_freed_memory_in_worker(worker_id: int) -> None:
    keep_freed_memory(trim_mib=256)  # a worker's working set (chunks, one batch) is far below this


def build_dataloader(dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True,
                     seed: int = 0, drop_last: bool = True, distributed: bool = False,
                     num_replicas: int | None = None, rank: int | None = None, pin_memory: bool = False,
                     persistent_workers: bool = False, prefetch_factor: int | None = None,
                     collate_fn: Callable | None = None,
                     multiprocessing_context: str | None = "forkserver",
                     keep_freed_memory: bool = False) -> EpochDataLoader:
    """DataLoader with a seeded :class:`EpochSampler` (DistributedSampler inside when ``distributed``).

    Call ``loader.set_epoch(epoch)`` before each epoch (also sets the data set's epoch). Batches are
    identical for any ``num_workers`` with the same seed and epoch. Workers start from a fork server
    by default: forking the training process itself (threads of Prefect, Dask, zarr's event loop)
    made workers die at exit now and then; pair it with ``persistent_workers`` to start them once.
    ``keep_freed_memory``: workers keep freed memory for their next reads (:mod:`train.cpu_memory`).
    """
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last, distributed=distributed,
                           num_replicas=num_replicas, rank=rank)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        kwargs["multiprocessing_context"] = multiprocessing_context
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if keep_freed_memory:
            kwargs["worker_init_fn"] = _keep_freed_memory_in_worker
    return EpochDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                           drop_last=drop_last, pin_memory=pin_memory, collate_fn=collate_fn or collate_items,
                           generator=torch.Generator().manual_seed(int(seed)), **kwargs)
