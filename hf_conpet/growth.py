"""Stacks that grow one task at a time in amortised O(1): the frozen task weights never re-copied.

`torch.cat([stack, new])` on every freeze copies every earlier task again, so adding or loading N
tasks costs O(N^2). Here a buffer is a view of the first rows of a larger storage whose capacity
doubles when full: appending writes only the new rows, and earlier rows stay bit-identical where
they are. The storage is kept outside the module's buffers (not saved, not moved by `.to()`); a
buffer that was moved, cast or replaced since simply gets a fresh storage on its next append.
"""

from __future__ import annotations

import torch
import torch.nn as nn

MIN_CAPACITY = 8


def append_rows(module: nn.Module, name: str, rows: torch.Tensor) -> None:
    """Set buffer `name` of `module` to `cat([buffer, rows])` without copying the buffer's rows."""
    current = getattr(module, name)
    rows = rows.detach().to(device=current.device, dtype=current.dtype)
    if rows.shape[1:] != current.shape[1:]:
        raise ValueError(f"{name}: cannot append rows of shape {list(rows.shape[1:])} to a stack of {list(current.shape[1:])}")
    storages = module.__dict__.setdefault("_growth_storage", {})
    storage = storages.get(name)
    used, added = current.shape[0], rows.shape[0]
    if not _holds(storage, current) or used + added > storage.shape[0]:
        storage = current.new_empty((max(MIN_CAPACITY, 2 * (used + added)), *current.shape[1:]))
        storage[:used] = current
        storages[name] = storage
    storage[used : used + added] = rows
    setattr(module, name, storage[: used + added])


def _holds(storage: torch.Tensor | None, current: torch.Tensor) -> bool:
    """Whether `current` is still the leading view of `storage` (not moved, cast or replaced since)."""
    if storage is None or storage.device != current.device or storage.dtype != current.dtype or current.shape[0] == 0:
        return False  # (an empty stack starts afresh: old views of a storage must never be written over)
    return current.data_ptr() == storage.data_ptr() and current.is_contiguous()
