"""The global generators (Python, NumPy, torch CPU and CUDA) as data: captured into a checkpoint,
restored on resume, and kept out of reach of the between-task work.

Why the last one: what the between-task work draws depends on what is cached in memory (a
resumed process recomputes selector features, answers; every `DataLoader` iterator draws a seed),
so if it drew from the global generators, the next task's random init and dropout would differ
between a resumed run and an uninterrupted one.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every global generator a run draws from."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(python_state), gauss],
             "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]}
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    return plain, tensors


def restore_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Set every generator from a captured state; a malformed state is a ValueError and leaves
    all of them as they were (none half-restored)."""
    cuda = {}
    for key in tensors:
        if key.startswith("torch_cuda_"):
            number = key[len("torch_cuda_"):]
            if not number.isdigit():
                raise ValueError(f"not a generator state (unknown key {key!r})")
            cuda[int(number)] = tensors[key]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    before = capture_rng_state()
    try:
        version, python_state, gauss = plain["python"]
        random.setstate((version, tuple(python_state), gauss))
        kind, keys, position, has_gauss, cached = plain["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(tensors["torch_cpu"])
        for device in sorted(cuda):  # by number: cuda 10 after cuda 9
            if device < available:
                torch.cuda.set_rng_state(cuda[device], device=device)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        restore_rng_state(*before)  # a state this process captured itself: it always restores
        raise ValueError(f"not a generator state ({type(error).__name__}: {error})") from None


@contextmanager
def generators_untouched() -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """Run a block without moving the global generators; yields their state at entry."""
    state = capture_rng_state()
    try:
        yield state
    finally:
        restore_rng_state(*state)
