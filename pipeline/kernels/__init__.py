"""Native CPU kernels: C files beside this one, compiled on first use by the system's C compiler, and linear
layers through oneDNN with prepacked weights.

A kernel is built once per machine into the user cache (``$XDG_CACHE_HOME/deep-generative-pipeline/kernels``,
else ``~/.cache/...``; ``DGM_KERNEL_CACHE`` overrides) with ``-O3 -march=native`` and OpenMP where the compiler
has them, and called through ctypes on contiguous float32 CPU tensors. The build goes to a temporary file that
is renamed into place, so concurrent processes (DDP ranks) never load a half-written library. Where no
compiler works, or with ``DGM_NATIVE_KERNELS=0``, the kernels report themselves unavailable and callers take
their torch implementation, which the tests hold the kernels to.

:func:`packed_linear` runs an ``nn.Linear`` through oneDNN (torch's ``mkldnn`` ops) with its weight reordered
once into oneDNN's blocked layout. It avoids repacking the weight on every product, as ``torch.mm`` does, and it
uses the CPU's widest vectors where torch's BLAS may not (MKL keeps AVX-512 to Intel CPUs: on an AMD EPYC
``torch.mm`` reaches 170-190 GFLOP/s on two cores, oneDNN about 220).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
# Tried in order: the fastest build first, then without OpenMP (Apple clang), then portable code.
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)


def native_kernels_enabled() -> bool:
    """False when ``DGM_NATIVE_KERNELS=0``: every caller then takes its torch implementation."""
    return os.environ.get("DGM_NATIVE_KERNELS", "1") != "0"


def _cache_dir() -> Path:
    if os.environ.get("DGM_KERNEL_CACHE"):
        return Path(os.environ["DGM_KERNEL_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "deep-generative-pipeline" / "kernels"


def _machine_fingerprint() -> str:
    """The CPU a -march=native build is for: a shared cache on another CPU must not load it (illegal instruction)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = ""
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {platform.processor()} {flags}"


def _compile(source: Path, target: Path, compiler: str) -> list[str] | None:
    """Builds ``target`` with the first flag set that compiles; the flags used, or None when none did."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for flags in FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            command = [compiler, *flags, "-shared", "-fPIC", str(source), "-o", str(built), "-lm"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(built, target)
                return flags
            log.debug("%s failed: %s", " ".join(command), result.stderr.strip())
    return None


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled library of ``<name>.c``, built on first use; None (with one warning) when it cannot be built."""
    if not native_kernels_enabled():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        log.warning("no C compiler found (set CC): %s runs on torch's slower path", name)
        return None
    source = SOURCE_DIR / f"{name}.c"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256("\0".join([source.read_text(), compiler, version, _machine_fingerprint()]).encode())
        target = _cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
        if not target.exists():
            flags = _compile(source, target, compiler)
            if flags is None:
                log.warning("%s could not compile %s (DEBUG logging shows why): torch's slower path", compiler, name)
                return None
            log.info("compiled the native kernel %s (%s %s) into %s", name, compiler, " ".join(flags), target)
        return ctypes.CDLL(str(target))
    except OSError as error:  # an unwritable cache, a noexec mount, a broken CC
        log.warning(
            "native kernel %s unavailable (%s): torch's slower path; DGM_KERNEL_CACHE moves the cache", name, error
        )
        return None


@functools.cache
def _decoder_kernels() -> ctypes.CDLL | None:
    library = load("decoder_log_likelihood")
    if library is None:
        return None
    rows_images_pixels = [ctypes.c_long] * 3
    library.bernoulli_log_likelihood.argtypes = [ctypes.c_void_p] * 4 + rows_images_pixels + [ctypes.c_int]
    library.gaussian_log_likelihood.argtypes = (
        [ctypes.c_void_p] * 5 + rows_images_pixels + [ctypes.c_double, ctypes.c_int]
    )
    library.bernoulli_log_likelihood.restype = library.gaussian_log_likelihood.restype = None
    library.vector_lanes.restype = ctypes.c_int
    return library


def decoder_kernel_lanes() -> int | None:
    """The floats per vector the decoder kernels were built for (16: AVX-512, 8: AVX2, 4: SSE or NEON); None when
    they are not built."""
    library = _decoder_kernels()
    return None if library is None else library.vector_lanes()


