"""Task streams: tasks as `datasets.Dataset` (`tasks.py`), reading them (`loading.py`), the stream
(`stream.py`) and its collators (`collators.py`).

A task is text generation: a closed label set scored by exact match (the Long Sequence
benchmark) or free text scored by ROUGE-L (SuperNI), as its ``meta.json`` says.
Each example carries its ``task_id`` so that training can teach the selector and evaluation can
score routing, while the model itself is never told the task at inference.

On-disk layout read by :meth:`TaskStream.from_dir` (that of ``shared/data/long_sequence``)::

    <root>/<task>/train.jsonl   {"id", "input", "output"} per line
    <root>/<task>/test.jsonl    same schema
    <root>/<task>/meta.json     {"labels": [...], "instruction": "...", ...}

The released data has dev == test, so the validation split is carved from train (fixed seed).
"""

from ..names import validate_task_name
from .collators import (
    CausalLMGenerationCollator,
    CausalLMTrainingCollator,
    ClassificationCollator,
    Seq2SeqCollator,
    check_answers_fit,
)
from .stream import TaskStream
from .tasks import COLUMNS, DEFAULT_TEMPLATE, IGNORE_INDEX, NON_MODEL_KEYS, SPLITS, Task

__all__ = [
    "check_answers_fit",
    "COLUMNS",
    "DEFAULT_TEMPLATE",
    "IGNORE_INDEX",
    "NON_MODEL_KEYS",
    "SPLITS",
    "CausalLMGenerationCollator",
    "CausalLMTrainingCollator",
    "ClassificationCollator",
    "Seq2SeqCollator",
    "Task",
    "TaskStream",
    "validate_task_name",
]
