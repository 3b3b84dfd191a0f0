"""The saved layout, in one place: names, writing, reading (only safetensors and JSON).

    conpet_config.json                 manifest: format, library version, base model, ConPetConfig, tasks, metrics
    tasks/<task>/adapter_config.json   + adapter_model.safetensors: a plain PEFT LoRA (and the task's head)
    selector/config.json               + model.safetensors: the selector's settings and state
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from ._io import read_json, recover_directory, write_json
from .config import FORMAT_VERSION
from .selectors import SELECTOR_CLASSES, TaskSelector

MANIFEST_NAME = "conpet_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
TASKS_DIR = "tasks"
SELECTOR_DIR = "selector"
SELECTOR_CONFIG_NAME = "config.json"
SELECTOR_WEIGHTS_NAME = "model.safetensors"


def write_layout(model, directory: Path, metrics: dict | None = None) -> None:
    """Manifest, `tasks/<name>/` PEFT adapters and `selector/` of `model`, into an existing directory."""
    directory = Path(directory)
    write_json(directory / MANIFEST_NAME, model.manifest(metrics))
    for index, task in enumerate(model.tasks):
        task_dir = directory / TASKS_DIR / task.name
        task_dir.mkdir(parents=True)
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.task_state(index).items()}
        save_file(tensors, task_dir / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        model.peft_config[task.name].save_pretrained(task_dir)
    if model.selector is not None:
        selector_dir = directory / SELECTOR_DIR
        selector_dir.mkdir()
        write_json(selector_dir / SELECTOR_CONFIG_NAME, {"kind": model.selector.kind, **model.selector.get_config()})
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.selector.state_dict().items()}
        save_file(state, selector_dir / SELECTOR_WEIGHTS_NAME, metadata={"format": "pt"})


def read_task_state(directory: Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(path, tensors) of one task's saved adapter."""
    weights_path = Path(directory) / TASKS_DIR / name / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"Task {name!r} has no {weights_path}")
    return weights_path, load_file(weights_path)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an hf_conpet system: no {MANIFEST_NAME}")
    manifest = read_json(path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{path} has format_version {version!r}; this hf_conpet {__version__} reads format "
            f"{FORMAT_VERSION} and older: upgrade hf_conpet"
        )
    for key in ("task_type", "base_model", "config", "tasks"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the key {key!r}")
    return manifest


def load_selector(selector_dir: Path, kind: str, device: torch.device) -> TaskSelector:
    settings = read_json(selector_dir / SELECTOR_CONFIG_NAME)
    if settings.pop("kind", None) != kind or kind not in SELECTOR_CLASSES:
        raise ValueError(f"{selector_dir}/config.json: unknown or mismatched selector kind {kind!r}")
    selector = SELECTOR_CLASSES[kind].from_config(settings).to(device)
    selector.load_state_dict(load_file(selector_dir / SELECTOR_WEIGHTS_NAME), strict=True)
    return selector


def resolve_system_dir(model_id_or_path, revision=None, token=None, endpoint=None, cache_dir=None) -> Path:
    path = Path(model_id_or_path)
    with contextlib.suppress(OSError):  # a save killed mid-swap: finish or undo it (if we may write here)
        recover_directory(path)
    if path.is_dir():
        return path
    from .hub import download_system

    return Path(download_system(str(model_id_or_path), revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir))
