"""The saved layout, in one place: names, writing, reading (only safetensors and JSON).

    conpet_config.json                 manifest: format, library version, base model, ConPetConfig, tasks, metrics
    tasks/<task>/adapter_config.json   + adapter_model.safetensors: a plain PEFT LoRA (and the task's head)
    selector/config.json               + model.safetensors: the selector's settings and state
    examples.json                      optional: a few test inputs per task, for the demo to click

Reading is strict, because a saved system may come from anyone's Hub repo: every field is
checked for its type before use, sizes are checked against the manifest and the base model before
anything is allocated, tensors must be finite, and every error names the file and the field.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from . import __version__
from ._io import read_json, read_safetensors, recover_directory, safetensors_shapes, write_json
from .config import FORMAT_VERSION
from .names import (  # noqa: F401  (re-exported: the layout's names)
    ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, EXAMPLES_NAME, MANIFEST_NAME, SELECTOR_CONFIG_NAME, SELECTOR_DIR,
    SELECTOR_WEIGHTS_NAME, TASKS_DIR, validate_task_name,
)
from .selectors import SELECTOR_CLASSES, TaskSelector

#: At most this many examples per task, each at most this long, are saved (and read back).
MAX_EXAMPLES_PER_TASK, MAX_EXAMPLE_CHARS = 20, 4000


def write_layout(model, directory: Path, metrics: dict | None = None, examples: dict[str, list[str]] | None = None) -> None:
    """Manifest, `tasks/<name>/` PEFT adapters, `selector/` and (when given) `examples.json` of
    `model`, into an existing directory."""
    directory = Path(directory)
    if examples:
        write_json(directory / EXAMPLES_NAME, {"format_version": 1, "examples": check_examples(examples)})
    write_json(directory / MANIFEST_NAME, model.manifest(metrics))
    for index, task in enumerate(model.tasks):
        task_dir = directory / TASKS_DIR / task.name
        task_dir.mkdir(parents=True)
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.task_state(index).items()}
        save_file(tensors, task_dir / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        write_adapter_config(model.peft_config[task.name], task_dir)
    if model.selector is not None:
        selector_dir = directory / SELECTOR_DIR
        selector_dir.mkdir()
        write_json(selector_dir / SELECTOR_CONFIG_NAME, {"kind": model.selector.kind, **model.selector.get_config()})
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.selector.state_dict().items()}
        save_file(state, selector_dir / SELECTOR_WEIGHTS_NAME, metadata={"format": "pt"})


def check_examples(examples: Any, where: str = "examples") -> list[dict[str, str]]:
    """`{task: [input, ...]}` (or the saved list of `{"task", "input"}`) as that list, checked:
    task names, plain strings, bounded counts and lengths."""
    if isinstance(examples, dict):
        rows = [{"task": task, "input": text} for task, texts in examples.items()
                for text in (texts if isinstance(texts, list) else [texts])]
    elif isinstance(examples, list):
        rows = examples
    else:
        raise ValueError(f"{where}: expected {{task: [input, ...]}}, got {type(examples).__name__}")
    counts: dict[str, int] = {}
    for position, row in enumerate(rows):
        if not (isinstance(row, dict) and set(row) == {"task", "input"} and isinstance(row["input"], str)):
            raise ValueError(f"{where}: example {position} must be {{'task': name, 'input': text}}, got {row!r}"[:200])
        try:  # the task the example comes from (a shared-module system has one module for all of them)
            validate_task_name(row["task"])
        except ValueError as error:
            raise ValueError(f"{where}: example {position}: {error}") from None
        if not row["input"].strip() or len(row["input"]) > MAX_EXAMPLE_CHARS:
            raise ValueError(f"{where}: example {position} must be a non-empty text of at most {MAX_EXAMPLE_CHARS} characters")
        counts[row["task"]] = counts.get(row["task"], 0) + 1
        if counts[row["task"]] > MAX_EXAMPLES_PER_TASK:
            raise ValueError(f"{where}: more than {MAX_EXAMPLES_PER_TASK} examples for task {row['task']!r}")
    return [dict(row) for row in rows]


def usable_examples(texts, count: int) -> list[str]:
    """The first `count` of `texts` that `check_examples` accepts (non-blank, at most
    MAX_EXAMPLE_CHARS): a long test document is skipped for the demo, not a failed save."""
    return [text for text in texts if isinstance(text, str) and text.strip() and len(text) <= MAX_EXAMPLE_CHARS][:count]


def read_examples(directory: Path) -> list[dict[str, str]]:
    """The examples saved with a system ([] when it has none)."""
    path = Path(directory) / EXAMPLES_NAME
    if not path.is_file():
        return []
    saved = read_json(path)
    _require(isinstance(saved, dict) and isinstance(saved.get("examples"), list), path, "examples", "a list", saved)
    return check_examples(saved["examples"], where=str(path))


def write_adapter_config(config, directory: Path) -> None:
    """PEFT's `adapter_config.json`, with sets written as sorted lists: PEFT writes a set in hash
    order, so two saves of one system would differ byte for byte."""
    values = {key: sorted(value) if isinstance(value, set) else value for key, value in config.to_dict().items()}
    (Path(directory) / ADAPTER_CONFIG_NAME).write_text(json.dumps(values, indent=2, sort_keys=True), encoding="utf-8")


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: tensor {key!r} holds NaN or inf values")


def read_task_state(directory: Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(path, tensors) of one task's saved adapter, every tensor finite."""
    weights_path = Path(directory) / TASKS_DIR / name / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"Task {name!r} has no {weights_path}")
    tensors = read_safetensors(weights_path)
    check_finite(tensors, weights_path)
    return weights_path, tensors


