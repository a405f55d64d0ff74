"""`python -m stages bench onnx`: onnxruntime (through pipeline.runtime) against torch eager, per exported model.

Latency at batch 1 (median ms per call) and throughput at batch 1024 (samples/s), both engines in this process on
the same thread count, timed in alternating blocks so that load from other processes hits both alike. The models
are the trained checkpoints when they exist, else fresh ones built from params.yaml (speed does not depend on the
weights). Target: onnxruntime ≥ 2× faster at batch 1 and no slower at
batch 1024.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from benchmarks.common import COUNT
from pipeline.checkpoint import load_checkpoint, model_from_state
from pipeline.device import to_device
from pipeline.export import ExportError, export_generator, export_vae, write_exported
from pipeline.gan_trainer import build_generator
from pipeline.models import VAE, Generator
from pipeline.runtime import CODE_NAME, INPUT_NAMES, LABEL_NAME, GenerativeModel, make_codes, open_session
from pipeline.vae_trainer import build_vae
from stages.common import fail_cleanly, load_params, params_option


def paired_medians(calls: list[Callable[[], object]], min_time: float, min_calls: int) -> list[float]:
    """Median wall time of each call, timed in alternating blocks of ~0.2 s.

    Blocks, not single calls, alternate: each engine's idle worker threads spin for a while after a call and would
    slow the other engine's next call. Alternating still spreads load from other processes over both alike.
    """
    times: list[list[float]] = [[] for _ in calls]
    while min(len(t) for t in times) < min_calls or sum(sum(t) for t in times) < min_time * len(calls):
        for call, spent in zip(calls, times, strict=True):
            for _ in range(3):
                call()  # warm-up after the other engine ran
            block = time.perf_counter()
            while time.perf_counter() - block < 0.2 or len(spent) < 2:
                t0 = time.perf_counter()
                call()
                spent.append(time.perf_counter() - t0)
    return [statistics.median(spent) for spent in times]


def load_models(params_path: str, checkpoint_dir: Path, image_shape: tuple[int, int, int]) -> tuple[dict, str]:
    """{"vae": (model, data, params), "gan": (generator, data, params)}, and where they came from: the checkpoints
    in ``checkpoint_dir`` if both exist, else untrained models of ``params_path`` for ``image_shape`` images."""
    config = load_params(params_path)
    vae_path, gan_path = checkpoint_dir / "vae" / "best.pt", checkpoint_dir / "gan" / "best.pt"
    if vae_path.exists() and gan_path.exists():
        vae_state, gan_state = load_checkpoint(vae_path), load_checkpoint(gan_path)
        vae = model_from_state(vae_state, "model", str(vae_path), VAE)
        generator = model_from_state(gan_state, "generator_ema", str(gan_path), Generator)
        return {
            "vae": (vae, vae_state["data"], vae_state["params"]),
            "gan": (generator, gan_state["data"], gan_state["params"]),
        }, f"checkpoints in {checkpoint_dir}"
    num_classes = 10
    data = {"image_shape": list(image_shape), "num_classes": num_classes, "dataset": "benchmark"}
    models = {
        "vae": (to_device(build_vae(config, image_shape, num_classes), "cpu"), data, config.to_dict()),
        "gan": (to_device(build_generator(config, image_shape, num_classes), "cpu"), data, config.to_dict()),
    }
    return models, f"untrained models from {params_path}, images {image_shape}"


def torch_call(module: nn.Module, kind: str, batch: int) -> Callable[[], object]:
    rng = torch.Generator().manual_seed(0)
    first = (
        torch.rand((batch, *module.image_shape), generator=rng)
        if kind == "vae_encoder"
        else torch.randn((batch, module.latent_dim), generator=rng)
    )
    label = None if module.num_classes is None else torch.randint(0, module.num_classes, (batch,), generator=rng)
    method = {"vae_decoder": "decode_mean", "vae_encoder": "encode", "gan_generator": "forward"}[kind]

    def run() -> object:
        with torch.inference_mode():
            return getattr(module, method)(first, label)

    return run


def infogan_codes(model: GenerativeModel, batch: int, rng: np.random.Generator) -> np.ndarray | None:
    """Codes from their prior for an InfoGAN generator (as its torch twin draws them when none are given), else None."""
    k, c = model.metadata.code_categories, model.metadata.code_continuous
    if not k + c:
        return None
    return make_codes(rng.integers(0, k, batch) if k else None, rng.uniform(-1, 1, (batch, c)), k)


def onnx_call(model: GenerativeModel, kind: str, batch: int) -> Callable[[], object]:
    """The runtime's decode/encode: input checks plus onnxruntime."""
    rng = np.random.default_rng(0)
    label = None if model.num_classes is None else rng.integers(0, model.num_classes, batch)
    if kind == "vae_encoder":
        x = rng.random((batch, *model.image_shape), dtype=np.float32)
        return lambda: model.encode(x, label)
    z = rng.standard_normal((batch, model.latent_dim), dtype=np.float32)
    codes = infogan_codes(model, batch, rng)
    return lambda: model.decode(z, label, codes)


