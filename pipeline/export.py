"""Export the VAE encoder and decoder and the GAN generator to ONNX, checked against torch before anything is written.

Exporter: ``torch.onnx.export(..., dynamo=True)``, torch's supported path since 2.9 (the TorchScript exporter
is deprecated). It traces with ``torch.export``, so the batch dimension is a true symbol, and runs onnxscript's
optimizer (constant folding, no dead nodes). On our MLP and DCGAN networks its graphs have the legacy exporter's
nodes (Gemm/Conv/ConvTranspose, activations, one Reshape), run as fast under onnxruntime, and match torch to ~1e-7.
Opsets below 18 are not offered: the dynamo exporter cannot down-convert these graphs faithfully.

Each model is exported in memory, described by its metadata (:class:`pipeline.runtime.ModelMetadata`), checked by
``onnx.checker``, and run by onnxruntime against torch on fresh random inputs at several batch sizes; a max abs error
above ``export.parity_atol`` raises :class:`ExportError`. Reduced-size variants (fp16 weights with float32 inputs and
outputs; int8: 8-bit dynamic quantization of the matrix products, uint8 weights) are compared with the float32 ONNX
model and their error is recorded, not bounded. Only after every model of a run has passed are the files and the
``models.json`` card written, as one set that replaces the previous export whole.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from torch import nn

from pipeline.checkpoint import load_checkpoint, model_from_state
from pipeline.config import ExportParams
from pipeline.data.registry import REGISTRY
from pipeline.io import atomic_directory, write_json
from pipeline.models import VAE, Generator
from pipeline.models.gan import make_codes
from pipeline.runtime import (
    CODE_NAME,
    ENCODER_EXPORTED,
    INPUT_NAMES,
    LABEL_NAME,
    MANIFEST_NAME,
    OUTPUT_NAMES,
    PRIOR_FILE,
    STANDARD_NORMAL,
    ModelMetadata,
)
from pipeline.seeds import stream_seed
from pipeline.web import Explorer

PARITY_BATCH_SIZES = (1, 5, 64)
SCHEMA_PATH = Path(__file__).parent / "schemas" / "models.schema.json"
WEB_DIR = "web"


class ExportError(RuntimeError):
    """A model could not be exported faithfully; nothing was written."""


@dataclass(frozen=True)
class InputSpec:
    """One named model input: per-item shape (the batch dimension is added) and how parity draws random values."""

    name: str
    item_shape: tuple[int, ...]
    distribution: Literal["normal", "unit", "label", "code"]
    num_classes: int | None = None  # labels: the classes; codes: the categories of the code's one-hot part

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if self.distribution == "label":
            return torch.randint(0, self.num_classes, (batch,), generator=generator)
        if self.distribution == "code":
            k = self.num_classes
            continuous = torch.rand((batch, self.item_shape[0] - k), generator=generator) * 2 - 1
            return make_codes(torch.randint(0, k, (batch,), generator=generator) if k else None, continuous, k)
        if self.distribution == "unit":
            return torch.rand((batch, *self.item_shape), generator=generator)
        return torch.randn((batch, *self.item_shape), generator=generator)


@dataclass(frozen=True)
class ExportedModel:
    """A serialized ONNX model that passed its checks, and its entry in the model card."""

    filename: str
    data: bytes
    card: dict[str, Any]


class _Method(nn.Module):
    """Expose one method of a model (e.g. ``decode_mean``) as ``forward`` so it can be exported on its own."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, inputs: torch.Tensor, label: torch.Tensor | None = None) -> Any:
        return getattr(self.model, self.method)(inputs, label)


class _Generator(nn.Module):
    """A GAN generator with its inputs positional, as the ONNX graph takes them: z[, label][, code]."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self, z: torch.Tensor, second: torch.Tensor | None = None, third: torch.Tensor | None = None
    ) -> torch.Tensor:
        conditional = self.generator.num_classes is not None
        label = second if conditional else None
        code = (third if conditional else second) if self.generator.code_dim else None
        return self.generator(z, label, code)


class _PriorSampler(nn.Module):
    """z ~ p(z) from noise: the VAE's ``prior_from_noise`` as ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.model.prior_from_noise(noise, u)