# ----------------------------------------------------------------------------------- manifest
TASK_TYPES = ("causal_lm", "seq2seq_lm", "sequence_classification")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(condition: bool, path: Path, field: str, expected: str, value: Any) -> None:
    if not condition:
        shown = repr(value)
        raise ValueError(f"{path}: field {field!r} must be {expected}, got {_type_name(value)} {shown[:80]}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def validate_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest with every field checked for its type (before any of it is used)."""
    _require(isinstance(manifest, dict), path, "(top level)", "a JSON object", manifest)
    version = manifest.get("format_version")
    if not _is_int(version) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{path} has format_version {version!r}; this hf_conpet {__version__} reads format "
            f"{FORMAT_VERSION} and older: upgrade hf_conpet"
        )
    for key in ("task_type", "base_model", "config", "tasks"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the key {key!r}")
    _require(manifest["task_type"] in TASK_TYPES, path, "task_type", f"one of {TASK_TYPES}", manifest["task_type"])
    base = manifest["base_model"]
    _require(isinstance(base, dict), path, "base_model", "an object", base)
    for key in ("name_or_path", "revision", "model_type", "license"):
        _require(_optional_str(base.get(key)), path, f"base_model.{key}", "a string or null", base.get(key))
    _require(base.get("architectures") is None or _str_list(base["architectures"]), path,
             "base_model.architectures", "a list of strings or null", base.get("architectures"))
    shapes = base.get("target_shapes")
    _require(isinstance(shapes, dict) and bool(shapes), path, "base_model.target_shapes", "a non-empty object", shapes)
    for layer, shape in shapes.items():
        _require(isinstance(shape, list) and len(shape) == 2 and all(_is_int(n) and n > 0 for n in shape), path,
                 f"base_model.target_shapes.{layer}", "[out_features, in_features]", shape)
    weights = base.get("weights")
    _require(weights is None or (isinstance(weights, dict) and isinstance(weights.get("samples"), list)
                                 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights["samples"])),
             path, "base_model.weights", "an object with a list of numbers 'samples', or null", weights)
    _require(isinstance(manifest["config"], dict), path, "config", "an object", manifest["config"])
    tasks = manifest["tasks"]
    _require(isinstance(tasks, list), path, "tasks", "a list", tasks)
    seen = set()
    for position, entry in enumerate(tasks):
        where = f"tasks[{position}]"
        _require(isinstance(entry, dict), path, where, "an object", entry)
        try:
            name = validate_task_name(entry.get("name"))
        except ValueError as error:
            raise ValueError(f"{path}: field '{where}.name': {error}") from None
        if name in seen:
            raise ValueError(f"{path}: field '{where}.name': task {name!r} is listed twice")
        seen.add(name)
        labels = entry.get("labels")
        _require(labels is None or (_str_list(labels) and len(set(labels)) == len(labels)), path, f"{where}.labels",
                 "a list of distinct strings or null", labels)
        _require(_optional_str(entry.get("instruction")), path, f"{where}.instruction", "a string or null", entry.get("instruction"))
        _require(entry.get("metadata") is None or isinstance(entry["metadata"], dict), path, f"{where}.metadata",
                 "an object or null", entry.get("metadata"))
    selector = manifest.get("selector")
    _require(selector is None or selector in SELECTOR_CLASSES, path, "selector",
             f"one of {sorted(SELECTOR_CLASSES)} or null", selector)
    _require(manifest.get("metrics") is None or isinstance(manifest["metrics"], dict), path, "metrics",
             "an object or null", manifest.get("metrics"))
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an hf_conpet system: no {MANIFEST_NAME}")
    return validate_manifest(read_json(path), path)


