"""Reading tasks: the `<task>/{train,test}.jsonl + meta.json` layout, and Hub datasets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union


from ..names import validate_task_name
from ..scoring import check_metric
from .tasks import DEFAULT_TEMPLATE, Task, _check_labels


def _read_jsonl(path: Path, task: str) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: missing file {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"task {task!r}: malformed JSON in {path} line {line_number}: {error.msg}"
                ) from None
    return records


def _read_meta(path: Path, task: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: missing file {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"task {task!r}: malformed JSON in {path} line {error.lineno}: {error.msg}"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"task {task!r}: {path} must hold a JSON object")
    return meta


def tasks_from_dir(
    path: Union[str, Path],
    order: Optional[Sequence[str]] = None,
    validation_size: Union[float, int] = 0.1,
    seed: int = 0,
    max_train: Optional[int] = None,
    max_test: Optional[int] = None,
    template: str = DEFAULT_TEMPLATE,
) -> list[Task]:
    """Read ``<path>/<task>/{train.jsonl,test.jsonl,meta.json}``; ``order=None`` = sorted folders.

    The task name is the folder name (``meta.json``'s ``task`` field is informative only).
    ``meta.json``'s ``labels`` null or absent makes a free-text task; its ``metric`` (default
    ``exact_match``) must be one hf_conpet scores. ``template`` is a format string or a name in
    :data:`~hf_conpet.data.tasks.TEMPLATES` (``superni``). See :meth:`Task.from_records` for the
    split options.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"task directory {root} does not exist")
    if order is None:
        names = sorted(
            entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
        )
        if not names:
            raise FileNotFoundError(f"no task folders in {root}")
    else:
        if isinstance(order, str):
            raise ValueError(f"order must be a list of task names, not the string {order!r}")
        names = list(order)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate task names in order: {duplicates}")
        if not names:
            raise ValueError("order is empty: name at least one task")
        for name in names:
            if not (isinstance(name, str) and (root / name).is_dir()):
                available = sorted(
                    entry.name
                    for entry in root.iterdir()
                    if entry.is_dir() and not entry.name.startswith(".")
                )
                raise ValueError(
                    f"unknown task {name!r} in order: no folder {root / str(name)}; "
                    f"available: {available}"
                )
    tasks = []
    for index, name in enumerate(names):
        validate_task_name(name)
        folder = root / name
        meta = _read_meta(folder / "meta.json", name)
        train = _read_jsonl(folder / "train.jsonl", name)
        test = _read_jsonl(folder / "test.jsonl", name)
        tasks.append(
            Task.from_records(
                name,
                index,
                _check_labels(meta.get("labels"), f"task {name!r} ({folder / 'meta.json'})"),
                meta.get("instruction", ""),
                train,
                test,
                validation_size=validation_size,
                seed=seed,
                max_train=max_train,
                max_test=max_test,
                template=template,
                metric=check_metric(meta.get("metric", "exact_match"), f"task {name!r} ({folder / 'meta.json'})"),
                source={"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")},
            )
        )
    return tasks

class DatasetSpecError(ValueError):
    """A task's dataset, split, column or labels cannot be used (found before any training)."""


