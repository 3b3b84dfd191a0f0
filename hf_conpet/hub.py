"""The Hub side of a saved system: the publishable layout, push, pull (the card: `model_card.py`).

Only the official client (`huggingface_hub.HfApi`) talks to the Hub, so everything here works the
same against huggingface.co, a private Hub, or a mirror named by `HF_ENDPOINT`. What crosses the
wire is exactly the saved layout (manifest, per-task PEFT adapters, selector, card, plot):
safetensors and JSON, never pickle, never code.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download

from .model_card import CARD_NAME, MATRIX_IMAGE_NAME
from .names import validate_task_name
from .saved_layout import EXAMPLES_NAME, MANIFEST_NAME

__all__ = [
    "CARD_NAME",
    "DOWNLOAD_PATTERNS",
    "LAYOUT_PATTERNS",
    "HubPushError",
    "LayoutError",
    "MANIFEST_NAME",
    "MATRIX_IMAGE_NAME",
    "download_system",
    "is_main_process",
    "layout_files",
    "push_folder",
    "validate_layout",
]

logger = logging.getLogger(__name__)


#: What a system is made of, as repo paths. Matched one path segment at a time by `layout_files`
#: (so `tasks/*/...` never reaches deeper folders); handed as-is to `snapshot_download`.
LAYOUT_PATTERNS = (
    MANIFEST_NAME,
    "tasks/*/adapter_config.json",
    "tasks/*/adapter_model.safetensors",
    "selector/*.json",
    "selector/*.safetensors",
    EXAMPLES_NAME,
    CARD_NAME,
    "*.png",
)
DOWNLOAD_PATTERNS = list(LAYOUT_PATTERNS)

#: Serialisations that execute code when loaded (pickle family) and code itself. PEFT falls back
#: to `adapter_model.bin` (torch.load) when no safetensors file is there, so such a file inside
#: the layout is refused outright rather than trusted to be ignored.
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".py", ".pyc", ".pyo", ".so")


class LayoutError(ValueError):
    """A folder or repo is not a loadable hf_conpet system (no manifest, missing or unsafe files)."""


class HubPushError(RuntimeError):
    """A push did not happen. The commit is applied by the Hub all at once or not at all."""


# ----------------------------------------------------------------------------------- layout
def _matches(path: str, pattern: str) -> bool:
    parts, pattern_parts = path.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, pat) for part, pat in zip(parts, pattern_parts)
    )


def layout_files(folder: str | os.PathLike) -> list[str]:
    """Repo paths (POSIX, sorted) of the files in `folder` that belong to the saved layout."""
    folder = Path(folder)
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(folder).as_posix()
            if any(_matches(rel, pattern) for pattern in LAYOUT_PATTERNS):
                found.append(rel)
    return sorted(found)


def _forbidden(paths: Iterable[str]) -> list[str]:
    """Unsafe files where a loader could pick them up: the repo root, `tasks/` and `selector/`."""
    bad = []
    for path in paths:
        top = path.split("/", 1)[0] if "/" in path else ""
        if top in ("", "tasks", "selector") and path.lower().endswith(FORBIDDEN_SUFFIXES):
            bad.append(path)
    return sorted(bad)


def _check_repo_files(paths: Sequence[str], where: str) -> None:
    if MANIFEST_NAME not in paths:
        raise LayoutError(f"not an hf_conpet repo: no {MANIFEST_NAME} in {where}")
    bad = _forbidden(paths)
    if bad:
        raise LayoutError(
            f"refusing {where}: it holds pickle or code files where hf_conpet loads weights "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); an hf_conpet system is "
            "safetensors and JSON only"
        )


def validate_layout(folder: str | os.PathLike, *, where: str | None = None, check_root: bool = False) -> dict[str, Any]:
    """Check that `folder` holds a complete, safe system; return its manifest.

    Complete: a manifest listing tasks whose adapters are all there (and the selector, when the
    manifest names one). Safe: no pickle or code under `tasks/` and `selector/` (nor at the root
    when `check_root`, as for a download: a local training folder may keep Trainer state there).
    """
    folder = Path(folder)
    where = where or str(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise LayoutError(f"not an hf_conpet repo: no {MANIFEST_NAME} in {where}")
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    bad = [p for p in _forbidden(files) if check_root or "/" in p]
    if bad:
        raise LayoutError(
            f"refusing {where}: pickle or code files inside the layout ({', '.join(bad[:5])}); "
            "an hf_conpet system is safetensors and JSON only"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"{where}/{MANIFEST_NAME} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), list):
        raise LayoutError(f"{where}/{MANIFEST_NAME} is not an hf_conpet manifest (no 'tasks' list)")
    missing = []
    for entry in manifest["tasks"]:
        name = entry.get("name") if isinstance(entry, dict) else entry
        try:
            name = validate_task_name(name)
        except ValueError as err:
            raise LayoutError(f"{where}/{MANIFEST_NAME}: {err}") from None
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            if not (folder / "tasks" / name / file).is_file():
                missing.append(f"tasks/{name}/{file}")
    if manifest.get("selector"):
        for file in ("config.json", "model.safetensors"):
            if not (folder / "selector" / file).is_file():
                missing.append(f"selector/{file}")
    if missing:
        raise LayoutError(f"incomplete hf_conpet system in {where}: missing {', '.join(missing)}")
    return manifest


# -------------------------------------------------------------------------------- push/pull
def _endpoint(endpoint: str | None) -> str:
    """Explicit endpoint, else `HF_ENDPOINT` read now (the client reads it once, at import)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def is_main_process() -> bool:
    """False on every rank but the first under accelerate / torchrun, so one process pushes.

    Looks without side effects: an already initialised accelerate state, then the launcher's
    RANK (LOCAL_RANK when RANK is absent), then an initialised torch.distributed group.
    """
    accelerate_state = sys.modules.get("accelerate.state")
    if accelerate_state is not None and getattr(accelerate_state.PartialState, "_shared_state", None):
        return bool(accelerate_state.PartialState().is_main_process)
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value) == 0
            except ValueError:
                break
    distributed = getattr(sys.modules.get("torch"), "distributed", None)
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank() == 0
    return True


