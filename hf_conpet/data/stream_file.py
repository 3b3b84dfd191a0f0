"""A stream file: the tasks of a run and where each one's data lives, in YAML or JSON.

    # stream.yaml                       hf-conpet run --stream stream.yaml
    template: "{instruction}\\n{input}\\nOutput: "     # optional; or a preset name: superni
    tasks:
      - name: sentiment
        dataset: stanfordnlp/sst2        # a Hub dataset id ...
        input: sentence                  # input column (default "input")
        output: label                    # answer column (default "output"); a ClassLabel gives the labels
        splits: {train: train, test: validation}
        instruction: Is the sentiment positive or negative?
      - name: topics
        dataset: data/topics/            # ... or a local file or folder (parquet, json, jsonl, csv)
        data_files: {train: train.parquet, test: test.parquet}   # relative to this file
        labels: [world, sports, business, science]
      - name: support
        dataset: data/support.jsonl
        chat: messages                   # a chat column: the last assistant turn is the answer
      - name: summaries                  # no labels: a free-text task, scored by ROUGE-L
        dataset: data/summaries.jsonl
        metric: rougeL                   # optional: exact_match with labels, rougeL without

Every key is checked when the file is read: an unknown key, a duplicate task, a missing dataset,
split or column is one line naming it, before any training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .loading import DatasetSpecError, tasks_from_hub
from .stream import TaskStream
from .tasks import DEFAULT_TEMPLATE

TASK_KEYS = {"name", "dataset", "config", "data_files", "splits", "input", "output", "chat", "labels", "instruction",
             "revision", "metric"}
FILE_KEYS = {"tasks", "template"}
LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


class StreamFileError(ValueError):
    """The stream file cannot describe a run; the message names the file, the task and the key."""


def read_stream_file(path: str | Path) -> dict[str, Any]:
    """The stream file's content (YAML or JSON), checked key by key."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise StreamFileError(f"stream file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise StreamFileError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise StreamFileError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                              f"{' '.join(str(error).split())}") from None
    if not isinstance(content, dict) or not isinstance(content.get("tasks"), list) or not content["tasks"]:
        raise StreamFileError(f"{path}: expected a mapping with a non-empty 'tasks' list")
    unknown = sorted(set(content) - FILE_KEYS)
    if unknown:
        raise StreamFileError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(FILE_KEYS))})")
    seen = set()
    for position, task in enumerate(content["tasks"]):
        if not isinstance(task, dict):
            raise StreamFileError(f"{path}: tasks[{position}] must be a mapping, got {type(task).__name__}")
        name = task.get("name")
        where = f"{path}: task {name!r}" if name else f"{path}: tasks[{position}]"
        unknown = sorted(set(task) - TASK_KEYS)
        if unknown:
            raise StreamFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TASK_KEYS))})")
        for key in ("name", "dataset"):
            if not isinstance(task.get(key), str) or not task[key]:
                raise StreamFileError(f"{where}: {key!r} must be a non-empty string")
        if name in seen:
            raise StreamFileError(f"{path}: task {name!r} is listed twice")
        seen.add(name)
        if task.get("chat") is not None and ("input" in task or "output" in task):
            raise StreamFileError(f"{where}: give either 'chat' or 'input'/'output', not both")
        for key, kind in (("splits", dict), ("data_files", (dict, str, list)), ("labels", list)):
            if key in task and not isinstance(task[key], kind):
                raise StreamFileError(f"{where}: {key!r} has the wrong type ({type(task[key]).__name__})")
        for key in ("config", "revision", "instruction", "chat", "input", "output"):
            if task.get(key) is not None and not isinstance(task[key], str):
                raise StreamFileError(f"{where}: {key!r} must be a string, got {type(task[key]).__name__}")
        if "data_files" in task:
            _check_data_files(task["data_files"], where)
        unknown_splits = sorted(set(task.get("splits") or {}) - {"train", "test", "validation"})
        if unknown_splits:
            raise StreamFileError(f"{where}: unknown split role {unknown_splits[0]!r} in 'splits' (train, test, validation)")
    return content


