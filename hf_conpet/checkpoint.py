"""The resumable state of a continual run, after its last finished task, in one directory.

    checkpoint/
      conpet_config.json, tasks/, selector/   the saved system (the same layout as `model/`)
      replay/                                 the replay memory (`ReplayMemory.save`)
      regularizer/                            EWC's Fisher and anchor, LwF's teacher (`Regularizer.save`)
      metrics.json                            the accuracy matrix so far
      progress.json                           method, stream, finished tasks, run settings, history
      rng_state.json, rng_state.safetensors   Python, NumPy and torch (CPU, CUDA) generator states

A resumed run must be the same run, bit for bit: whatever the next task draws from the global
generators (a new module's random init in a user's own loop, dropout, shuffles) must continue
from where the uninterrupted run was, so their states are part of the checkpoint. The run's
settings are recorded too, so that resuming with another budget or seed is refused by name
instead of silently producing a run no single setting describes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ._io import atomic_directory, read_json, read_safetensors, recover_directory, write_json
from .rng_state import capture_rng_state, restore_rng_state

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.json"
REPLAY_DIR = "replay"
REGULARIZER_DIR = "regularizer"
RNG_JSON = "rng_state.json"
RNG_TENSORS = "rng_state.safetensors"


class ResumeMismatchError(ValueError):
    """A checkpoint cannot be continued with the settings now given."""


# ----------------------------------------------------------------------------- settings
def settings_differences(recorded: dict[str, Any], given: dict[str, Any], recorded_as: str = "checkpoint") -> list[str]:
    """`name: checkpoint R, now G` for every setting both sides name with different values."""
    differences = []
    for name in sorted(set(recorded) & set(given)):
        old, new = recorded[name], given[name]
        if isinstance(old, float) or isinstance(new, float):
            same = isinstance(old, (int, float)) and isinstance(new, (int, float)) and math.isclose(old, new, rel_tol=1e-12)
        else:
            same = old == new
        if not same:
            differences.append(f"{name}: {recorded_as} {old!r}, now {new!r}")
    return differences


# ----------------------------------------------------------------------------- write / read
def write_checkpoint(destination: Path, model, memory, metrics: dict[str, Any], progress: dict[str, Any],
                     generators: tuple[dict, dict] | None = None, regularizer=None) -> Path:
    """Everything a resume needs, replacing the previous checkpoint in one crash-safe swap.
    `generators`: the states to record (default: the current ones)."""
    with atomic_directory(destination) as staging:
        model.write_layout(staging, metrics=metrics)
        memory.save(staging / REPLAY_DIR)
        if regularizer is not None:
            regularizer.save(staging / REGULARIZER_DIR)
        write_json(staging / METRICS_FILE, metrics)
        write_json(staging / PROGRESS_FILE, progress)
        plain, tensors = generators if generators is not None else capture_rng_state()
        write_json(staging / RNG_JSON, plain)
        save_file({k: v.contiguous() for k, v in tensors.items()}, staging / RNG_TENSORS)
    return destination


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The checkpoint's progress record (None when there is no checkpoint), checked for shape."""
    recover_directory(directory)  # a swap killed between its renames is finished or undone first
    path = directory / PROGRESS_FILE
    if not path.is_file():
        return None
    progress = read_json(path)
    expected = {"method": str, "stream": list, "finished": list}
    if not isinstance(progress, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(progress).__name__}")
    for key, kind in expected.items():
        if not isinstance(progress.get(key), kind):
            raise ValueError(f"{path}: field {key!r} must be a {kind.__name__}, got {progress.get(key)!r}")
    if not all(isinstance(name, str) for name in progress["stream"] + progress["finished"]):
        raise ValueError(f"{path}: fields 'stream' and 'finished' must list task names")
    if progress["finished"] != progress["stream"][: len(progress["finished"])]:
        raise ValueError(f"{path}: 'finished' {progress['finished']} is not the start of 'stream' {progress['stream']}")
    if "settings" in progress and not isinstance(progress["settings"], dict):
        raise ValueError(f"{path}: field 'settings' must be an object")
    return progress


def read_regularizer(directory: Path, current):
    """The regulariser state the checkpoint holds, for a run that trains with `current` (a
    regulariser of the same kind and settings; another is a `ResumeMismatchError`)."""
    saved = directory / REGULARIZER_DIR
    if not saved.is_dir():
        raise ResumeMismatchError(f"{directory} holds no {REGULARIZER_DIR}/: it was not trained with the "
                                  f"{current.kind} regulariser this run uses")
    loaded = type(current).load(saved)
    if loaded.settings() != current.settings():
        raise ResumeMismatchError(f"{saved} was trained with {current.kind} settings {loaded.settings()}, "
                                  f"this run has {current.settings()}")
    return loaded


def restore_generators(directory: Path) -> bool:
    """Put the global generators back where the checkpoint left them; False for a checkpoint
    written before generator states were saved."""
    if not (directory / RNG_JSON).is_file():
        return False
    tensors_path = directory / RNG_TENSORS
    if not tensors_path.is_file():
        raise FileNotFoundError(f"{directory} has {RNG_JSON} but no {RNG_TENSORS}: the checkpoint is incomplete")
    try:
        restore_rng_state(read_json(directory / RNG_JSON), read_safetensors(tensors_path))
    except ValueError as error:
        raise ValueError(f"{directory / RNG_JSON} / {RNG_TENSORS}: {error}") from None
    return True
