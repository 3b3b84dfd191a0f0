"""Task names: they become folder names (`tasks/<name>/`) and PEFT adapter names."""

from __future__ import annotations

import re

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
