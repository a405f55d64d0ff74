"""Atomic file writing: every output is written to a temporary path and renamed into place."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Temporary paths of the atomic writes in progress. A path is listed before its file is created and unlisted only
# after it is renamed or deleted, so whenever a signal unwinds the stack (even between two lines of atomic_path,
# where no `finally` covers it yet), the exit handler below still finds and deletes it.
_in_progress: set[Path] = set()


@atexit.register
def _delete_unfinished_temporaries() -> None:
    for tmp in list(_in_progress):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
    _in_progress.add(tmp)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for any output
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _in_progress.discard(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it replaces ``path`` as a whole only if the block
    succeeds, so readers see the old set of files or the new one, never a mix (the old one is restored if the
    swap itself fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _in_progress.add(tmp)
    old: Path | None = None
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:  # a signal between the two renames too: put the old set back before anything is deleted
        if old is not None and (old / path.name).exists() and not path.exists():
            os.replace(old / path.name, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _in_progress.discard(tmp)
        if old is not None and path.exists():  # never delete the old set unless a set is in place
            shutil.rmtree(old, ignore_errors=True)


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C, so atomic writes in progress delete their temporary files; on
    Linux, also ask for SIGTERM when the parent process (dvc) dies, so a stage never trains on as an orphan."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(128 + signal.SIGTERM)


class OutputLockedError(RuntimeError):
    """Another process holds the lock of an output directory."""


@contextlib.contextmanager
def exclusive_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a directory that one process at a time may write) for the block: a
    second process gets an :class:`OutputLockedError` naming the holder instead of writing there at the same time.
    The lock is the file ``.<name>.lock`` beside ``target`` (outside it, so never part of a DVC output)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise OutputLockedError(
                f"{target}: another trainer (pid {holder}) is writing here; wait for it to finish or stop it"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_writable(*directories: str | Path) -> None:
    """Create each directory if needed and check a file can be made in it, before any work that would write
    there: a PermissionError naming the directory, instead of a traceback after the work is done."""
    for directory in map(Path, directories):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(directory / ".write-check"):
                pass
            (directory / ".write-check").unlink(missing_ok=True)
        except OSError as err:
            raise PermissionError(
                f"{directory}: cannot write there ({err.strerror or err}); fix its permissions or remove it"
            ) from None


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a ValueError naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run the stage that writes it") from None
