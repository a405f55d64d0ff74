"""The one typed schema of ``params.yaml``, and its one set of defaults (equal to the shipped file, by test).

Every stage loads its parameters through :func:`load_config`, which rejects a missing or
unknown key, a wrong type, NaN or infinity, or an out-of-range value with one message naming
the key, the bad value and what is allowed, before any work is done. :func:`check_compatible`
is the one check of parameters against the data they will train on.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.data.processed import ProcessedData
from pipeline.data.registry import REGISTRY
from pipeline.vae_settings import vae_settings_error

DATASETS = tuple(REGISTRY)
# A number as YAML 1.2 reads it that PyYAML, a YAML 1.1 reader, leaves as text for want of a decimal point (1e-3):
# float parameters accept it, so `lr: 1e-3` means what its writer meant.
YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


class ConfigError(ValueError):
    """A parameter in params.yaml is not acceptable."""


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> dict:
    return {"min": lo, "max": hi, "min_open": lo_open, "max_open": hi_open}


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A schema field: its default, a one-line description and optional range metadata."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# the IWAE bound's gradient for q(z|x): the reparameterized one, or the doubly reparameterized (Tucker et al. 2018)
IwaeGradient = Literal["standard", "dreg"]


@dataclass(frozen=True)
class DataParams:
    dataset: Literal[DATASETS] = _f("digits", "which dataset the download stage fetches")
    mirror: str | None = _f(None, "local directory consulted before any remote source (env DGM_DATA_MIRROR overrides)")
    path: str | None = _f(None, "the user's .npz file (dataset npz) or image directory (dataset image_folder)")
    image_size: int = _f(28, "side length images of an image_folder are resized to", **_range(4, 512))
    channels: Literal[1, 3] = _f(1, "channels of an image_folder dataset (1 = grey, 3 = RGB)")
    binarize: Literal["none", "static", "dynamic"] = _f(
        "dynamic", "none: grey values; static: one seeded Bernoulli draw stored; dynamic: a fresh draw each epoch"
    )
    validation_fraction: float = _f(
        0.1,
        "share of the training split held out for validation when the dataset has none",
        **_range(0.0, 0.5, lo_open=True),
    )
    timeout_s: float = _f(30.0, "network timeout of one request, seconds", **_range(0.0, 3600, lo_open=True))
    retries: int = _f(3, "attempts per source before moving to the next mirror", **_range(1, 20))
    deadline_s: float | None = _f(
        None,
        "total seconds the download may take over all files and sources (null: no limit)",
        **_range(0.0, 1e7, lo_open=True),
    )


@dataclass(frozen=True)
class VaeParams:
    family: Literal["vae", "hvae"] = _f(
        "vae", "vae: one stochastic layer; hvae: two (z1 latent_dim, z2 top_latent_dim)"
    )
    arch: Literal["mlp", "gated_mlp", "conv", "resnet"] = _f("mlp", "encoder/decoder architecture")
    hidden_sizes: list[int] = _f(
        [512, 256],
        "hidden layer widths of the mlp architectures; hvae: the last also sizes its z1 layers",
        **_range(1, 65536),
    )
    conv_channels: list[int] = _f(
        [32, 64], "channels of the conv/resnet architectures' stride-2 blocks", **_range(1, 4096)
    )
    prior: Literal["standard_normal", "vampprior"] = _f(
        "standard_normal", "p(z): N(0, I), or the VampPrior mixture over learned pseudo-inputs (Tomczak & Welling)"
    )
    pseudo_inputs: int = _f(500, "the VampPrior's number of pseudo-inputs", **_range(1, 100000))
    pseudo_init: Literal["constant", "data"] = _f(
        "constant",
        "where the VampPrior's pseudo-inputs start: near 0.05 (the VampPrior code), or at training images drawn at "
        "random (the paper's other option)",
    )
    flow_steps: int = _f(
        0, "inverse autoregressive flow steps on q(z|x) (Kingma et al. 2016); 0: none", **_range(0, 64)
    )
    flow_hidden: int = _f(256, "hidden width (and encoder context size) of the flow steps", **_range(1, 65536))
    dropout: float = _f(
        0.0,
        "dropout probability after every hidden layer of the mlp architectures, in training only (0: none)",
        **_range(0.0, 0.95),
    )
    clamp_logvar: bool = _f(
        False,
        "keep the log-variance of q(z|x) (of q(z2|x) in the hvae) in [-6, 2] as the VampPrior code does, which also "
        "bounds the VampPrior's components q(z|u_m); the hvae's conditional layers are always kept there",
    )
    top_latent_dim: int = _f(40, "hvae: size of the top stochastic layer z2", **_range(1, 4096))
    decoder_input: Literal["joint", "per_layer"] = _f(
        "joint",
        "hvae: p(x|z1, z2)'s first layer reads [z1, z2] jointly, or one layer per stochastic layer joined by the "
        "next (per_layer, the VampPrior code; mlp architectures)",
    )
    init: Literal["torch", "he"] = _f(
        "torch",
        "torch: PyTorch's default weights; he: linear and convolution weights ~ N(0, 2/fan_in) (He et al. 2015), "
        "as in the VampPrior code",
    )
    likelihood: Literal["bernoulli", "gaussian"] = _f("bernoulli", "decoder distribution p(x|z) (11.1-11.4)")
    gaussian_variance: Literal["learned", "fixed"] = _f(
        "learned", "gaussian decoder: per-pixel learned or fixed variance"
    )
    gaussian_std: float = _f(
        0.1, "gaussian decoder: the fixed std, or the floor of the learned one", **_range(0.0, 10.0, lo_open=True)
    )
    conditional: bool = _f(False, "condition encoder and decoder on the class label (Fig. 11.2b)")
    mc_samples: int = _f(1, "M, samples of z per x in the ELBO's reconstruction term (11.32)", **_range(1, 1024))
    iwae_k: int = _f(1, "importance samples of the training bound; 1 is the ELBO", **_range(1, 4096))
    iwae_gradient: IwaeGradient = _f(
        "standard",
        "the IWAE bound's gradient for q(z|x): standard, or dreg, doubly reparameterized (Tucker et al. 2018), "
        "whose signal does not fade as iwae_k grows; iwae_k > 1, no flows",
    )
    kl_warmup_epochs: int = _f(10, "epochs over which the KL weight rises linearly from 0 to 1", **_range(0, 100000))
    free_bits: float = _f(0.0, "minimum KL per latent dimension, nats (0 disables)", **_range(0.0, 100.0))
    valid_samples: int = _f(
        0,
        "importance samples K of a validation log p(x) estimate logged every epoch as valid/log_px; above 0 it, not "
        "the validation bound, chooses best.pt, ends the run early and drives the plateau schedule (0: off)",
        **_range(0, 100000),
    )
    epochs: int = _f(100, "training epochs (at most)", **_range(1, 100000))
    patience: int | None = _f(
        None,
        "early stopping: end after this many epochs without a better validation bound, or validation log p(x) "
        "with valid_samples (null: never)",
        **_range(1, 100000),
    )
    max_minutes: float | None = _f(
        None,
        "wall-clock training budget in minutes; the epoch running when it is spent is the last (null: none)",
        **_range(0.0, 1e6, lo_open=True),
    )
    batch_size: int = _f(32, "training batch size per process (effective: × torchrun world size)", **_range(1, 1 << 20))
    lr: float = _f(1e-3, "Adam learning rate", **_range(0.0, 1.0, lo_open=True))
    weight_decay: float = _f(
        0.0,
        "decoupled weight decay (AdamW) of the linear and convolutional layers' weights; biases, scales and the "
        "VampPrior's pseudo-inputs are not decayed (0: plain Adam)",
        **_range(0.0, 10.0),
    )
    normalize_gradients: bool = _f(
        False,
        "divide each parameter tensor's gradient by its L2 norm before the Adam step (the VampPrior code's "
        "AdamNormGrad)",
    )
    lr_schedule: Literal["constant", "plateau", "cosine"] = _f(
        "constant",
        "plateau: halve the rate after lr_patience epochs without progress; cosine: anneal it to 0 over the run "
        "(its epochs, or max_minutes when the budget ends it sooner)",
    )
    lr_patience: int = _f(
        10,
        "plateau schedule: epochs without a better validation bound (log p(x) with valid_samples) before halving",
        **_range(1, 100000),
    )
    ema_decay: float = _f(
        0.0,
        "Polyak averaging: decay of the weights' moving average, which is validated, checkpointed and evaluated "
        "(0: none)",
        **_range(0.0, 1.0),
    )
    bf16: bool = _f(False, "bf16 autocast on CUDA or the CPU (ignored on MPS)")
    resume: bool = _f(False, "continue from the last checkpoint if one exists")


@dataclass(frozen=True)
class GanParams:
    arch: Literal["mlp", "dcgan"] = _f("mlp", "generator/discriminator architecture")
    hidden_sizes: list[int] = _f([256, 256], "hidden layer widths of the mlp architecture", **_range(1, 65536))
    base_channels: int = _f(64, "channel width of the dcgan architecture", **_range(1, 4096))
    init: Literal["dcgan", "torch"] = _f(
        "dcgan",
        "dcgan: weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02) (Radford et al. 2015); torch: its defaults",
    )
    loss: Literal["minimax", "non_saturating", "hinge", "wgan_gp"] = _f("non_saturating", "adversarial objective")
    gp_weight: float = _f(10.0, "lambda of the WGAN-GP gradient penalty (loss wgan_gp)", **_range(0.0, 1e6))
    r1_gamma: float = _f(
        0.0,
        "gamma of the R1 penalty gamma/2 E||grad D(x)||^2 on real images (Mescheder et al. 2018); 0: off",
        **_range(0.0, 1e6),
    )
    spectral_norm: bool = _f(False, "spectral normalization of the discriminator's layers")
    label_smoothing: float = _f(0.0, "one-sided label smoothing: real target is 1 - this", **_range(0.0, 0.5))
    feature_matching: bool = _f(False, "generator matches discriminator features (Salimans et al. 2016)")
    info_categories: int = _f(0, "InfoGAN: categories of a categorical latent code (0: none)", **_range(0, 1024))
    info_continuous: int = _f(0, "InfoGAN: continuous latent codes, uniform on [-1, 1] (0: none)", **_range(0, 64))
    info_weight: float = _f(
        1.0, "InfoGAN: lambda of the mutual-information term (Chen et al. 2016)", **_range(0.0, 1e6)
    )
    ema_decay: float = _f(0.999, "decay of the generator's weight EMA used for sampling and export", **_range(0.0, 1.0))
    conditional: bool = _f(False, "feed the class label to both networks (Mirza & Osindero 2014)")
    epochs: int = _f(100, "training epochs (at most)", **_range(1, 100000))
    max_minutes: float | None = _f(
        None,
        "wall-clock training budget in minutes; the epoch running when it is spent is the last (null: none)",
        **_range(0.0, 1e6, lo_open=True),
    )
    batch_size: int = _f(32, "training batch size (batch norm needs 2 or more)", **_range(2, 1 << 20))
    lr_g: float = _f(1e-3, "generator Adam learning rate", **_range(0.0, 1.0, lo_open=True))
    lr_d: float = _f(1e-3, "discriminator Adam learning rate", **_range(0.0, 1.0, lo_open=True))
    beta1: float = _f(0.5, "Adam beta1", **_range(0.0, 1.0, hi_open=True))
    beta2: float = _f(0.999, "Adam beta2", **_range(0.0, 1.0, hi_open=True))
    d_steps: int = _f(
        1,
        "discriminator updates per generator update (at most the run's steps, or the generator never trains)",
        **_range(1, 100),
    )
    sample_every_epochs: int = _f(25, "epochs between logged sample grids and metrics", **_range(1, 100000))
    log_every_steps: int = _f(
        50, "discriminator steps per logged window of losses, D(x) and D(g(z))", **_range(1, 1 << 30)
    )
    bf16: bool = _f(False, "bf16 autocast on CUDA or the CPU (ignored on MPS)")
    resume: bool = _f(False, "continue from the last checkpoint if one exists")


@dataclass(frozen=True)
class EvaluateParams:
    num_samples: int = _f(1000, "K, importance samples per test point (the literature uses 5000)", **_range(1, 1 << 24))
    curve_ks: list[int] = _f(
        [1, 10, 100], "K values of the convergence curve (num_samples is added)", **_range(1, 1 << 24)
    )
    splits: list[Literal["test", "valid"]] = _f(
        ["test"], "held-out splits whose log p(x) is importance-sampled (test always; add valid)"
    )
    max_points: int | None = _f(None, "evaluate at most this many test points (null: all)", **_range(1, 1 << 30))
    memory_budget_mb: int = _f(512, "working memory the estimators may use", **_range(16, 1 << 20))
    ais_steps: int = _f(200, "AIS intermediate distributions", **_range(1, 1 << 20))
    ais_chains: int = _f(8, "AIS chains per test point", **_range(1, 4096))
    ais_leapfrog_steps: int = _f(5, "HMC leapfrog steps per AIS transition", **_range(1, 1000))
    ais_points: int = _f(100, "test points evaluated by AIS", **_range(1, 1 << 30))
    classifier_epochs: int = _f(10, "epochs of the feature classifier for sample metrics", **_range(1, 10000))
    num_generated: int = _f(1000, "generated images per model for the sample metrics", **_range(10, 1 << 24))


@dataclass(frozen=True)
class ExportParams:
    opset: int = _f(18, "ONNX opset of the exported models (the dynamo exporter emits 18 or newer)", **_range(18, 23))
    parity_atol: float = _f(
        1e-5, "max abs error allowed between onnxruntime and torch (float32)", **_range(0.0, 1.0, lo_open=True)
    )
    quantize: list[Literal["fp16", "int8"]] = _f([], "reduced-size variants to export besides float32")
    web: bool = _f(True, "write the browser latent explorer into export/web (needs `npm ci --prefix web`)")


@dataclass(frozen=True)
class Config:
    seed: int = _f(0, "seed of every random draw", **_range(0, 2**31 - 1))
    latent_dim: int = _f(16, "size of z, shared by the VAE and the GAN", **_range(1, 4096))
    device: Literal["auto", "cpu", "cuda", "mps"] = _f("auto", "auto: CUDA, else Apple MPS, else CPU")
    data: DataParams = field(default_factory=DataParams)
    vae: VaeParams = field(default_factory=VaeParams)
    gan: GanParams = field(default_factory=GanParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain nested dicts, as params.yaml holds them."""
        return dataclasses.asdict(self)

    def select(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The values of ``keys`` (top-level names, whole sections such as "vae", or dotted keys such as
        "evaluate.num_samples") as a nested dict: what a stage's outputs depend on, as dvc.yaml declares."""
        selected: dict[str, Any] = {}
        for key in keys:
            *sections, name = key.split(".")
            node, target = self, selected
            for section in sections:
                node, target = getattr(node, section), target.setdefault(section, {})
            value = getattr(node, name)
            target[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return selected


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of ({_describe(typing.get_args(tp)[0])})"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _check_range(key: str, value: float, meta: dict) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    lo_open, hi_open = meta.get("min_open", False), meta.get("max_open", False)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"{key}: {value!r} is out of range; allowed: {left}{lo}, {hi}{right}")


def _coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, meta)
            except ConfigError as err:
                errors.append(err)
        if type(None) in args and isinstance(value, str) and value.strip().lower() in ("none", "null", "~"):
            raise ConfigError(f"{key}: {value!r} is a string; write null, unquoted, for none")
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[0]):
            return value
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{key}: {value!r} is not allowed{did_you_mean}; allowed: {_describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        _check_range(key, value, meta)
        return value
    if tp is float:
        if isinstance(value, str) and YAML12_FLOAT.fullmatch(value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: {value!r} is not a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not allowed; give a finite number")
        _check_range(key, float(value), meta)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return value
    raise TypeError(f"schema type {tp!r} of {key} is not supported")


def _missing(cls: type, raw: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the schema that ``raw`` leaves out (a missing section counts as one key)."""
    if not isinstance(raw, dict):
        return []
    hints, missing = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            missing.append(key)
        elif dataclasses.is_dataclass(hints[f.name]):
            missing += _missing(hints[f.name], raw[f.name], f"{key}.")
    return missing


def _build(cls: type, raw: Any, prefix: str = "") -> Any:
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            name = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{name}: unknown key{did_you_mean}; allowed keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            key = f"{prefix}.{name}" if prefix else name
            values[name] = _coerce(key, raw[name], hints[name], dict(f.metadata))
    return cls(**values)


def config_from_dict(raw: dict[str, Any], complete: bool = False) -> Config:
    """Validate a params mapping against the schema (keys left out take the defaults, unless ``complete``); raise
    ConfigError naming the first bad key, or every missing one."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping of keys, got {raw!r}")
    if complete and not raw:
        raise ConfigError("the parameters file is empty; restore params.yaml from the repository (git checkout)")
    missing = _missing(Config, raw) if complete else []
    if missing:
        raise ConfigError(f"missing keys: {', '.join(missing)}; every key of the shipped params.yaml is required")
    config = _build(Config, raw)
    data = config.data
    if data.dataset in ("npz", "image_folder") and not data.path:
        raise ConfigError(f"data.path: null is not allowed with data.dataset {data.dataset!r}; give the file or folder")
    if config.gan.arch == "mlp" and not config.gan.hidden_sizes:
        raise ConfigError("gan.hidden_sizes: [] is not allowed with arch mlp; give at least one width")
    _check_vae(config.vae)
    quantize = config.export.quantize
    if len(set(quantize)) != len(quantize):
        raise ConfigError(f"export.quantize: {quantize} names a variant twice; list each once")
    if config.gan.info_categories == 1:
        raise ConfigError("gan.info_categories: 1 category carries no information; set 0 (no categorical code) or 2+")
    if config.gan.loss in ("hinge", "wgan_gp") and config.gan.label_smoothing > 0:
        raise ConfigError(
            f"gan.label_smoothing applies to the minimax and non_saturating losses; set it to 0 for {config.gan.loss}"
        )
    return config


def _check_vae(vae: VaeParams) -> None:
    """The combinations of VAE parameters that no family accepts (``pipeline/vae_settings.py``), and those that
    training does not."""
    error = vae_settings_error(vae)
    if error:
        raise ConfigError(error)
    if vae.iwae_gradient == "dreg" and vae.iwae_k == 1:
        raise ConfigError("vae.iwae_gradient: dreg is for the IWAE bound; set vae.iwae_k above 1, or standard")
    if vae.iwae_gradient == "dreg" and vae.family == "hvae" and vae.dropout > 0:
        raise ConfigError(
            "vae.iwae_gradient: dreg scores z1 by q(z1|x, z2) run again, where dropout would draw other masks than "
            "the sample's; set vae.dropout: 0 or vae.iwae_gradient: standard"
        )
    if vae.iwae_gradient == "dreg" and vae.flow_steps:
        raise ConfigError(
            "vae.iwae_gradient: dreg scores z at q's fixed parameters, which an IAF cannot (its inverse is "
            "sequential); set vae.flow_steps: 0 or vae.iwae_gradient: standard"
        )
    if vae.free_bits > 0 and vae.iwae_k > 1:
        raise ConfigError("vae.free_bits applies to the ELBO only; set vae.iwae_k: 1 or vae.free_bits: 0")
    if vae.free_bits > 0 and (vae.family != "vae" or vae.prior != "standard_normal" or vae.flow_steps):
        raise ConfigError(
            "vae.free_bits needs the closed-form KL of the one-layer vae with prior standard_normal and no flow; "
            "set vae.free_bits: 0"
        )


def check_compatible(config: Config, section: str, data: ProcessedData) -> None:
    """The one check of a model's parameters (``section``: "vae" or "gan") against the data it will train on: a
    ConfigError naming the parameter and the fix for a conditional model on unlabelled data, or a Gaussian decoder
    on binary data."""
    params = getattr(config, section)
    if params.conditional and data.y is None:
        raise ConfigError(
            f"{section}.conditional is true but dataset {data.dataset!r} has no labels; "
            f"set {section}.conditional: false or use a labelled dataset"
        )
    if section == "vae" and params.likelihood == "gaussian" and data.binary:
        spec = REGISTRY.get(data.dataset)
        fix = "set data.binarize: none on grey data, or vae.likelihood: bernoulli"
        if data.binarize == "none" or (spec is not None and spec.format == "amat"):
            fix = "the images themselves are 0/1; set vae.likelihood: bernoulli"
        elif config.data.binarize == "none":  # params.yaml changed since the data were preprocessed
            fix = (
                "params.yaml says none now: rerun preprocess (`dvc repro preprocess`), or if the images themselves "
                "are 0/1, set vae.likelihood: bernoulli"
            )
        raise ConfigError(
            "vae.likelihood: 'gaussian' models grey values but the data are binary "
            f"(preprocessed with data.binarize: {data.binarize!r}); {fix}"
        )


def _yaml_position(err: yaml.YAMLError) -> str:
    """' at line L, column C: problem' of a PyYAML error, one line (its own text quotes the whole string)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None)
    return f"{where}: {problem}" if problem else where


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such parameters file; run from the project root or pass --params") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the parameters file as UTF-8 YAML") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}); pass a readable parameters file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{_yaml_position(err)}; fix it or restore it (git checkout)") from None
    try:
        return config_from_dict(raw, complete=True)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def schema_help(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per parameter: dotted key, default and description (`python -m stages params`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            lines += schema_help(hints[f.name], f"{key}.")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(f"{key} = {default!r}: {f.metadata.get('help', '')}")
    return lines
