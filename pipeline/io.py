"""Atomic file writing: every output is written to a temporary path and renamed into place."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import sys
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


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C, so atomic writes in progress delete their temporary files."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


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
    return json.loads(Path(path).read_text())