def params_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a config dict."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a network's weights (each tensor's name, dtype, shape and bytes): the files exported from one
    trained model share it, so the runtime can tell them from another training's with the same params."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().flatten()
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def git_revision() -> str:
    """``git rev-parse HEAD`` of the working directory, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _session(data: bytes) -> ort.InferenceSession:
    # parity runs on the CPU provider: deterministic float32 kernels, whatever the deployment hardware
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _set_metadata(model: onnx.ModelProto, metadata: ModelMetadata, doc: str) -> None:
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = doc


def _set_batch_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Declare every input and output as ("batch", *item_shape) (the exporter leaves some dims symbolic)."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in shapes[value.name]:
            dims.add().dim_value = size


def _describe_values(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    described = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        described.append({"name": value.name, "shape": shape, "dtype": dtype})
    return described


def _max_abs_error(
    data: bytes,
    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
    inputs: Sequence[InputSpec],
    batch_sizes: Sequence[int],
    seed: int,
    name: str,
) -> float:
    """Largest |onnxruntime - reference| over all outputs, on fresh random inputs at each batch size."""
    session = _session(data)
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for batch in batch_sizes:
        feeds = {spec.name: spec.sample(batch, generator).numpy() for spec in inputs}
        for got, want in zip(session.run(None, feeds), reference(feeds), strict=True):
            if not np.isfinite(want).all():
                raise ExportError(
                    f"{name}: the reference outputs NaN or infinite values at batch size {batch}: the weights are "
                    "broken (a diverged run?); nothing was written"
                )
            if got.shape != want.shape:
                raise ExportError(f"{name}: onnxruntime gives shape {got.shape}, the reference {want.shape}")
            errors.append(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    return float(np.max(errors))  # NaN propagates, and NaN fails every tolerance


def _torch_reference(module: nn.Module) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(v) for v in feeds.values()))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run


def _onnx_reference(data: bytes) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    session = _session(data)
    return lambda feeds: session.run(None, feeds)


def to_onnx(module: nn.Module, inputs: Sequence[InputSpec], output_names: Sequence[str], opset: int) -> onnx.ModelProto:
    """Trace ``module`` (on CPU, eval mode) into an ONNX model with named inputs/outputs and a dynamic batch."""
    batch = torch.export.Dim("batch")
    example = tuple(spec.sample(2, torch.Generator().manual_seed(0)) for spec in inputs)
    # the exporter logs that torchvision's ops are unavailable and warns about torch internals: noise here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*|copyreg")
        warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used.*")
        try:
            program = torch.onnx.export(
                module,
                example,
                input_names=[spec.name for spec in inputs],
                output_names=list(output_names),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=tuple({0: batch} for _ in inputs),
                optimize=True,
                verbose=False,
            )
        except Exception as err:  # the exporter raises many types; all mean the same to the user
            raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {err}") from err
    with torch.no_grad():
        outputs = module(*example)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    model = program.model_proto
    emitted = _opset(model)
    if emitted != opset:
        raise ExportError(
            f"the exporter emitted opset {emitted} instead of export.opset {opset}; set export.opset: {emitted}"
        )
    shapes = {spec.name: spec.item_shape for spec in inputs}
    shapes.update({name: tuple(out.shape[1:]) for name, out in zip(output_names, outputs, strict=True)})
    _set_batch_shapes(model, shapes)
    return model


def _finish(model: onnx.ModelProto, metadata: ModelMetadata, doc: str) -> bytes:
    _set_metadata(model, metadata, doc)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{metadata.kind} ({metadata.variant}): onnx.checker rejects the model: {err}") from None
    return model.SerializeToString()


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    reduced = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True)
    OnnxModel.graph_topological_sort(reduced.graph)  # the converter appends its input casts at the end
    return reduced


def _to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(copy.deepcopy(model), prepared)  # shape inference and folding, as onnxruntime advises
        # uint8 weights with the uint8 activations: products of int8 weights run through VPMADDUBSW on CPUs without
        # VNNI (AVX2, AVX-512 before Cascade Lake), whose 16-bit sums saturate (decoder error 0.03-0.08 on an AMD
        # Zen 3 against 0.002 for uint8)
        quantize_dynamic(prepared, out, weight_type=QuantType.QUInt8)
        return _prune_domains(onnx.load(out))


def export_module(
    module: nn.Module,
    inputs: Sequence[InputSpec],
    metadata: ModelMetadata,
    *,
    opset: int,
    parity_atol: float,
    quantize: Sequence[str] = (),
    seed: int = 0,
    doc: str = "",
) -> list[ExportedModel]:
    """Export ``module`` (float32) plus the ``quantize`` variants, each checked; raise :class:`ExportError` on failure.

    ``module`` is copied to the CPU in eval mode; the original is left as it was. Files are named
    ``{kind}.onnx`` and ``{kind}.{variant}.onnx``.
    """
    module = copy.deepcopy(module).cpu().float().eval()
    output_names = OUTPUT_NAMES[metadata.kind]
    float_model = to_onnx(module, inputs, output_names, opset)
    float_data = _finish(float_model, metadata, doc)
    parity_seed = stream_seed(seed, "export parity", metadata.kind)
    error = _max_abs_error(float_data, _torch_reference(module), inputs, PARITY_BATCH_SIZES, parity_seed, metadata.kind)
    if not error <= parity_atol:
        raise ExportError(
            f"{metadata.kind}: onnxruntime differs from torch by {error:.3g} (max abs) > export.parity_atol "
            f"{parity_atol:g}; nothing was written. A model that samples inside forward or uses an op that onnxruntime "
            "computes differently cannot be exported faithfully."
        )
    parity = {"reference": "torch", "max_abs_error": error, "batch_sizes": list(PARITY_BATCH_SIZES)}
    models = [_exported(f"{metadata.kind}.onnx", float_data, float_model, metadata, parity, parity_atol)]
    converters = {"fp16": _to_fp16, "int8": _to_int8}
    for variant in quantize:
        reduced = converters[variant](float_model)
        variant_meta = dataclasses.replace(metadata, variant=variant)
        data = _finish(reduced, variant_meta, doc)
        error = _max_abs_error(
            data,
            _onnx_reference(float_data),
            inputs,
            PARITY_BATCH_SIZES,
            stream_seed(seed, "export parity", metadata.kind, variant),
            f"{metadata.kind}.{variant}",
        )
        parity = {"reference": "float32 onnx", "max_abs_error": error, "batch_sizes": list(PARITY_BATCH_SIZES)}
        models.append(_exported(f"{metadata.kind}.{variant}.onnx", data, reduced, variant_meta, parity, None))
    return models


def _prune_domains(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the opset imports no node uses (the quantizer declares nine domains and uses only the standard one)."""
    used = {node.domain or "" for node in model.graph.node} | {""}
    kept = [opset for opset in model.opset_import if (opset.domain or "") in used or opset.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _interface(kind: str, metadata: ModelMetadata, model: onnx.ModelProto) -> dict[str, Any]:
    """What a client must feed and will get back: each value's name, dtype, shape, role and range."""
    roles = {
        "z": {"role": "latent", "distribution": "prior (see prior)"},
        "noise": {"role": "noise", "distribution": "standard_normal"},
        "u": {"role": "component choice", "distribution": "uniform [0, 1)"},
        "image": {"role": "image", "layout": "NCHW", "range": [0.0, 1.0]},
        LABEL_NAME: {"role": "class", "range": [0, (metadata.num_classes or 1) - 1]},
        CODE_NAME: {
            "role": "InfoGAN code",
            "distribution": f"one-hot category over the first {metadata.code_categories} values, then "
            f"{metadata.code_continuous} continuous codes uniform on [-1, 1]",
        },
        "mu": {"role": "posterior mean"},
        "logvar": {"role": "posterior log-variance"},
    }
    if kind == "vae_prior":
        roles["z"] = {"role": "latent", "distribution": f"the prior, {metadata.prior}"}
    elif metadata.prior == STANDARD_NORMAL:
        roles["z"] = {"role": "latent", "distribution": "standard_normal"}
    return {
        "inputs": [{**value, **roles[value["name"]]} for value in _describe_values(model.graph.input)],
        "outputs": [{**value, **roles[value["name"]]} for value in _describe_values(model.graph.output)],
        "prior": {
            "kind": metadata.prior,
            "sampler": None if metadata.prior == STANDARD_NORMAL else PRIOR_FILE,
            "how": "z ~ N(0, I)"
            if metadata.prior == STANDARD_NORMAL
            else f"z = {PRIOR_FILE}(noise ~ N(0, I), u ~ U[0, 1))",
        },
    }


def _exported(
    filename: str,
    data: bytes,
    model: onnx.ModelProto,
    metadata: ModelMetadata,
    parity: dict[str, Any],
    atol: float | None,
) -> ExportedModel:
    card = {
        "file": filename,
        "kind": metadata.kind,
        "variant": metadata.variant,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "opset": _opset(model),
        "domains": sorted(opset.domain or "ai.onnx" for opset in model.opset_import),
        **_interface(metadata.kind, metadata, model),
        "parity": {**parity, "atol": atol},
        "metadata": metadata.to_json(),
    }
    return ExportedModel(filename, data, card)


def class_names(data: dict[str, Any]) -> tuple[str, ...]:
    """The class names of the data a model was trained on (as its checkpoint records them, or the registry's for
    older checkpoints), else the class indices as text."""
    if data.get("class_names"):
        return tuple(str(name) for name in data["class_names"])
    spec = REGISTRY.get(str(data.get("dataset")))
    if spec is not None and spec.class_names:
        return tuple(spec.class_names)
    return tuple(str(k) for k in range(int(data.get("num_classes") or 0)))


def _metadata(
    kind: str,
    model: nn.Module,
    likelihood: str,
    data: dict[str, Any],
    config: dict[str, Any],
    prior: str = STANDARD_NORMAL,
    encoder: str = "not exported: a GAN generator has no encoder",
) -> ModelMetadata:
    return ModelMetadata(
        kind=kind,
        variant="float32",
        latent_dim=int(model.latent_dim),
        image_shape=tuple(int(s) for s in model.image_shape),
        likelihood=likelihood,
        prior=prior,
        encoder=encoder,
        conditional=model.num_classes is not None,
        num_classes=model.num_classes,
        class_names=class_names(data) if model.num_classes is not None else (),
        dataset=str(data.get("dataset", "unknown")),
        params_hash=params_hash(config),
        git_revision=git_revision(),
        weights_sha256=weights_sha256(model),
        code_categories=int(getattr(model, "categories", 0)),
        code_continuous=int(getattr(model, "continuous_codes", 0)),
    )


def _inputs(kind: str, model: nn.Module) -> list[InputSpec]:
    if kind == "vae_prior":
        return [InputSpec("noise", (model.latent_dim,), "normal"), InputSpec("u", (), "unit")]
    (first,) = INPUT_NAMES[kind]
    specs = [
        InputSpec(first, (model.latent_dim,), "normal")
        if first == "z"
        else InputSpec(first, tuple(model.image_shape), "unit")
    ]
    if model.num_classes is not None:
        specs.append(InputSpec(LABEL_NAME, (), "label", model.num_classes))
    if kind == "gan_generator" and model.code_dim:
        specs.append(InputSpec(CODE_NAME, (model.code_dim,), "code", model.categories))
    return specs


def export_vae(
    vae: nn.Module, data: dict[str, Any], config: dict[str, Any], export_config: ExportParams, seed: int = 0
) -> list[ExportedModel]:
    """The VAE's decoder z[, label] -> E[x|z] (11.1-11.4); its prior sampler (noise, u) -> z ~ p(z) where the prior
    is not N(0, I) (VampPrior, two layers); and its encoder x[, label] -> (mu, logvar) (11.18) where q(z|x) is that
    Gaussian (no flow, one layer; the metadata says why otherwise)."""
    options = {"opset": export_config.opset, "parity_atol": export_config.parity_atol, "seed": seed}
    options |= {"quantize": export_config.quantize}
    prior = vae.config.prior if vae.family == "vae" else f"{vae.family}:{vae.config.prior}"
    encoder = ENCODER_EXPORTED
    if vae.family != "vae":
        encoder = (
            f"not exported: q(z|x) of the {vae.family} has two stochastic layers, which no single Gaussian describes"
        )
    elif vae.config.flow_steps:
        encoder = (
            f"not exported: q(z|x) has {vae.config.flow_steps} inverse autoregressive flow steps after its Gaussian"
        )
    describe = {"data": data, "config": config, "prior": prior, "encoder": encoder}
    sampled = "z ~ N(0, I)" if prior == STANDARD_NORMAL else f"z from {PRIOR_FILE} ({prior})"
    exported = export_module(
        _Method(vae, "decode_mean"),
        _inputs("vae_decoder", vae),
        _metadata("vae_decoder", vae, vae.likelihood, **describe),
        doc=f"VAE decoder: z -> E[x|z] in [0, 1] ({vae.likelihood} p(x|z)); sample {sampled} and decode.",
        **options,
    )
    if prior != STANDARD_NORMAL:
        exported += export_module(
            _PriorSampler(vae),
            _inputs("vae_prior", vae),
            _metadata("vae_prior", vae, vae.likelihood, **describe),
            doc=f"VAE prior sampler ({prior}): standard normal noise and a uniform u in [0, 1) -> z ~ p(z).",
            **(options | {"quantize": []}),
        )
    if encoder == ENCODER_EXPORTED:
        exported += export_module(
            _Method(vae, "encode"),
            _inputs("vae_encoder", vae),
            _metadata("vae_encoder", vae, vae.likelihood, **describe),
            doc="VAE encoder: image in [0, 1] -> (mu, logvar) of q(z|x) = N(mu, diag exp(logvar)).",
            **options,
        )
    return exported


def export_generator(
    generator: nn.Module, data: dict[str, Any], config: dict[str, Any], export_config: ExportParams, seed: int = 0
) -> list[ExportedModel]:
    """The GAN generator z[, label] -> g(z) in [0, 1] (§11.2), an implicit model without a likelihood."""
    return export_module(
        _Generator(generator),
        _inputs("gan_generator", generator),
        _metadata("gan_generator", generator, "implicit", data, config),
        opset=export_config.opset,
        parity_atol=export_config.parity_atol,
        quantize=export_config.quantize,
        seed=seed,
        doc="GAN generator (EMA weights): z ~ N(0, I) -> image in [0, 1]"
        + (
            " (InfoGAN: and the code input, see the metadata's code_categories/code_continuous)."
            if generator.code_dim
            else "."
        ),
    )


def export_checkpoints(checkpoint_dir: str | Path, export_config: ExportParams, seed: int = 0) -> list[ExportedModel]:
    """Export ``vae/best.pt`` and ``gan/best.pt`` (EMA generator) under ``checkpoint_dir``, whichever exist."""
    checkpoint_dir = Path(checkpoint_dir)
    vae_path, gan_path = checkpoint_dir / "vae" / "best.pt", checkpoint_dir / "gan" / "best.pt"
    if not vae_path.exists() and not gan_path.exists():
        raise ExportError(f"neither {vae_path} nor {gan_path} exists; train a model first (dvc repro train_vae)")
    models = []
    if vae_path.exists():
        state = load_checkpoint(vae_path)
        vae = model_from_state(state, "model", str(vae_path), VAE)
        models += export_vae(vae, state["data"], state["params"], export_config, seed)
    if gan_path.exists():
        state = load_checkpoint(gan_path)
        generator = model_from_state(state, "generator_ema", str(gan_path), Generator)
        models += export_generator(generator, state["data"], state["params"], export_config, seed)
    return models


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of ``models.json`` (``pipeline/schemas/models.schema.json``)."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise :class:`ExportError` where ``manifest`` does not follow the schema (a bug, never a user mistake)."""
    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(part) for part in err.absolute_path)
        raise ExportError(
            f"{MANIFEST_NAME} does not follow its schema at {where or 'the top'}: {err.message}"
        ) from None


