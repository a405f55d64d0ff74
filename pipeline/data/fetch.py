"""Getting raw data into ``data/raw/``: the download stage's library.

A remote file is looked for first in a local mirror directory (``data.mirror``, overridden by the environment
variable ``DGM_DATA_MIRROR``), then at each remote source in order. Each source gets ``retries`` attempts with
exponential backoff; an interrupted transfer resumes with an HTTP Range request (and starts over if the server
ignores it). Every file is verified against the registry's sha256 (of the file, or of its gunzipped payload)
before it is renamed into place; a mismatch is an error, and the file is deleted. ``download_dataset`` builds
the whole ``data/raw/`` directory beside the old one and swaps it in only when everything is verified.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data.formats import image_error, list_image_folder, read_npz
from pipeline.data.registry import DatasetError, DatasetSpec, RawFile
from pipeline.io import atomic_directory, write_json

MIRROR_ENV = "DGM_DATA_MIRROR"
USER_AGENT = "deep-generative-pipeline/0.1 (python urllib)"
CHUNK_BYTES = 1 << 16


class DownloadError(DatasetError):
    """No source could deliver a verified file; the message lists every source tried and why it failed."""


class ChecksumError(DatasetError):
    """A file's sha256 matches neither digest the registry declares."""


class _GiveUpOnSource(Exception):
    """A failure that retrying the same source cannot fix (e.g. HTTP 404)."""


class _IncompleteTransfer(Exception):
    """The connection ended before the whole file arrived."""


RETRYABLE = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, _IncompleteTransfer)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Fetched:
    """Where a verified file came from and which digest it matched."""

    source: str
    verified: str


def mirror_directory(configured: str | None) -> Path | None:
    """The local mirror to consult first: $DGM_DATA_MIRROR if set, else ``data.mirror``, else none."""
    value = os.environ.get(MIRROR_ENV) or configured
    return Path(value).expanduser() if value else None


def sha256_file(path: Path, *, gunzip: bool = False) -> str:
    """Hex sha256 of a file, or of its gunzipped payload."""
    digest = hashlib.sha256()
    with (gzip.open if gunzip else open)(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, raw_file: RawFile) -> str:
    """Check ``path`` against the registry's digests; return which one matched, raise ChecksumError if none."""
    digest = sha256_file(path)
    if digest == raw_file.sha256:
        return "sha256 of the file"
    if raw_file.content_sha256 is not None:
        try:
            if sha256_file(path, gunzip=True) == raw_file.content_sha256:
                return "sha256 of the gunzipped content"
        except (OSError, EOFError, zlib.error):
            pass
        also = f", nor does its gunzipped content match {raw_file.content_sha256}"
    else:
        also = ""
    raise ChecksumError(f"checksum mismatch: sha256 {digest}, expected {raw_file.sha256}{also}")


def _describe(err: BaseException, timeout_s: float) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
        if not isinstance(err, TimeoutError):
            return str(getattr(err, "strerror", None) or err)
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    return str(err) or type(err).__name__


