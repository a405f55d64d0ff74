"""Atomic file writing: every output is written to a temporary path and renamed into place."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
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
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """:func:`atomic_path` for a set of files: each is renamed into place only once the block has written them all,
    so a failure midway (a full disk, an interrupt) leaves every one of ``paths`` as it was."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(path)) for path in paths]


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


# Command interpreters a launcher may run a stage through: dvc runs `$SHELL -c cmd`, or `/bin/sh -c cmd` where
# SHELL is unset, and Debian's dash stays alive as the stage's parent instead of exec'ing it.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish", "busybox"})


def _name_and_parent(pid: int) -> tuple[str, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
    return name, int(rest[1])


def launcher_pid() -> int:
    """The nearest ancestor that is not a shell: the process (dvc, a test, a scheduler) that ran this one, through
    whatever shell it used (1 where the chain ends at init or a subreaper's reparenting)."""
    pid = os.getppid()
    while pid > 1:
        name, parent = _name_and_parent(pid)
        if name not in SHELLS:
            return pid
        pid = parent
    return pid


def _end_with_launcher() -> None:
    """SIGTERM to this process as soon as its launcher dies, so a stage never trains on as an orphan that a second
    `dvc repro` would race. A thread waits on a pidfd of the launcher: no polling, and nothing the launcher (which
    may be SIGKILLed) has to pass on."""
    launcher = launcher_pid()
    if launcher <= 1:
        return
    try:
        watched = os.pidfd_open(launcher)
    except ProcessLookupError:
        sys.exit(128 + signal.SIGTERM)
    if launcher_pid() != launcher:  # the launcher died, and its number was reused, before the pidfd was opened
        sys.exit(128 + signal.SIGTERM)

    def wait_then_end() -> None:
        select.select([watched], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_then_end, name="end-with-launcher", daemon=True).start()


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C, so atomic writes in progress delete their temporary files; on
    Linux, also end this process (by that SIGTERM) when the process that launched it dies."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if hasattr(os, "pidfd_open"):
        _end_with_launcher()


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
    if lock_path.is_dir():
        raise OutputLockedError(f"{lock_path}: a folder stands where the lock file of {target} goes; remove it")
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


def read_json(path: str | Path, keys: tuple[str, ...] = ()) -> Any:
    """The JSON in ``path``; with ``keys``, an object that has each of them. A ValueError naming the file if it is
    not valid JSON or not such an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run the stage that writes it") from None
    if keys and not isinstance(value, dict):
        raise ValueError(f"{path}: not the JSON object expected; re-run the stage that writes it")
    missing = [key for key in keys if key not in value]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}; re-run the stage that writes it")
    return value