def check_export_folder(out_dir: str | Path) -> None:
    """Refuse a folder that exporting, which replaces the folder as a whole, must not replace: one holding the
    working directory, or one with files but no models.json (not an earlier export)."""
    out_dir = Path(out_dir)
    if Path.cwd().resolve().is_relative_to(out_dir.resolve()):
        raise ExportError(
            f"{out_dir}: holds the working directory, and exporting replaces the whole folder; give --out a folder "
            "of its own (e.g. export)"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise ExportError(
            f"{out_dir}: holds files but no {MANIFEST_NAME}, so it is no earlier export, and exporting replaces the "
            "whole folder; give --out a new or empty folder"
        )


def write_exported(models: Sequence[ExportedModel], out_dir: str | Path, explorer: Explorer | None = None) -> dict:
    """Replace ``out_dir`` as a whole by the model files, the ``models.json`` manifest listing them and, with an
    ``explorer``, the browser explorer in ``web/``; return the manifest.

    Everything is written into a new folder beside ``out_dir`` (refused where it is not an earlier export, see
    :func:`check_export_folder`), which then takes its place: an export that fails midway (an unwritable folder, a
    full disk) leaves the previous set of files and manifest as they were, never a mix of two exports.
    """
    check_export_folder(out_dir)
    out_dir = Path(out_dir)
    manifest = {
        "schema": SCHEMA_PATH.name,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "models": [model.card for model in models],
    }
    validate_manifest(manifest)
    if explorer is not None:
        explorer.check()
    with atomic_directory(out_dir) as staging:
        for model in models:
            (staging / model.filename).write_bytes(model.data)
        write_json(staging / MANIFEST_NAME, manifest)
        if explorer is not None:
            explorer.write(staging / WEB_DIR, {model.filename: model.data for model in models}, manifest)
    return manifest
