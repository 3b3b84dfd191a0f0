"""Reading tasks: the `<task>/{train,test}.jsonl + meta.json` layout, and Hub datasets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union


from ..names import validate_task_name
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
    if "labels" not in meta:
        raise ValueError(f"task {task!r}: {path} lacks 'labels' (the closed label set)")
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
    See :meth:`Task.from_records` for the split options.
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
                _check_labels(meta["labels"], f"task {name!r} ({folder / 'meta.json'})"),
                meta.get("instruction", ""),
                train,
                test,
                validation_size=validation_size,
                seed=seed,
                max_train=max_train,
                max_test=max_test,
                template=template,
                metric=meta.get("metric", "exact_match"),
                source={"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")},
            )
        )
    return tasks

def tasks_from_hub(
    tasks: Mapping[str, Mapping[str, Any]],
    validation_size: Union[float, int] = 0.1,
    seed: int = 0,
    max_train: Optional[int] = None,
    max_test: Optional[int] = None,
    template: str = DEFAULT_TEMPLATE,
) -> list[Task]:
    """Build a stream from Hub datasets, in mapping order (needs network; untested offline).

    ``tasks`` maps a task name to ``load_dataset`` arguments plus the fields we need, e.g.
    ``{"sst2": {"path": "stanfordnlp/sst2", "input_column": "sentence", "output_column":
    "label", "instruction": "...", "labels": ["Bad", "Good"]}}``. ``output_column`` may hold
    label strings or ``ClassLabel`` ints (mapped through ``labels``, default the ClassLabel
    names). Optional: ``name``, ``train_split`` ("train"), ``test_split`` ("test"),
    ``validation_split`` (default: carve from train).
    """
    from datasets import ClassLabel, load_dataset

    built = []
    for index, (name, spec) in enumerate(tasks.items()):
        spec = dict(spec)
        input_column = spec.pop("input_column", "input")
        output_column = spec.pop("output_column", "output")
        instruction = spec.pop("instruction", "")
        labels = spec.pop("labels", None)
        split_names = {
            "train": spec.pop("train_split", "train"),
            "test": spec.pop("test_split", "test"),
            "validation": spec.pop("validation_split", None),
        }
        loaded = load_dataset(**spec)
        records = {}
        for split, split_name in split_names.items():
            if split_name is None:
                continue
            dataset = loaded[split_name]
            feature = dataset.features[output_column]
            if isinstance(feature, ClassLabel):
                labels = labels if labels is not None else list(feature.names)
                values = list(dataset[output_column])
                if any(not 0 <= value < len(labels) for value in values):
                    raise ValueError(
                        f"task {name!r}: split {split_name!r} of {spec.get('path')!r} has unlabelled or "
                        f"out-of-range classes (e.g. -1, as in GLUE test sets); pick a labelled split"
                    )
                outputs = [labels[value] for value in values]
            else:
                outputs = list(dataset[output_column])
            ids = (
                dataset["id"]
                if "id" in dataset.column_names
                else [f"{name}-{split}-{k}" for k in range(len(dataset))]
            )
            records[split] = [
                {"id": str(example_id), "input": text, "output": output}
                for example_id, text, output in zip(ids, dataset[input_column], outputs)
            ]
        if labels is None:
            raise ValueError(f"task {name!r}: give 'labels' (the output column is not a ClassLabel)")
        built.append(
            Task.from_records(
                name,
                index,
                labels,
                instruction,
                records["train"],
                records["test"],
                records.get("validation"),
                validation_size=validation_size,
                seed=seed,
                max_train=max_train,
                max_test=max_test,
                template=template,
                source={
                    split: f"{spec.get('path')}[{split_name}]"
                    for split, split_name in split_names.items()
                },
            )
        )
    return built
