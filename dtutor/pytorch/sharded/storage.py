"""The bytes of a tensor's storage: which ones a view covers, and which ones are really in memory.

``memory.Ledger`` adds up the model state a rank holds storage by storage: several tensors often view one
storage (a flat buffer and its per-parameter views), so each role counts the union of its views' byte ranges,
once. ``resident_bytes`` asks Linux which pages of a storage are in physical memory: a ``torch.empty`` that
nothing wrote to (DeepSpeed's 2 GB reduce bucket) is virtual and costs nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch


def view_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The bytes of its storage a tensor views: from its offset to its last element."""
    size = tensor.element_size()
    last = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride(), strict=True)) if tensor.numel() else -1
    return tensor.storage_offset() * size, (tensor.storage_offset() + last + 1) * size


def covered_bytes(spans: list[tuple[int, int]]) -> int:
    """Bytes in the union of [start, end) byte ranges."""
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def resident_bytes(tensor: torch.Tensor) -> int | None:
    """Bytes of a CPU tensor's storage that are in physical memory (Linux ``mincore``); None where unknown."""
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return None
    storage, page = tensor.untyped_storage(), mmap.PAGESIZE
    first = storage.data_ptr() - storage.data_ptr() % page
    pages = (storage.data_ptr() + storage.nbytes() - first + page - 1) // page
    flags = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mincore(ctypes.c_void_p(first), ctypes.c_size_t(pages * page), flags) != 0:
        return None
    return (pages - bytes(flags).count(0)) * page