def _content_range_start(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes ") or "-" not in value:
        return None
    start = value[len("bytes ") :].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _http_get(url: str, part: Path, *, timeout_s: float, progress: bool | None) -> None:
    """One attempt: GET ``url`` into ``part``, continuing after the bytes already there when the server agrees."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            part.unlink()
            raise _IncompleteTransfer("the server refused to resume the partial file; starting over") from None
        if 400 <= err.code < 500 and err.code not in (408, 429):
            raise _GiveUpOnSource(_describe(err, timeout_s)) from None
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and _content_range_start(response) != offset:
            part.unlink()
            raise _IncompleteTransfer("the server resumed at the wrong offset; starting over")
        offset = offset if resumed else 0
        length = response.headers.get("Content-Length", "")
        total = offset + int(length) if length.isdigit() else None
        bar = tqdm(
            total=total,
            initial=offset,
            desc=part.name.removeprefix(".").removesuffix(".part"),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=None if progress is None else not progress,
            leave=False,
        )
        with bar, part.open("ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _IncompleteTransfer(f"connection closed after {size} of {total} bytes")


def _download_with_retries(
    url: str,
    part: Path,
    *,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    progress: bool | None,
    log: Callable[[str], None],
    deadline: float | None = None,
) -> None:
    for attempt in range(1, retries + 1):
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise _GiveUpOnSource("data.deadline_s reached")
        try:
            _http_get(url, part, timeout_s=min(timeout_s, left), progress=progress)
            return
        except RETRYABLE as err:
            if attempt == retries:
                raise _GiveUpOnSource(f"{_describe(err, timeout_s)} ({retries} attempt(s))") from None
            delay = backoff_s * 2 ** (attempt - 1)
            kept = part.stat().st_size if part.exists() else 0
            resume = f", resuming after {kept} bytes" if kept else ""
            log(f"  {url}: {_describe(err, timeout_s)}; attempt {attempt + 1}/{retries} in {delay:g} s{resume}")
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))


def fetch_file(
    raw_file: RawFile,
    destination: Path,
    sources: Sequence[str],
    *,
    mirror: Path | None = None,
    dataset: str = "",
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    progress: bool | None = None,
    log: Callable[[str], None] = _stderr,
    deadline: float | None = None,
) -> Fetched:
    """Put a verified copy of ``raw_file`` at ``destination``: from ``mirror`` if it has one, else from the
    first of ``sources`` (base URLs) that delivers it. Raise DownloadError listing every source tried.
    ``deadline``: a ``time.monotonic()`` time after which no source is tried any more."""
    destination = Path(destination)
    part = destination.with_name(f".{destination.name}.part")
    failures: list[str] = []
    try:
        if mirror is not None:
            candidates = ([mirror / dataset / raw_file.name] if dataset else []) + [mirror / raw_file.name]
            found = next((p for p in candidates if p.is_file()), None)
            if not mirror.is_dir():
                failures.append(f"local mirror {mirror}: {_missing_directory(mirror)}")
            elif found is None:
                failures.append(f"local mirror: no file {' or '.join(map(str, candidates))}")
            else:
                shutil.copyfile(found, part)
                try:
                    verified = verify_file(part, raw_file)
                    os.replace(part, destination)
                    return Fetched(str(found), verified)
                except ChecksumError as err:
                    failures.append(f"{found}: {err}")
        for base in sources:
            url = base.rstrip("/") + "/" + raw_file.name
            part.unlink(missing_ok=True)
            try:
                _download_with_retries(
                    url,
                    part,
                    timeout_s=timeout_s,
                    retries=retries,
                    backoff_s=backoff_s,
                    progress=progress,
                    log=log,
                    deadline=deadline,
                )
                verified = verify_file(part, raw_file)
            except (_GiveUpOnSource, ChecksumError) as err:
                failures.append(f"{url}: {err}")
                log(f"  {url}: {err}")
                continue
            os.replace(part, destination)
            return Fetched(url, verified)
    finally:
        part.unlink(missing_ok=True)
    tried = "\n".join(f"  - {failure}" for failure in failures) or "  (no sources configured)"
    raise DownloadError(f"could not fetch {raw_file.name}; every source failed:\n{tried}")


def hand_placement_help(spec: DatasetSpec, raw_dir: Path) -> str:
    """How to provide a remote dataset's files without the network."""
    lines = [f"To place the files by hand, download them (see {spec.homepage}) into one directory:"]
    for raw_file in spec.files:
        also = f" (or gunzipped content {raw_file.content_sha256})" if raw_file.content_sha256 else ""
        lines.append(f"    {raw_file.name}  sha256 {raw_file.sha256}{also}")
    lines.append(
        f"then set data.mirror to that directory in params.yaml (or export {MIRROR_ENV}=DIR) and run the download "
        f"stage again; it verifies them and writes {raw_dir}/{spec.name}/."
    )
    return "\n".join(lines)


def _write_digits(destination: Path) -> str:
    from sklearn import __version__ as sklearn_version
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(destination, images=digits.images.astype(np.uint8), target=digits.target.astype(np.uint8))
    return f"sklearn.datasets.load_digits (scikit-learn {sklearn_version})"


MAX_LISTED_FILES = 20  # unreadable images named in one message


def _copy_user_folder(source: Path, destination: Path) -> str:
    """Copy the user's image folder into ``destination`` after checking every image opens: all unreadable ones
    are reported at once, by the user's own paths."""
    files, _, _ = list_image_folder(source)
    errors = [error for error in map(image_error, files) if error]
    if errors:
        listed = "\n  ".join(errors[:MAX_LISTED_FILES])
        more = f"\n  ... and {len(errors) - MAX_LISTED_FILES} more" if len(errors) > MAX_LISTED_FILES else ""
        raise DatasetError(
            f"{len(errors)} of the {len(files)} images in {source} cannot be read; fix or remove them:"
            f"\n  {listed}{more}"
        )
    for file in files:
        target = destination / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return str(source.resolve())


def _missing_directory(path: Path) -> str:
    """What is wrong with ``path`` where a directory is expected and none is."""
    return "a file, not a directory" if path.exists() else "no such directory"


def download_dataset(
    spec: DatasetSpec,
    raw_dir: str | Path = "data/raw",
    *,
    path: str | None = None,
    mirror: Path | None = None,
    sources: Sequence[str] | None = None,
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    deadline_s: float | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = _stderr,
) -> dict:
    """Write ``raw_dir/<dataset>/`` and ``raw_dir/manifest.json`` (each file's size, sha256 and origin), replacing
    ``raw_dir`` atomically. ``sources`` overrides the registry's remote mirrors; ``path`` is the user's data;
    ``deadline_s`` caps the whole download (every file, source and attempt)."""
    raw_dir = Path(raw_dir)
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    if spec.origin == "remote" and mirror is not None and not mirror.is_dir():
        # a mistyped mirror would otherwise be noticed only after every remote source and retry has been tried
        setting = f"${MIRROR_ENV}" if os.environ.get(MIRROR_ENV) else "data.mirror"
        raise DatasetError(
            f"{setting} {mirror}: {_missing_directory(mirror)}; point it at the folder holding {spec.name}'s files, "
            "or unset it"
        )
    if spec.origin in ("user_file", "user_folder"):
        if not path:
            raise DatasetError(f"data.path is not set; dataset {spec.name!r} reads your data from it")
        user_path = Path(path).expanduser()
        if not user_path.exists():
            raise DatasetError(f"data.path {path}: no such file or directory")
    with atomic_directory(raw_dir) as tmp:
        target = tmp / spec.name
        target.mkdir()
        origins: dict[str, Fetched] = {}
        if spec.origin == "remote":
            source_list = spec.sources if sources is None else sources
            per_source = retries * timeout_s + backoff_s * (2 ** (retries - 1) - 1)
            worst = len(spec.files) * len(source_list) * per_source
            limit = f"data.deadline_s caps it at {deadline_s:g} s" if deadline_s else "set data.deadline_s to cap it"
            log(
                f"{spec.name}: files missing from the local mirror are fetched from {len(source_list)} source(s); if "
                f"none answers this takes up to {worst:.0f} s ({len(spec.files)} files × {len(source_list)} sources × "
                f"{retries} attempts of up to {timeout_s:g} s, plus backoff); {limit}"
            )
            for raw_file in spec.files:
                try:
                    fetched = fetch_file(
                        raw_file,
                        target / raw_file.name,
                        source_list,
                        mirror=mirror,
                        dataset=spec.name,
                        timeout_s=timeout_s,
                        retries=retries,
                        backoff_s=backoff_s,
                        progress=progress,
                        log=log,
                        deadline=deadline,
                    )
                except DownloadError as err:
                    raise DownloadError(f"{err}\n{hand_placement_help(spec, raw_dir)}") from None
                origins[raw_file.name] = fetched
                log(f"{spec.name}: {raw_file.name} from {fetched.source} ({fetched.verified} matches)")
            source = ""
        elif spec.origin == "bundled":
            source = _write_digits(target / spec.raw_name)
        elif spec.origin == "user_file":
            read_npz(user_path)
            shutil.copyfile(user_path, target / spec.raw_name)
            source = str(user_path.resolve())
        else:
            source = _copy_user_folder(user_path, target / spec.raw_name)
        files = []
        for file in sorted(p for p in target.rglob("*") if p.is_file()):
            name = file.relative_to(tmp).as_posix()
            entry = {"path": name, "bytes": file.stat().st_size, "sha256": sha256_file(file)}
            fetched = origins.get(file.name)
            if fetched is not None:
                entry.update(source=fetched.source, verified=fetched.verified)
            else:
                entry["source"] = source
            files.append(entry)
        manifest = {"dataset": spec.name, "files": files}
        write_json(tmp / "manifest.json", manifest)
    return manifest
