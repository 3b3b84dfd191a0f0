"""Atomic directory writes and task-name validation: nothing half-written, nothing outside its folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

TASK_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def validate_task_name(name: object) -> str:
    """Task names become folder names (`tasks/<name>/`) and adapter names, so they must be plain
    identifiers: no path pieces, no leading digit (PEFT mangles adapter names like "0")."""
    if not isinstance(name, str) or not TASK_NAME_PATTERN.match(name):
        raise ValueError(
            f"Invalid task name {name!r}: use 1-64 ASCII letters, digits or underscores, not starting "
            "with a digit (names become folder names under tasks/)"
        )
    return name


@contextmanager
def atomic_directory(destination: str | os.PathLike):
    """Yield a temp dir beside `destination`; on success it replaces `destination` whole.

    On any error the temp dir is removed and `destination` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if destination.exists():
        if not destination.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(f"{destination} exists and is not a directory")
        backup = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(destination, backup)
    os.replace(staging, destination)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_json(path: str | os.PathLike, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))
