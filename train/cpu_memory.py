"""Keep freed CPU tensor memory inside the process (glibc ``mallopt``), for training on the CPU.

PyTorch has a caching allocator for CUDA but none for the CPU: every tensor is a
``malloc``/``free``.  glibc serves blocks above a (dynamic) threshold with ``mmap`` and
returns freed memory to the kernel, so the next step's tensors of the same sizes are
page-faulted and zero-filled again.  A training step allocates the same shapes every
time; here that costs 10–25 % of a ResNet-18 training step and of a 512 × 512 contrastive
loss (``benchmarks/bench_pretrain.py`` prints both allocator settings).  PyTorch's CPU
performance guide recommends an allocator that reuses memory (jemalloc, TCMalloc); with
glibc the same effect comes from two documented ``mallopt`` settings, applied here:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum on 64-bit): blocks below it come from the
  heap, where freed blocks are reused;
* ``M_TRIM_THRESHOLD`` = ``trim_mib``: the top of the heap is returned to the kernel only
  when more than that is free.

The settings are process-wide and cannot be undone; the resident memory of a training
process then stays at its peak (as with a caching allocator).  Not glibc (macOS, musl):
nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def keep_freed_memory(trim_mib: int = 1024) -> bool:
    """Apply the two ``mallopt`` settings above; True when glibc accepted both."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt (%s): CPU allocator left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(trim_mib) * 1024 * 1024))
    log.debug("glibc mallopt: keep freed memory (trim threshold %d MiB): %s", trim_mib, ok)
    return ok
