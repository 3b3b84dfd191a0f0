"""Continual SFT with TRL: chat data as a task stream, and each task's rows for `trl.SFTTrainer`.

    from trl import SFTConfig, SFTTrainer
    from hf_conpet.sft import chat_stream, sft_dataset

    stream = chat_stream({"support": support_chats, "billing": billing_chats}, tokenizer)
    callback = ContinualCallback(model, stream, "conpet", batches_per_task=60)
    for task in stream:
        model.add_task(task.name, labels=task.labels, instruction=task.instruction)
        SFTTrainer(model=model, args=SFTConfig("out", max_steps=60), train_dataset=sft_dataset(callback, task),
                   processing_class=tokenizer, callbacks=[callback]).train()

One `SFTTrainer` per task, as with the stock `Trainer`: its optimizer must see the task's freshly
added module. The rows are prompt/completion pairs whose prompt is the conversation so far
through the base's chat template (generation prompt included), so TRL trains on the answer only
(completion-only loss) and evaluation, routing and the demo read exactly the prompts training saw.
A batch without task ids trains the task being trained (`ConPetModel.forward`). TRL is an optional
extra (`pip install hf-conpet[trl]`); this module never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from datasets import Dataset

from .data import TaskStream
from .data.loading import DatasetSpecError, _chat_pair
from .data.tasks import Task

#: Distinct answers up to which a chat task's label set is read from its training answers.
MAX_INFERRED_LABELS = 32


def chat_prompt(tokenizer: Any, messages: list[Mapping[str, Any]]) -> str:
    """The conversation up to (not including) the last assistant turn, as the model sees it."""
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer.apply_chat_template(list(messages[:last]), tokenize=False, add_generation_prompt=True)


def _conversations(split: Dataset, column: str, where: str) -> list[tuple[str, list, str]]:
    """(user text, conversation, answer) per row, from a `messages` column or prompt/completion columns."""
    rows = []
    for k, row in enumerate(split):
        if column in row:
            messages = list(row[column])
        elif "prompt" in row and "completion" in row:
            prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
            completion = row["completion"] if isinstance(row["completion"], list) else [{"role": "assistant", "content": row["completion"]}]
            messages = list(prompt) + list(completion)
        else:
            raise DatasetSpecError(f"{where}: expected a {column!r} column or prompt/completion columns, got {split.column_names}")
        text, answer = _chat_pair(messages, f"{where}, row {k}")
        rows.append((text, messages, answer))
    return rows


def chat_stream(
    tasks: Mapping[str, Mapping[str, Dataset]],
    tokenizer: Any,
    *,
    messages_column: str = "messages",
    labels: Optional[Mapping[str, list[str]]] = None,
    instructions: Optional[Mapping[str, str]] = None,
    **options: Any,
) -> TaskStream:
    """A `TaskStream` from chat datasets: `{task: {"train": Dataset, "test": Dataset}}` (a
    `DatasetDict` works), each row a conversation (`messages`) or prompt/completion columns.
    The label set of a task is given (`labels`) or read from its training answers (closed sets of
    at most 32 answers: the tasks are scored by exact match). `options` go to `Task.from_records`
    (validation_size, seed, max_train, max_test)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat_stream needs a tokenizer with a chat template (tokenizer.chat_template)")
    built = []
    for index, (name, splits) in enumerate(tasks.items()):
        where = f"task {name!r}"
        for split in ("train", "test"):
            if split not in splits:
                raise DatasetSpecError(f"{where}: no {split!r} split (it has {sorted(splits)})")
        converted = {split: _conversations(splits[split], messages_column, f"{where}, split {split!r}")
                     for split in ("train", "test", "validation") if split in splits}
        task_labels = (labels or {}).get(name)
        if task_labels is None:
            task_labels = sorted({answer for _, _, answer in converted["train"]})
            if len(task_labels) > MAX_INFERRED_LABELS:
                raise DatasetSpecError(f"{where}: {len(task_labels)} distinct answers: give labels=... (free-text tasks "
                                       "are not supported yet)")
        records = {split: [{"id": f"{name}-{split}-{k}", "input": text, "output": answer,
                            "prompt": chat_prompt(tokenizer, messages)}
                           for k, (text, messages, answer) in enumerate(rows)] for split, rows in converted.items()}
        built.append(Task.from_records(name, index, task_labels, (instructions or {}).get(name, ""), records["train"],
                                       records["test"], records.get("validation"), **options))
    return TaskStream(built, tokenizer=tokenizer)


def sft_dataset(callback, task) -> Dataset:
    """The rows `SFTTrainer` should train on for `task` (and mark it as the task in progress):
    what `callback.train_dataset(task)` gives (the task's rows, or ConPET's replay batches for a
    shared module), as prompt/completion text."""
    rows = callback.train_dataset(task)
    return Dataset.from_dict({"prompt": list(rows["prompt"]), "completion": list(rows["output"])})
