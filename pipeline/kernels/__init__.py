"""Native CPU kernels: C files beside this one, compiled on first use by the system's C compiler, and linear
layers through oneDNN with prepacked weights.

:func:`mlp_log_likelihood` (``decoder_log_likelihood.c``) runs an MLP decoder's last two layers and its Bernoulli or
Gaussian log-density in one pass, on weights packed once into the kernel's tiles (per call, or per
:func:`frozen_weights` block). A kernel is built once per machine into the user cache
(``$XDG_CACHE_HOME/deep-generative-pipeline/kernels``, else ``~/.cache/...``; ``DGM_KERNEL_CACHE`` overrides) with
``-O3 -march=native`` and OpenMP where the compiler has them, and called through ctypes on contiguous float32 CPU
tensors. The build goes to a temporary file that is renamed into place, so concurrent processes (DDP ranks) never
load a half-written library. Where no compiler works, or with ``DGM_NATIVE_KERNELS=0``, the kernels report
themselves unavailable and callers take their torch implementation, which the tests hold the kernels to.

:func:`packed_linear` runs an ``nn.Linear`` through oneDNN (torch's ``mkldnn`` ops) with its weight reordered
once into oneDNN's blocked layout: the layers of a deeper MLP decoder before the fused two.
It avoids repacking the weight on every product, as ``torch.mm`` does, and it uses the CPU's widest vectors where
torch's BLAS may not (MKL keeps AVX-512 to Intel CPUs: on an AMD EPYC Zen 4 ``torch.mm`` reaches 170-190 GFLOP/s
on two cores, oneDNN about 220).
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
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

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
    pointer, size = ctypes.c_void_p, ctypes.c_long
    library.mlp_log_likelihood.argtypes = [pointer, size, size, pointer, pointer, size, pointer, pointer, size]
    library.mlp_log_likelihood.argtypes += [pointer, size, pointer, ctypes.c_double, pointer, ctypes.c_int]
    library.mlp_log_likelihood.restype = library.vector_lanes.restype = ctypes.c_int
    library.pack_weight.argtypes = [pointer, pointer, size, size]
    library.pack_weight.restype = None
    library.packed_weight_floats.argtypes = [size, size]
    library.packed_weight_floats.restype = size
    return library


def decoder_kernel_lanes() -> int | None:
    """The floats per vector the decoder kernels were built for (16: AVX-512, 8: AVX2, 4: SSE or NEON); None when
    they are not built."""
    library = _decoder_kernels()
    return None if library is None else library.vector_lanes()


def decoder_kernels_apply(*tensors: torch.Tensor) -> bool:
    """Whether :func:`mlp_log_likelihood` can run on these tensors: float32 on the CPU, no gradients needed, and the
    kernels built."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return _decoder_kernels() is not None


def _pack_tile_weight(weight: torch.Tensor) -> torch.Tensor:
    """An out×in ``weight`` in the kernel's panels of output units (within :func:`frozen_weights`, packed once)."""

    def pack(weight: torch.Tensor) -> torch.Tensor:
        library = _decoder_kernels()
        weight = weight.detach().contiguous()
        packed = torch.empty(library.packed_weight_floats(*weight.shape), dtype=torch.float32)
        library.pack_weight(weight.data_ptr(), packed.data_ptr(), *weight.shape)
        return packed

    return _packed(weight, "tiles", pack)


