"""Fetching against a real HTTP server on 127.0.0.1 whose faults the test controls, and against local mirrors."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.fetch import (
    MIRROR_ENV,
    DownloadError,
    download_dataset,
    fetch_file,
    mirror_directory,
)
from pipeline.data.registry import DatasetError, DatasetSpec, RawFile, get_dataset
from pipeline.io import atomic_directory, read_json

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PAYLOAD = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()  # ~3 read chunks
BLOB = gzip.compress(PAYLOAD, mtime=0)
FAST = {"timeout_s": 2.0, "retries": 3, "backoff_s": 0.01, "progress": False}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BLOB_FILE = RawFile("blob.bin.gz", sha256(BLOB), sha256(PAYLOAD))


class FaultyServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) with Range support; ``faults[path]`` lists misbehaviours, one per
    request, before it behaves: drop (half the body, then close), stall (answer late), ignore_range, error500."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultyHandler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up on a stalled answer is expected; stay quiet."""


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultyServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        queue = self.server.faults.get(self.path, [])
        fault = queue.pop(0) if queue else None
        if fault == "stall":
            time.sleep(1.0)
        body = self.server.files.get(self.path)
        if body is None or fault == "error500":
            self.send_error(404 if body is None else 500)
            return
        start = int(range_header.split("=")[1].rstrip("-")) if range_header and fault != "ignore_range" else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if fault == "drop":
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    server = FaultyServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_fetch_succeeds_and_verifies(server: FaultyServer, tmp_path: Path) -> None:
    server.files["/good/blob.bin.gz"] = BLOB
    fetched = fetch_file(BLOB_FILE, tmp_path / "blob.bin.gz", [server.url + "/good/"], **FAST)
    assert (tmp_path / "blob.bin.gz").read_bytes() == BLOB
    assert fetched.source == server.url + "/good/blob.bin.gz" and fetched.verified == "sha256 of the file"
    assert leftovers(tmp_path) == ["blob.bin.gz"]


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server: FaultyServer, tmp_path: Path) -> None:
    corrupted = bytearray(BLOB)
    corrupted[1000] ^= 0xFF
    server.files["/bad/blob.bin.gz"] = bytes(corrupted)
    spec = DatasetSpec("blobs", "test", "remote", "idx", files=(BLOB_FILE,), sources=(server.url + "/bad/",))
    with pytest.raises(DownloadError, match=rf"bad/blob.bin.gz: checksum mismatch: sha256 {sha256(corrupted)}"):
        download_dataset(spec, tmp_path / "data" / "raw", **FAST)
    assert leftovers(tmp_path / "data") == []


def test_dropped_connection_is_resumed_with_a_range_request(server: FaultyServer, tmp_path: Path) -> None:
    server.files["/flaky/blob.bin.gz"] = BLOB
    server.faults["/flaky/blob.bin.gz"] = ["drop", "drop"]
    messages: list[str] = []
    fetch_file(BLOB_FILE, tmp_path / "blob.bin.gz", [server.url + "/flaky/"], log=messages.append, **FAST)
    assert (tmp_path / "blob.bin.gz").read_bytes() == BLOB
    ranges = [r for _, r in server.requests]
    half = len(BLOB) // 2
    assert ranges == [None, f"bytes={half}-", f"bytes={half + (len(BLOB) - half) // 2}-"]
    assert "connection closed after" in messages[0] and f"resuming after {half} bytes" in messages[0]


def test_server_that_ignores_range_restarts_the_file(server: FaultyServer, tmp_path: Path) -> None:
    server.files["/norange/blob.bin.gz"] = BLOB
    server.faults["/norange/blob.bin.gz"] = ["drop", "ignore_range"]
    fetch_file(BLOB_FILE, tmp_path / "blob.bin.gz", [server.url + "/norange/"], **FAST)
    assert (tmp_path / "blob.bin.gz").read_bytes() == BLOB
    assert len(server.requests) == 2 and server.requests[1][1] is not None


