"""`run`'s settings and checks, all made before anything is written: the recorded run on
`--resume`, the data directory and task order, the output directory, the checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._io import recover_directory
from .common import CHECKPOINT_DIR, DEFAULTS, METRICS_FILE, PUBLISHING_SETTINGS, RUN_ARGS_FILE, SYSTEM_DIR, CliError, one_line

def resolve_settings(args: argparse.Namespace, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """Built-in defaults, then the recorded run (with --resume), then what the command line says."""
    settings = dict(DEFAULTS)
    if recorded:
        settings.update({key: value for key, value in recorded.items() if key in DEFAULTS})
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    for key in ("data_dir", "stream"):  # recorded absolute: --resume works from any directory
        if settings[key] is not None:
            settings[key] = str(Path(settings[key]).expanduser().resolve())
    if settings["model"] is not None and Path(settings["model"]).expanduser().is_dir():
        # a local folder is recorded absolute, so the saved system finds its base from anywhere
        settings["model"] = str(Path(settings["model"]).expanduser().resolve())
    return settings


def check_unchanged(args: argparse.Namespace, recorded: dict[str, Any], output: Path) -> None:
    """A resumed run keeps its settings: refuse, naming each one, what the command line changes
    (before anything is written, so the plain `--resume` still works afterwards). `--tasks` may
    extend the recorded stream."""
    from ..checkpoint import settings_differences

    given = {key: value for key, value in resolve_settings(args, None).items()
             if getattr(args, key, None) is not None and key not in PUBLISHING_SETTINGS}
    tasks = given.pop("tasks", None)
    recorded_tasks = recorded.get("tasks")
    differences = settings_differences({k: v for k, v in recorded.items() if k in DEFAULTS}, given, "recorded")
    if tasks is not None and isinstance(recorded_tasks, list) and tasks[: len(recorded_tasks)] != recorded_tasks:
        differences.append(f"tasks: recorded {','.join(recorded_tasks)}, now {','.join(tasks)} (may only be extended)")
    if differences:
        flags = ", ".join("--" + d.split(":")[0].replace("_", "-") for d in differences)
        raise CliError(
            f"cannot resume {output} with other settings than it was started with: {'; '.join(differences)}. "
            f"Drop {flags} to continue the run as recorded in {output / RUN_ARGS_FILE}, or start a new --output"
        )


def data_dir(settings: dict[str, Any]) -> Path:
    from ..default_model import DEFAULT_DATA_DIR

    return Path(settings["data_dir"]) if settings["data_dir"] is not None else DEFAULT_DATA_DIR


def available_tasks(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and (p / "meta.json").is_file())


def check_data(root: Path, tasks: list[str] | None, embedded: bool) -> list[str]:
    """The task order to train, after checking that every task has a folder: fails in one line."""
    where = "the embedded benchmark" if embedded else "--data-dir"
    if not root.is_dir():
        hint = " (this installation lacks its data files: reinstall hf-conpet)" if embedded else ""
        raise CliError(f"data directory {root} does not exist ({where}){hint}")
    available = available_tasks(root)
    if not available:
        raise CliError(f"no tasks in {root}: expected <task>/train.jsonl, test.jsonl and meta.json folders")
    if tasks is None:
        if embedded:
            from ..default_model import DEFAULT_TASKS

            tasks = [t for t in DEFAULT_TASKS if t in available] or available
        else:
            tasks = available
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise CliError(f"--tasks names {', '.join(duplicates)} more than once")
    for task in tasks:
        if task not in available:
            raise CliError(f"unknown task {task!r}: no folder with meta.json in {root}; available: {', '.join(available)}")
    return list(tasks)


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_output(output: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite a run without --resume; return the recorded settings when resuming."""
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {output} exists and is not a directory")
    for name in (CHECKPOINT_DIR, SYSTEM_DIR):  # finish or undo a swap that a kill interrupted
        recover_directory(output / name)
    existing = [name for name in (CHECKPOINT_DIR, SYSTEM_DIR, METRICS_FILE) if (output / name).exists()]
    if existing and not resume:
        raise CliError(
            f"{output} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
            "or choose another --output"
        )
    return _read_json_or_none(output / RUN_ARGS_FILE) if resume else None


def check_resumable(output: Path, method: str, tasks: list[str]) -> list[str]:
    """Tasks the checkpoint has finished; refuses (one line) a checkpoint this run cannot continue."""
    from ..checkpoint import read_progress

    try:
        progress = read_progress(output / CHECKPOINT_DIR)
    except ValueError as error:
        raise CliError(f"cannot resume {output}: {one_line(error)}") from None
    if progress is None:
        return []
    finished = progress["finished"]
    if progress.get("method") != method:
        raise CliError(f"cannot resume {output}: it is a {progress.get('method')!r} run, not {method!r} (drop --method)")
    if tasks[: len(finished)] != finished:
        raise CliError(
            f"cannot resume {output}: it finished tasks {','.join(finished)}, so --tasks must start with them "
            f"(got {','.join(tasks)})"
        )
    from ..methods import METHODS

    if finished and METHODS[method].train_data == "all" and tasks != finished:
        raise CliError(f"cannot resume {output}: {method} trained on {','.join(finished)} at once; adding tasks "
                       f"means training again from the start (a new --output)")
    return finished