# ----------------------------------------------------------------------------------- selector
#: Widths a selector config may ask for; the checks against the saved tensors come on top.
MAX_SELECTOR_SIZE = 1 << 20


def load_selector(selector_dir: Path, kind: str, device: torch.device, num_tasks: int,
                  feature_size: Callable[[Any], int]) -> TaskSelector:
    """The saved selector, after checking its config against the manifest (`kind`, `num_tasks`)
    and the base model (`feature_size(spec)`), and its tensors' shapes against that config, all
    before anything of its size is allocated (the check builds it on the meta device)."""
    config_path, weights_path = selector_dir / SELECTOR_CONFIG_NAME, selector_dir / SELECTOR_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"the manifest names a {kind!r} selector but {path} is missing")
    settings = read_json(config_path)
    _require(isinstance(settings, dict), config_path, "(top level)", "a JSON object", settings)
    _require(settings.pop("kind", None) == kind, config_path, "kind", f"{kind!r} (the manifest's selector)", settings.get("kind"))
    selector_class = SELECTOR_CLASSES[kind]
    for key, value in settings.items():
        if _is_int(value):
            _require(abs(value) <= MAX_SELECTOR_SIZE, config_path, key, f"an integer of at most {MAX_SELECTOR_SIZE}", value)
        elif isinstance(value, float):
            _require(math.isfinite(value), config_path, key, "a finite number", value)
    if "num_tasks" in settings:
        _require(settings["num_tasks"] == num_tasks, config_path, "num_tasks", f"{num_tasks} (the manifest's task count)", settings["num_tasks"])
    try:
        if "hidden_size" in settings:
            expected = feature_size(selector_class.spec_for(**settings))
            _require(settings["hidden_size"] == expected, config_path, "hidden_size",
                     f"{expected} (the base model's feature width)", settings["hidden_size"])
        with torch.device("meta"):
            skeleton = selector_class.from_config(dict(settings))
    except (TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{config_path}: {error}") from None
    expected_shapes = {key: list(value.shape) for key, value in skeleton.state_dict().items()}
    saved_shapes = safetensors_shapes(weights_path)
    if saved_shapes != expected_shapes:
        differing = sorted(k for k in set(saved_shapes) | set(expected_shapes) if saved_shapes.get(k) != expected_shapes.get(k))
        shown = ", ".join(f"{k}: saved {saved_shapes.get(k)}, config gives {expected_shapes.get(k)}" for k in differing[:3])
        raise ValueError(f"{weights_path} does not fit {config_path} ({len(differing)} tensors differ: {shown})")
    state = read_safetensors(weights_path)
    check_finite(state, weights_path)
    selector = selector_class.from_config(settings).to(device)
    selector.load_state_dict(state, strict=True)
    return selector


def resolve_system_dir(model_id_or_path, revision=None, token=None, endpoint=None, cache_dir=None) -> Path:
    path = Path(model_id_or_path)
    with contextlib.suppress(OSError):  # a save killed mid-swap: finish or undo it (if we may write here)
        recover_directory(path)
    if path.is_dir():
        return path
    from .hub import download_system

    return Path(download_system(str(model_id_or_path), revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir))