def test_timeout_and_server_error_are_retried_with_backoff(server: FaultyServer, tmp_path: Path) -> None:
    server.files["/slow/blob.bin.gz"] = BLOB
    server.faults["/slow/blob.bin.gz"] = ["stall", "error500"]
    messages: list[str] = []
    options = {**FAST, "timeout_s": 0.3, "backoff_s": 0.05}
    fetch_file(BLOB_FILE, tmp_path / "blob.bin.gz", [server.url + "/slow/"], log=messages.append, **options)
    assert (tmp_path / "blob.bin.gz").read_bytes() == BLOB
    assert "timed out after 0.3 s; attempt 2/3 in 0.05 s" in messages[0]
    assert "HTTP 500" in messages[1] and "attempt 3/3 in 0.1 s" in messages[1]


def test_a_404_mirror_is_skipped_for_the_next_one(server: FaultyServer, tmp_path: Path) -> None:
    server.files["/second/blob.bin.gz"] = BLOB
    sources = [server.url + "/first/", server.url + "/second/"]
    fetched = fetch_file(BLOB_FILE, tmp_path / "blob.bin.gz", sources, **FAST)
    assert fetched.source == server.url + "/second/blob.bin.gz"
    assert [path for path, _ in server.requests] == ["/first/blob.bin.gz", "/second/blob.bin.gz"]  # 404: no retry


def test_all_sources_failing_lists_each_and_says_how_to_place_files(server: FaultyServer, tmp_path: Path) -> None:
    server.files["/broken/blob.bin.gz"] = BLOB
    server.faults["/broken/blob.bin.gz"] = ["error500"] * 5
    refused = closed_port_url()
    sources = (server.url + "/gone/", server.url + "/broken/", refused)
    spec = DatasetSpec("blobs", "test", "remote", "idx", homepage="https://example.org", files=(BLOB_FILE,))
    raw = tmp_path / "data" / "raw"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with pytest.raises(DownloadError) as caught:
        download_dataset(spec, raw, sources=sources, mirror=mirror, **FAST)
    message = str(caught.value)
    assert f"local mirror: no file {mirror / 'blobs' / 'blob.bin.gz'} or {mirror / 'blob.bin.gz'}" in message
    assert f"{server.url}/gone/blob.bin.gz: HTTP 404" in message
    assert f"{server.url}/broken/blob.bin.gz: HTTP 500 Internal Server Error (3 attempt(s))" in message
    assert f"{refused}blob.bin.gz: " in message and "Connection refused" in message
    assert f"blob.bin.gz  sha256 {BLOB_FILE.sha256} (or gunzipped content {BLOB_FILE.content_sha256})" in message
    assert f"set data.mirror to that directory in params.yaml (or export {MIRROR_ENV}=DIR)" in message
    # a mirror that does not exist is a mistake said at once, before any source is tried
    server.requests.clear()
    with pytest.raises(DatasetError, match=f"mirror {tmp_path / 'nowhere'}: no such directory; point it at"):
        download_dataset(spec, raw, sources=sources, mirror=tmp_path / "nowhere", **FAST)
    (tmp_path / "mirror.txt").write_text("a file")
    with pytest.raises(DatasetError, match=f"mirror {tmp_path / 'mirror.txt'}: a file, not a directory; point it at"):
        download_dataset(spec, raw, sources=sources, mirror=tmp_path / "mirror.txt", **FAST)
    assert server.requests == [] and not raw.exists()
    assert f"{raw}/blobs/" in message
    assert leftovers(tmp_path / "data") == []


def test_local_mirror_comes_first_and_a_recompressed_file_passes_by_content(
    server: FaultyServer, tmp_path: Path
) -> None:
    recompressed = gzip.compress(PAYLOAD, compresslevel=1, mtime=12345)
    assert sha256(recompressed) != BLOB_FILE.sha256
    (tmp_path / "mirror" / "blobs").mkdir(parents=True)
    (tmp_path / "mirror" / "blobs" / "blob.bin.gz").write_bytes(recompressed)
    spec = DatasetSpec("blobs", "test", "remote", "idx", files=(BLOB_FILE,), sources=(server.url + "/never/",))
    manifest = download_dataset(spec, tmp_path / "raw", mirror=tmp_path / "mirror", **FAST)
    assert server.requests == []
    (entry,) = manifest["files"]
    assert entry["verified"] == "sha256 of the gunzipped content" and entry["sha256"] == sha256(recompressed)
    assert entry["source"] == str(tmp_path / "mirror" / "blobs" / "blob.bin.gz")
    assert read_json(tmp_path / "raw" / "manifest.json") == manifest