def _check_data_files(data_files: Any, where: str) -> None:
    """`data_files` as `load_dataset` takes it: a path, a non-empty list of paths, or a non-empty
    mapping of split names to either."""
    def paths(value: Any) -> bool:
        if isinstance(value, str):
            return bool(value)
        return isinstance(value, list) and bool(value) and all(isinstance(item, str) and item for item in value)

    if isinstance(data_files, dict):
        if not data_files:
            raise StreamFileError(f"{where}: 'data_files' is an empty mapping (give split: file)")
        for split, value in data_files.items():
            if not isinstance(split, str) or not paths(value):
                raise StreamFileError(f"{where}: 'data_files' entry {split!r} must be a file or a non-empty list of files, got {value!r}"[:300])
    elif not paths(data_files):
        raise StreamFileError(f"{where}: 'data_files' must be a file, a non-empty list of files or a split: file mapping, got {data_files!r}"[:300])


def _local_files(folder: Path, files: str | list[str]) -> str | list[str]:
    return str(folder / files) if isinstance(files, str) else [str(folder / f) for f in files]


def _load_arguments(task: dict[str, Any], base: Path) -> dict[str, Any]:
    """`load_dataset` arguments for a task: a Hub id as is, a local file or folder via its builder."""
    dataset, data_files = task["dataset"], task.get("data_files")
    local = (base / dataset).expanduser()
    arguments: dict[str, Any] = {}
    if local.exists() or dataset.startswith((".", "/", "~")):
        if not local.exists():
            raise StreamFileError(f"task {task['name']!r}: dataset {dataset!r} is a local path that does not exist ({local})")
        if task.get("revision"):
            raise StreamFileError(f"task {task['name']!r}: 'revision' pins a Hub dataset; {dataset!r} is a local path")
        folder = local if local.is_dir() else local.parent
        if data_files is None:
            data_files = str(local) if local.is_file() else None
        elif isinstance(data_files, dict):
            data_files = {split: _local_files(folder, files) for split, files in data_files.items()}
        else:
            data_files = _local_files(folder, data_files)
        first = next(iter(data_files.values())) if isinstance(data_files, dict) else data_files
        sample = first[0] if isinstance(first, list) else first
        builder = LOCAL_BUILDERS.get(Path(str(sample)).suffix) if sample else None
        if builder is None and local.is_dir():
            arguments["path"] = str(local)
        elif builder is None:
            raise StreamFileError(f"task {task['name']!r}: cannot tell the format of {sample or dataset} "
                                  f"(one of {', '.join(LOCAL_BUILDERS)})")
        else:
            arguments["path"] = builder
        if data_files is not None:
            arguments["data_files"] = data_files
    else:
        arguments["path"] = dataset
        if data_files is not None:
            arguments["data_files"] = data_files
        if task.get("revision"):
            arguments["revision"] = task["revision"]
    if task.get("config"):
        arguments["name"] = task["config"]
    return arguments


def load_stream_file(path: str | Path, tokenizer: Any = None, **options: Any) -> TaskStream:
    """The `TaskStream` a stream file describes (options: `tasks_from_hub`'s split sizes and seed)."""
    path = Path(path).expanduser().resolve()
    content = read_stream_file(path)
    specs = {}
    for task in content["tasks"]:
        spec = _load_arguments(task, path.parent)
        splits = task.get("splits") or {}
        spec.update(train_split=splits.get("train", "train"), test_split=splits.get("test", "test"),
                    validation_split=splits.get("validation"), instruction=task.get("instruction") or "",
                    labels=task.get("labels"), metric=task.get("metric"))
        if task.get("chat"):
            spec["chat_column"] = task["chat"]
        else:
            spec.update(input_column=task.get("input", "input"), output_column=task.get("output", "output"))
        specs[task["name"]] = spec
    try:
        tasks = tasks_from_hub(specs, template=content.get("template") or DEFAULT_TEMPLATE, **options)
    except DatasetSpecError as error:
        raise StreamFileError(f"{path}: {error}") from None
    except ValueError as error:  # a task name, a label set
        raise StreamFileError(f"{path}: {' '.join(str(error).split())}") from None
    return TaskStream(tasks, tokenizer=tokenizer)