def tasks_from_hub(
    tasks: Mapping[str, Mapping[str, Any]],
    validation_size: Union[float, int] = 0.1,
    seed: int = 0,
    max_train: Optional[int] = None,
    max_test: Optional[int] = None,
    template: str = DEFAULT_TEMPLATE,
) -> list[Task]:
    """Tasks from `datasets` datasets (Hub ids or local parquet/json/csv), in mapping order.

    ``tasks`` maps a task name to ``load_dataset`` arguments (``path``, ``name``, ``data_files``,
    ...) plus what we need: ``input_column`` / ``output_column`` (default "input" / "output"), or
    ``chat_column`` (a list of ``{"role", "content"}`` messages: the last assistant message is the
    answer, the messages before it the input); ``labels`` (default: the ``ClassLabel`` names of the
    output column, else free text); ``metric`` (default ``exact_match`` with labels, ``rougeL``
    for free text); ``instruction``; ``train_split`` ("train"), ``test_split`` ("test"),
    ``validation_split`` (default: carved from train). Every dataset is loaded and every split,
    column and label set checked before any task is built: a problem is one `DatasetSpecError`
    line naming the task, the dataset and what is missing. `HF_DATASETS_OFFLINE=1` is respected
    (by `datasets`).
    """
    from datasets import ClassLabel, load_dataset

    loaded = []
    for name, spec in tasks.items():
        validate_task_name(name)
        spec = dict(spec)
        fields = {key: spec.pop(key, default) for key, default in (
            ("input_column", "input"), ("output_column", "output"), ("chat_column", None), ("instruction", ""),
            ("labels", None), ("metric", None), ("train_split", "train"), ("test_split", "test"), ("validation_split", None))}
        files = spec.get("data_files")
        shown = files if files and spec.get("path") in ("parquet", "json", "csv") else spec.get("path")
        where = f"task {name!r} ({shown!r})"
        try:
            dataset = load_dataset(**spec)
        except Exception as error:  # noqa: BLE001 - datasets raises many kinds; the user gets one line
            raise DatasetSpecError(f"{where}: cannot load the dataset: {type(error).__name__}: {' '.join(str(error).split())}") from None
        splits = {split: fields[f"{split}_split"] for split in ("train", "test", "validation") if fields[f"{split}_split"]}
        for split, split_name in splits.items():
            if split_name not in dataset:
                raise DatasetSpecError(f"{where}: no split {split_name!r} (the {split} split); it has {sorted(dataset)}")
            columns = [fields["chat_column"]] if fields["chat_column"] else [fields["input_column"], fields["output_column"]]
            missing = [column for column in columns if column not in dataset[split_name].column_names]
            if missing:
                raise DatasetSpecError(f"{where}: split {split_name!r} has no column {missing[0]!r}; "
                                       f"its columns are {dataset[split_name].column_names}")
        labels = fields["labels"]
        output_feature = None if fields["chat_column"] else dataset[splits["train"]].features[fields["output_column"]]
        if labels is None and isinstance(output_feature, ClassLabel):
            labels = list(output_feature.names)
        try:
            metric = check_metric(fields["metric"] or ("exact_match" if labels is not None else "rougeL"), where)
        except ValueError as error:
            raise DatasetSpecError(str(error)) from None
        loaded.append((name, where, dataset, splits, fields, labels, metric, output_feature))

    built = []
    for index, (name, where, dataset, splits, fields, labels, metric, output_feature) in enumerate(loaded):
        records = {split: _records(dataset[split_name], name, split, where, fields, labels, output_feature)
                   for split, split_name in splits.items()}
        built.append(Task.from_records(
            name, index, labels, fields["instruction"] or "", records["train"], records["test"], records.get("validation"),
            validation_size=validation_size, seed=seed, max_train=max_train, max_test=max_test, template=template,
            metric=metric, source={split: f"{where}[{split_name}]" for split, split_name in splits.items()},
        ))
    return built


def _records(split, name, split_label, where, fields, labels, output_feature) -> list[dict[str, str]]:
    """`{"id", "input", "output"}` rows of one split."""
    from datasets import ClassLabel

    if fields["chat_column"]:
        pairs = [_chat_pair(messages, f"{where}, split {split_label!r}, row {k}") for k, messages in enumerate(split[fields["chat_column"]])]
    else:
        outputs = list(split[fields["output_column"]])
        if isinstance(output_feature, ClassLabel):
            # a class index means the ClassLabel's name, whatever order a given `labels` lists them in
            if any(not 0 <= value < output_feature.num_classes for value in outputs):
                raise DatasetSpecError(f"{where}: split {split_label!r} has unlabelled or out-of-range classes (e.g. -1, "
                                       "as in GLUE test sets); pick a labelled split")
            outputs = [output_feature.names[value] for value in outputs]
            unknown = sorted(set(outputs) - set(labels or output_feature.names))
            if unknown:
                raise DatasetSpecError(f"{where}: the ClassLabel names {unknown} are not among the labels {list(labels)}")
        pairs = list(zip(split[fields["input_column"]], outputs))
    ids = split["id"] if "id" in split.column_names else [f"{name}-{split_label}-{k}" for k in range(len(split))]
    return [{"id": str(example_id), "input": str(text), "output": str(output)} for example_id, (text, output) in zip(ids, pairs)]


def _chat_pair(messages: Any, where: str) -> tuple[str, str]:
    """(input, answer) of a conversation: the last assistant turn answers what came before it."""
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages):
        raise DatasetSpecError(f"{where}: a chat column must hold lists of {{'role', 'content'}} messages")
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise DatasetSpecError(f"{where}: the conversation has no assistant answer after a user turn")
    return "\n".join(str(m["content"]) for m in messages[:last] if m["role"] != "system"), str(messages[last]["content"])