def test_a_corrupt_mirror_file_falls_back_to_the_remote_sources(server: FaultyServer, tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "blob.bin.gz").write_bytes(BLOB[:-10])
    server.files["/good/blob.bin.gz"] = BLOB
    fetched = fetch_file(BLOB_FILE, tmp_path / "blob.bin.gz", [server.url + "/good/"], mirror=tmp_path / "mirror")
    assert fetched.source.startswith(server.url) and (tmp_path / "blob.bin.gz").read_bytes() == BLOB
    with pytest.raises(DownloadError, match=r"local mirror \S+blob.bin.gz: a file, not a directory"):
        fetch_file(BLOB_FILE, tmp_path / "other.gz", [], mirror=tmp_path / "mirror" / "blob.bin.gz")


def test_environment_variable_overrides_the_mirror_param(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert mirror_directory(None) is None
    assert mirror_directory("/params/mirror") == Path("/params/mirror")
    monkeypatch.setenv(MIRROR_ENV, "/env/mirror")
    assert mirror_directory("/params/mirror") == Path("/env/mirror")


def test_the_worst_case_is_announced_and_a_deadline_caps_it(server: FaultyServer, tmp_path: Path) -> None:
    """A mirror that never answers in time: the log says up front how long trying every source can take, and
    data.deadline_s stops the whole download at its deadline instead of after every attempt on every source."""
    server.files["/stalls/blob.bin.gz"] = BLOB
    server.faults["/stalls/blob.bin.gz"] = ["stall"] * 20
    sources = [server.url + "/stalls/", server.url + "/stalls/"]
    spec = DatasetSpec("blobs", "test", "remote", "idx", files=(BLOB_FILE,), sources=tuple(sources))
    messages: list[str] = []
    options = {**FAST, "timeout_s": 0.4, "retries": 3, "backoff_s": 0.05}
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download_dataset(spec, tmp_path / "raw", deadline_s=0.6, log=messages.append, **options)
    elapsed = time.monotonic() - started
    assert "takes up to 3 s (1 files × 2 sources × 3 attempts of up to 0.4 s, plus backoff)" in messages[0]
    assert "data.deadline_s caps it at 0.6 s" in messages[0]
    assert elapsed < 2.2, elapsed  # without the deadline: 2 sources × 3 attempts × 0.4 s and backoff, 2.7 s
    assert "data.deadline_s reached" in str(caught.value)


def test_failed_download_keeps_the_previous_raw_directory(server: FaultyServer, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "old").mkdir(parents=True)
    (raw / "manifest.json").write_text("{}")
    spec = DatasetSpec("blobs", "test", "remote", "idx", files=(BLOB_FILE,), sources=(server.url + "/gone/",))
    with pytest.raises(DownloadError):
        download_dataset(spec, raw, **FAST)
    assert leftovers(raw) == ["manifest.json", "old"] and leftovers(tmp_path) == ["raw"]
    server.files["/gone/blob.bin.gz"] = BLOB
    download_dataset(spec, raw, **FAST)
    assert leftovers(raw) == ["blobs", "manifest.json"] and leftovers(tmp_path) == ["raw"]


def test_atomic_directory_discards_the_new_tree_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("interrupted")
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_directory_works_as_a_mirror(tmp_path: Path) -> None:
    manifest = download_dataset(
        get_dataset("fashion_mnist"), tmp_path / "raw", mirror=DEBIAN_FASHION_MNIST, sources=(), **FAST
    )
    assert {entry["verified"] for entry in manifest["files"]} == {"sha256 of the gunzipped content"}
    assert sorted(p.name for p in (tmp_path / "raw" / "fashion_mnist").iterdir()) == sorted(
        f.name for f in get_dataset("fashion_mnist").files
    )
