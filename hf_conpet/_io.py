"""Crash-safe writes, the one implementation for the package: files, whole directories, recovery;
and the strict readers of what they wrote (JSON, safetensors).

A reader must always find either the complete old state or the complete new one under a name,
whatever instant a process is killed at (kill -9, power cut). Files: written to a temp file beside
the target, fsynced, renamed over it. Directories: POSIX cannot swap two directories atomically, so
`atomic_directory` builds the new tree in `.<name>.tmp-<pid>-*`, fsyncs it, moves the old tree
to `.<name>.old`, renames the new one in, fsyncs the parent, then deletes `.<name>.old`. A kill
between the two renames leaves only `.<name>.old`: `recover_directory` (run before every write and
by the readers that resume) puts it back, deletes it once the new tree is in place, and removes the
temp files and trees of writers that are gone: a writer holds a flock on its temp while it
writes, which the kernel drops however it dies.

Everything is created with the permissions the umask gives (as `save_pretrained` does), not the
owner-only modes of `tempfile`, so a web server or a Space container can read what was written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_UMASK_LOCK = threading.Lock()
_UNLOCKED_GRACE_S = 60.0


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (`/proc/self/status`)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (briefly visible to other threads)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's entry to disk (directories: so a rename survives a power cut)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems refuse fsync on directories
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root` (children before their parent)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder)


def apply_umask(root: str | os.PathLike) -> None:
    """Give every file and directory under `root` the mode the umask gives new ones (safetensors,
    like `tempfile`, writes owner-only files)."""
    mask = current_umask()
    for folder, directories, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


# ------------------------------------------------------------------------------ leftovers
def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _backup_name(name: str) -> str:
    return f".{name}.old"


_TEMP_OWNER = re.compile(r"^(?P<pid>\d+)-")
_LEGACY_BACKUP = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")  # hf_conpet <= 0.3 named backups by pid


def _is_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hold_writer_lock(fd: int) -> None:
    """Mark a temp file or staging tree as being written: a shared flock on it, which the kernel
    drops when the writer dies however it dies (and which, unlike a pid, means the same thing
    in every container that shares the filesystem)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)


def _being_written(path: Path, pid: int | None) -> bool:
    """True while some process still writes `path` (holds its writer lock); by pid where flock
    is not there (Windows) or for a temp of a writer that took no lock (hf_conpet <= 0.3)."""
    if fcntl is None:
        return pid is not None and _is_alive(pid)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return pid is not None and _is_alive(pid)
    finally:
        os.close(fd)
    # Unlocked: its writer is gone, unless it is a live writer in the instant between creating
    # the temp and locking it (same pid namespace: seen alive; young).
    return pid is not None and _is_alive(pid) and time.time() - _mtime(path) < _UNLOCKED_GRACE_S


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(parent: Path, name: str) -> None:
    """Delete `.<name>.tmp-<pid>-*` files and trees whose writing process is gone."""
    prefix = _temp_prefix(name)
    with contextlib.suppress(FileNotFoundError):
        for entry in parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            owner = _TEMP_OWNER.match(entry.name[len(prefix):])
            if not _being_written(entry, int(owner["pid"]) if owner else None):
                _remove(entry)


@contextmanager
def _directory_lock(parent: Path) -> Iterator[None]:
    """Serialise swaps and recoveries in `parent` across processes (flock on the directory
    itself: no lock file to leave behind). Held only around renames, never around user code."""
    if fcntl is None:  # pragma: no cover - Windows: the renames alone still keep a complete state
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _recover_locked(destination: Path) -> None:
    parent, name = destination.parent, destination.name
    backups = [parent / _backup_name(name)]
    with contextlib.suppress(FileNotFoundError):
        backups += sorted((e for e in parent.iterdir() if (m := _LEGACY_BACKUP.match(e.name)) and m["name"] == name
                           and not _is_alive(int(m["pid"]))), key=lambda e: e.stat().st_mtime, reverse=True)
    for backup in backups:
        if not backup.exists():
            continue
        if destination.exists():
            _remove(backup)  # the new tree made it in; the old one is only garbage now
        else:  # killed between the two renames: the old tree is the last complete state
            os.replace(backup, destination)
            _fsync(parent)
    remove_stale_temps(parent, name)


def recover_directory(destination: str | os.PathLike) -> Path:
    """Finish or undo an interrupted `atomic_directory` swap of `destination`; returns it."""
    destination = Path(destination)
    parent = destination.parent
    if not parent.is_dir():
        return destination
    if not any(e.name.startswith(f".{destination.name}.") for e in parent.iterdir()):
        return destination  # nothing to do (the common case): no lock, no write
    with _directory_lock(parent):
        _recover_locked(destination)
    return destination


# ------------------------------------------------------------------------------ writing
def _staging_directory(destination: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(destination.name)}{os.getpid()}-", dir=destination.parent))
    os.chmod(staging, 0o777 & ~current_umask())
    return staging


@contextmanager
def atomic_directory(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh directory beside `destination`; when the block succeeds it replaces
    `destination` whole (see the module docstring for why this survives a kill at any point).
    On an error inside the block the staging tree is removed and `destination` is untouched."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"{destination} exists and is not a directory")
    recover_directory(destination)
    staging = _staging_directory(destination)
    writer_lock = os.open(staging, os.O_RDONLY)
    _hold_writer_lock(writer_lock)
    try:
        yield staging
        apply_umask(staging)
        fsync_tree(staging)
        backup = destination.with_name(_backup_name(destination.name))
        with _directory_lock(destination.parent):
            _recover_locked(destination)
            had_old = destination.exists()
            if had_old:
                os.replace(destination, backup)
            os.replace(staging, destination)
            _fsync(destination.parent)
            if had_old:
                _remove(backup)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        # Stopped between the two renames (Ctrl-C, a full disk): the old tree is the last complete
        # state, so it goes back under its name now rather than at the next reader's recovery.
        with contextlib.suppress(Exception), _directory_lock(destination.parent):
            _recover_locked(destination)
        raise
    finally:
        os.close(writer_lock)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` so a reader sees the old bytes or the new ones, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, temporary = tempfile.mkstemp(prefix=f"{_temp_prefix(path.name)}{os.getpid()}-", dir=path.parent)
    _hold_writer_lock(fd)  # held until the rename: no cleaner removes a temp that is being written
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(temporary, 0o666 & ~current_umask())
            os.replace(temporary, path)
        _fsync(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write(path, json_text(data))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Plain write, for files inside an `atomic_directory` staging tree (made durable as a whole)."""
    Path(path).write_text(json_text(data), encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """JSON from `path`; a malformed file is a ValueError that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from None


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path} is not a readable safetensors file: {type(error).__name__}: {' '.join(str(error).split())}")


def read_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file; a truncated or foreign file is a ValueError that names it
    (safetensors raises its own SafetensorError, which is no ValueError)."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise _unreadable(Path(path), error) from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """{name: shape} from a safetensors file's header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001
        raise _unreadable(Path(path), error) from None