def session_call(path: Path, model: GenerativeModel, kind: str, threads: int) -> Callable[[], object]:
    """A bare onnxruntime session.run at batch 1: the engine without the runtime's input checks."""
    session = open_session(path, threads=threads)
    rng = np.random.default_rng(0)
    first = (
        rng.random((1, *model.image_shape), dtype=np.float32)
        if kind == "vae_encoder"
        else rng.standard_normal((1, model.latent_dim), dtype=np.float32)
    )
    (name,) = INPUT_NAMES[kind]
    feeds = {name: first}
    if model.num_classes is not None:
        feeds[LABEL_NAME] = rng.integers(0, model.num_classes, 1)
    codes = None if kind == "vae_encoder" else infogan_codes(model, 1, rng)
    if codes is not None:
        feeds[CODE_NAME] = codes
    return lambda: session.run(None, feeds)


def parse_image_shape(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    """--image-shape "C,H,W" -> (C, H, W), three positive integers."""
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"{value!r} is not C,H,W, three positive integers (e.g. 1,28,28)")
    return shape


@click.command()
@params_option
@click.option("--checkpoints", "checkpoint_dir", default="checkpoints", show_default=True, type=click.Path())
@click.option("--threads", type=COUNT, default=None, help="intra-op threads of both engines (default: torch's)")
@click.option("--image-shape", default="1,28,28", show_default=True, callback=parse_image_shape,
              help="C,H,W of untrained models")  # fmt: skip
@click.option("--large-batch", default=1024, show_default=True, type=COUNT)
@click.option(
    "--min-time",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="seconds timed per measurement",
)
@fail_cleanly(ValueError, OSError, ExportError)
def main(
    params_path: str,
    checkpoint_dir: str,
    threads: int | None,
    image_shape: tuple[int, int, int],
    large_batch: int,
    min_time: float,
) -> None:
    """Latency (batch 1) and throughput (large batch) of each exported model: onnxruntime vs torch eager."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    models, source = load_models(params_path, Path(checkpoint_dir), image_shape)
    config = load_params(params_path)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_vae(*models["vae"], config.export) + export_generator(*models["gan"], config.export)
        write_exported(exported, tmp)
        files = {kind: Path(tmp) / f"{kind}.onnx" for kind in ("vae_decoder", "vae_encoder", "gan_generator")}
        files = {kind: path for kind, path in files.items() if path.exists()}  # no encoder for hvae or a flow
        vae = GenerativeModel(files["vae_decoder"], files.get("vae_encoder"), threads=threads)
        runtime = {"vae_decoder": vae, "vae_encoder": vae}
        runtime["gan_generator"] = GenerativeModel(files["gan_generator"], threads=threads)
        bare = {kind: session_call(files[kind], runtime[kind], kind, threads) for kind in files}
    eager = {"vae_decoder": models["vae"][0], "vae_encoder": models["vae"][0], "gan_generator": models["gan"][0]}
    click.echo(f"onnx benchmark: {source}; {threads} thread(s); {vae.providers[0]}")
    click.echo(
        f"torch {torch.__version__} eager (inference_mode) vs onnxruntime {ort.__version__} through pipeline.runtime "
        "(ort); 'bare' is session.run without the runtime's input checks"
    )
    big = f"b{large_batch} /s"
    header = (
        f"{'model':<14} {'torch b1 ms':>11} {'ort b1 ms':>9} {'speedup':>7} {'bare ms':>7} {'speedup':>7}   "
        f"{'torch ' + big:>16} {'ort ' + big:>14} {'ratio':>6}"
    )
    click.echo(header)
    click.echo("-" * len(header))
    verdicts = []
    for kind in files:
        module, model = eager[kind].eval(), runtime[kind]
        t_torch, t_ort, t_bare = paired_medians(
            [torch_call(module, kind, 1), onnx_call(model, kind, 1), bare[kind]], min_time, 50
        )
        big_torch, big_ort = (
            large_batch / t
            for t in paired_medians(
                [torch_call(module, kind, large_batch), onnx_call(model, kind, large_batch)], min_time, 5
            )
        )
        verdicts.append((t_torch / t_ort >= 2.0, big_ort >= big_torch))
        click.echo(
            f"{kind:<14} {t_torch * 1e3:>11.3f} {t_ort * 1e3:>9.3f} {t_torch / t_ort:>6.1f}× {t_bare * 1e3:>7.3f} "
            f"{t_torch / t_bare:>6.1f}×   {big_torch:>16,.0f} {big_ort:>14,.0f} {big_ort / big_torch:>5.2f}×"
        )
    click.echo(
        f"target ort ≥ 2× torch at batch 1: {'met' if all(v[0] for v in verdicts) else 'NOT met'}; "
        f"ort no slower at batch {large_batch}: {'met' if all(v[1] for v in verdicts) else 'NOT met'}"
    )
