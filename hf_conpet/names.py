"""Names on disk, in one place: the saved layout's file names, and task names (they become
folder names, `tasks/<name>/`, and PEFT adapter names). The saving code, the CLI, the card and the
Space all read these, so each name is spelled once."""

from __future__ import annotations

import re

MANIFEST_NAME = "conpet_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
TASKS_DIR = "tasks"
SELECTOR_DIR = "selector"
SELECTOR_CONFIG_NAME = "config.json"
SELECTOR_WEIGHTS_NAME = "model.safetensors"
EXAMPLES_NAME = "examples.json"
MATRIX_IMAGE_NAME = "accuracy_matrix.png"
CHECKPOINT_DIR = "checkpoint"  # ContinualCallback's between-task checkpoint inside the output dir

TASK_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def validate_task_name(name: object) -> str:
    """Plain identifiers only: no path pieces, no leading digit (PEFT mangles adapter names like
    "0"), and the whole string must match (`"x\\n"` would otherwise pass a `^...$` pattern)."""
    if not isinstance(name, str) or TASK_NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(
            f"Invalid task name {name!r}: use 1-64 ASCII letters, digits or underscores, not starting "
            "with a digit (names become folder names under tasks/)"
        )
    return name