def mlp_log_likelihood(
    inputs: torch.Tensor,
    hidden: nn.Linear | None,
    output: nn.Linear,
    x: torch.Tensor,
    out: torch.Tensor,
    inv_std: torch.Tensor | None = None,
    offset: float = 0.0,
) -> None:
    """log p(x|z) of an MLP decoder's last layers, fused: ``out[r]`` = log p(x[r % B] | v) with logits
    v = output(relu(hidden(inputs[r]))) (v = output(inputs[r]) without ``hidden``), for R×I ``inputs``, B×P
    images ``x`` and an R ``out``. Bernoulli (11.2-11.3) unless ``inv_std`` (P) is given: then the Gaussian
    (11.4) N(sigmoid(v), diag s²) with ``offset`` = -Σ_d log s_d - P/2 log 2π. Float32 CPU tensors; check
    :func:`decoder_kernels_apply` first.
    """
    layers = [output] if hidden is None else [hidden, output]
    tensors = [inputs, x, out, *([] if inv_std is None else [inv_std])]
    parameters = [p for layer in layers for p in layer.parameters()]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors + parameters):
        raise ValueError("the decoder kernels take float32 CPU tensors and layers (check decoder_kernels_apply)")
    if inputs.dim() != 2 or x.dim() != 2:
        raise ValueError(f"inputs and x must be matrices, got shapes {tuple(inputs.shape)} and {tuple(x.shape)}")
    widths = [inputs.shape[1]] + [layer.out_features for layer in layers]
    rows, pixels = inputs.shape[0], widths[-1]
    if (
        not x.shape[0]
        or [layer.in_features for layer in layers] != widths[:-1]
        or x.shape[1:] != (pixels,)
        or out.shape != (rows,)
        or rows % x.shape[0]
        or (inv_std is not None and inv_std.shape != (pixels,))
    ):
        raise ValueError(
            f"shapes do not fit: inputs {tuple(inputs.shape)}, layers "
            f"{' -> '.join(map(str, [layers[0].in_features, *widths[1:]]))}, "
            f"x {tuple(x.shape)}, out {tuple(out.shape)}"
            f"{'' if inv_std is None else f', inv_std {tuple(inv_std.shape)}'} (rows must be a multiple of the images)"
        )
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("the decoder kernels need contiguous tensors")
    library = _decoder_kernels()
    if library is None:
        raise RuntimeError("the decoder kernels are not built here; check decoder_kernels_apply first")
    packed = [_pack_tile_weight(layer.weight) for layer in layers]
    biases = [
        (
            torch.zeros(layer.out_features, dtype=torch.float32) if layer.bias is None else layer.bias.detach()
        ).contiguous()
        for layer in layers
    ]
    status = library.mlp_log_likelihood(
        inputs.data_ptr(),
        rows,
        widths[0],
        None if hidden is None else packed[0].data_ptr(),
        None if hidden is None else biases[0].data_ptr(),
        0 if hidden is None else widths[1],
        packed[-1].data_ptr(),
        biases[-1].data_ptr(),
        pixels,
        x.data_ptr(),
        x.shape[0],
        None if inv_std is None else inv_std.data_ptr(),
        offset,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    if status:
        raise MemoryError("the decoder kernel could not allocate its per-thread scratch")


class _FrozenWeights(threading.local):
    """Per thread: how many :func:`frozen_weights` blocks are open, and the weights packed within them."""

    def __init__(self) -> None:
        self.depth = 0
        self.packed: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}  # (id(weight), layout) -> ...


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


def _packed(weight: torch.Tensor, layout: str, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``pack(weight)``, within :func:`frozen_weights` computed once per weight and layout."""
    key = (id(weight), layout)
    entry = _FROZEN.packed.get(key) if _FROZEN.depth else None
    if entry is not None and entry[0] is weight:
        return entry[1]
    with torch.no_grad():
        packed = pack(weight)
    if _FROZEN.depth:
        _FROZEN.packed[key] = (weight, packed)
    return packed


def pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """An out×in ``weight`` in oneDNN's blocked layout for products of about ``rows`` rows (within
    :func:`frozen_weights`, packed once)."""
    return _packed(weight, "oneDNN", lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows))


def packed_linear(
    inputs: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None, *, relu: bool = False
) -> torch.Tensor:
    """``inputs @ weight.T + bias`` (then ReLU, fused, when ``relu``) for 2-D float32 CPU ``inputs`` without
    gradients, through oneDNN with a weight from :func:`pack_linear_weight`. Check :func:`packed_linear_available`.
    """
    return torch.ops.mkldnn._linear_pointwise(inputs, packed_weight, bias, "relu" if relu else "none", [], "")