def _is_branch_name(revision: str | None) -> bool:
    """A branch other than main that may need creating (not a PR ref, not a commit sha)."""
    return bool(revision) and revision != hf_constants.DEFAULT_REVISION and not (
        revision.startswith("refs/") or re.fullmatch(r"[0-9a-f]{40}", revision)
    )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> CommitInfo | None:
    """Push a saved system to `repo_id` as one commit; None on non-main processes.

    Creates the repo if needed (and the branch `revision`, if it is a new branch name), then sends
    the layout files — nothing else in the folder — in a single `create_commit`. Not
    `upload_folder`: with `hf_xet` installed it may split a folder into several commits and retry
    in smaller batches, and a half-pushed system must never be visible. Any failure raises
    `HubPushError`; the Hub applies a commit whole or not at all, so the repo is left as it was.
    """
    folder = Path(folder)
    if not is_main_process():
        logger.info("push_folder: not the main process, leaving the push to rank 0")
        return None
    manifest = validate_layout(folder)
    files = layout_files(folder)
    endpoint = _endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    target = f"{endpoint}/{repo_id}" + (f"@{revision}" if revision else "")
    n_tasks = len(manifest.get("tasks") or [])
    message = commit_message or f"Upload hf_conpet system ({n_tasks} task{'s' if n_tasks != 1 else ''})"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if _is_branch_name(revision) and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files]
        return api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one clear error
        raise HubPushError(
            f"push of {folder} to {target} failed: {type(err).__name__}: {err}\n"
            "The upload is a single commit, which the Hub applies whole or not at all: the repo "
            "was left as it was. Fix the cause and push again."
        ) from err


def download_system(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local folder holding the system: the folder itself, or a Hub snapshot of the layout.

    For a repo, its file list is checked before anything is fetched (it must have a manifest and
    no pickle/code where weights are loaded), then only the layout files are downloaded and the
    result is validated as a whole. Offline (`HF_HUB_OFFLINE=1`) the cached snapshot is used.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        validate_layout(path)
        return path
    repo_id = str(repo_id_or_path)
    if os.path.isabs(repo_id) or repo_id.startswith((".", "~")) or repo_id.count("/") > 1:
        raise FileNotFoundError(f"no such folder: {repo_id} (and it is not a Hub repo id)")
    endpoint = _endpoint(endpoint)
    where = f"{repo_id}@{revision or hf_constants.DEFAULT_REVISION}"
    if not hf_constants.is_offline_mode():
        # An explicit revision ("main" by default) also suits mirrors: olah answers the
        # revision-less /api/models/{repo} only from upstream, never from its local repos.
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision or hf_constants.DEFAULT_REVISION)
        _check_repo_files([s.rfilename for s in info.siblings or []], where)
    # By name, not by the sha just checked, so the cache records the ref and works offline later.
    # A file added in between cannot slip in: only layout patterns (safetensors, JSON, PNG) are fetched.
    folder = snapshot_download(
        repo_id,
        revision=revision,
        token=token,
        endpoint=endpoint,
        cache_dir=cache_dir,
        allow_patterns=DOWNLOAD_PATTERNS,
    )
    validate_layout(folder, where=where, check_root=True)
    return Path(folder)