def decoder_kernels_apply(*tensors: torch.Tensor) -> bool:
    """Whether :func:`bernoulli_log_likelihood` and :func:`gaussian_log_likelihood` can run on these tensors:
    float32 on the CPU, no gradients needed, and the kernels built."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return _decoder_kernels() is not None


def _checked_kernels(
    logits: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, out: torch.Tensor, *per_pixel: torch.Tensor
) -> ctypes.CDLL:
    rows, pixels = logits.shape
    if (
        bias.shape != (pixels,)
        or x.shape[1:] != (pixels,)
        or out.shape != (rows,)
        or rows % x.shape[0]
        or any(t.shape != (pixels,) for t in per_pixel)
    ):
        raise ValueError(
            f"shapes do not fit: logits {tuple(logits.shape)}, bias {tuple(bias.shape)}, x {tuple(x.shape)}, "
            f"out {tuple(out.shape)}{''.join(f', {tuple(t.shape)}' for t in per_pixel)} "
            "(rows must be a multiple of the images)"
        )
    if not all(t.is_contiguous() for t in (logits, bias, x, out, *per_pixel)):
        raise ValueError("the decoder kernels need contiguous tensors")
    library = _decoder_kernels()
    if library is None:
        raise RuntimeError("the decoder kernels are not built here; check decoder_kernels_apply first")
    return library


def bernoulli_log_likelihood(logits: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """out[r] = Σ_d x[r % B, d] v_d - softplus(v_d) with v = logits[r] + bias (11.2-11.3), for R×P logits
    (without the bias), a P bias, B×P images x and an R output, all contiguous float32 on the CPU.

    Check :func:`decoder_kernels_apply` first.
    """
    library = _checked_kernels(logits, bias, x, out)
    rows, pixels = logits.shape
    library.bernoulli_log_likelihood(
        logits.data_ptr(),
        bias.data_ptr(),
        x.data_ptr(),
        out.data_ptr(),
        rows,
        x.shape[0],
        pixels,
        torch.get_num_threads(),
    )


def gaussian_log_likelihood(
    logits: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, inv_std: torch.Tensor, offset: float, out: torch.Tensor
) -> None:
    """out[r] = offset - ½ Σ_d ((x[r % B, d] - sigmoid(v_d)) inv_std_d)² with v = logits[r] + bias (11.4): with
    ``offset`` = -Σ_d log s_d - P/2 log 2π, the log-density of N(sigmoid(v), diag s²). Shapes and types as for
    :func:`bernoulli_log_likelihood`, ``inv_std`` a P vector.
    """
    library = _checked_kernels(logits, bias, x, out, inv_std)
    rows, pixels = logits.shape
    library.gaussian_log_likelihood(
        logits.data_ptr(),
        bias.data_ptr(),
        x.data_ptr(),
        inv_std.data_ptr(),
        out.data_ptr(),
        rows,
        x.shape[0],
        pixels,
        offset,
        torch.get_num_threads(),
    )


class _FrozenWeights(threading.local):
    """Per thread: how many :func:`frozen_weights` blocks are open, and the weights packed within them."""

    def __init__(self) -> None:
        self.depth = 0
        self.packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, packed)


_FROZEN = _FrozenWeights()


@contextlib.contextmanager
def frozen_weights() -> Iterator[None]:
    """Within this block (in this thread) a weight is packed once and the pack reused, on the caller's promise that
    no weight changes meanwhile: for evaluations such as importance sampling, which would otherwise pack per call.

    Outside, every call packs afresh: a version check would not do, as fused optimizers (Adam(fused=True)) update
    weights in place without bumping their version.
    """
    _FROZEN.depth += 1
    try:
        yield
    finally:
        _FROZEN.depth -= 1
        if not _FROZEN.depth:
            _FROZEN.packed.clear()


def packed_linear_available() -> bool:
    """Whether :func:`packed_linear` can run: native kernels enabled, and oneDNN's packed product works in this
    torch build (tried once on a small product against torch's)."""
    return native_kernels_enabled() and _packed_linear_works()


@functools.cache
def _packed_linear_works() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        inputs, weight = torch.randn(5, 3, generator=generator), torch.randn(4, 3, generator=generator)
        with torch.no_grad():
            result = packed_linear(inputs, pack_linear_weight(weight, 5))
        if torch.allclose(result, inputs @ weight.t(), rtol=1e-4, atol=1e-5):
            return True
        log.warning("oneDNN's packed product disagrees with torch's here: torch's slower path")
    except (AttributeError, RuntimeError, NotImplementedError) as error:  # an op missing from, or broken in, this build
        log.warning("oneDNN's packed product is unavailable (%s): torch's slower path", error)
    return False


def pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """An out×in ``weight`` in oneDNN's blocked layout for products of about ``rows`` rows (within
    :func:`frozen_weights`, packed once)."""
    entry = _FROZEN.packed.get(id(weight)) if _FROZEN.depth else None
    if entry is not None and entry[0] is weight:
        return entry[1]
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    if _FROZEN.depth:
        _FROZEN.packed[id(weight)] = (weight, packed)
    return packed


def packed_linear(
    inputs: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None, *, relu: bool = False
) -> torch.Tensor:
    """``inputs @ weight.T + bias`` (then ReLU, fused, when ``relu``) for 2-D float32 CPU ``inputs`` without
    gradients, through oneDNN with a weight from :func:`pack_linear_weight`. Check :func:`packed_linear_available`.
    """
    return torch.ops.mkldnn._linear_pointwise(inputs, packed_weight, bias, "relu" if relu else "none", [], "")
