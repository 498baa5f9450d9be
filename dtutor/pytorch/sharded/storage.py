"""Counting the model state a rank holds: which bytes of a storage a view covers, which are really in memory.

``Ledger`` adds up the model state a rank holds storage by storage: several tensors often view one
storage (a flat buffer and its per-parameter views), so each role counts the union of its views' byte ranges,
once. ``resident_bytes`` asks Linux which pages of a storage are in physical memory: a ``torch.empty`` that
nothing wrote to (DeepSpeed's 2 GB reduce bucket) is virtual and costs nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections import defaultdict

import torch
from torch.distributed.tensor import DTensor

ROLES = ("parameters", "master_weights", "optimizer_state", "gradients", "host_gradients", "gathered_parameters",
         "reduce_bucket", "buffers")  # the order in which roles claim the bytes of a shared storage
MODEL_STATE = ("parameters", "gradients", "host_gradients", "master_weights", "optimizer_state")


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


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: a ``DTensor``'s local shard, any other tensor itself."""
    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


class Ledger:
    """Views by role, grouped by storage; ``totals`` counts every storage once, each role the bytes its views cover
    (in ``ROLES`` order), the rest ``buffers``: the one model-state counter (``model_state``, ``bench.probe``,
    ``model_parallel.stages.parameter_bytes``)."""

    def __init__(self) -> None:
        self.views: dict[tuple, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
        self.sizes: dict[tuple, int] = {}
        self.buckets: dict[tuple, int | None] = {}  # storage -> its resident bytes

    def add(self, role: str, tensor: torch.Tensor | None, bucket: bool = False) -> None:
        """Record that ``tensor`` plays ``role`` (``bucket``: it is a reduce bucket, only its capacity counts)."""
        if tensor is None:
            return
        tensor = local_tensor(tensor)
        if tensor.device.type == "meta" or tensor.untyped_storage().nbytes() == 0:
            return
        storage = tensor.untyped_storage()
        key = (tensor.device.type, tensor.device.index, storage.data_ptr())
        self.sizes[key] = storage.nbytes()
        if bucket:
            self.buckets[key] = resident_bytes(tensor)
        else:
            self.views[key][role].append(view_span(tensor))

    def totals(self) -> dict[str, int]:
        """Bytes per role, plus ``bucket_capacity`` (the reduce buckets' allocated size, virtual where unused)."""
        totals = dict.fromkeys(ROLES, 0)
        for key, size in self.sizes.items():
            taken: list[tuple[int, int]] = []
            roles = self.views.get(key, {})
            if key in self.buckets:  # gradients waiting in a bucket are the bucket's; its free part is virtual
                roles = {"reduce_bucket": [s for role, spans in roles.items() if role != "buffers" for s in spans]}
            for role in ROLES:
                if roles.get(role):
                    totals[role] += covered_bytes(taken + roles[role]) - covered_bytes(taken)
                    taken += roles[role]
            if key not in self.buckets:
                totals["buffers"] += size - covered_bytes(taken)
        totals["bucket_capacity"] = sum(self.sizes[key] for key in self.buckets)
        resident = list(self.buckets.values())
        totals["bucket_resident"] = sum(resident) if None not in resident else -1  # -1: unknown
        totals["model_state"] = sum(totals[role] for role in MODEL_STATE)
        return totals
