"""Sample from exported models with numpy and onnxruntime alone (no torch, no training code).

A deployment copies the ``.onnx`` files of ``export/`` and this file. Each model
describes itself in its ONNX metadata (written by ``pipeline.export``), so

    model = GenerativeModel("export/vae_decoder.onnx", encoder_path="export/vae_encoder.onnx")
    images = model.sample(64, seed=0)            # 64×C×H×W float32 in [0, 1]

draws z from the model's own prior and decodes it: N(0, T² I), or, for a VAE whose metadata names another prior
(the VampPrior, two stochastic layers), standard normal noise scaled by T mapped by ``vae_prior.onnx`` beside the
decoder. The VAE decoder gives Bernoulli probabilities or Gaussian means (11.1-11.4), the GAN generator g(z) its
image (§11.2). One
instance (one onnxruntime session) may be shared by many threads: onnxruntime's
``run`` is thread-safe and no method here keeps per-call state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

KINDS = ("vae_decoder", "vae_encoder", "vae_prior", "gan_generator")
METADATA_KEYS = (
    "kind",
    "variant",
    "latent_dim",
    "image_shape",
    "likelihood",
    "prior",
    "encoder",
    "conditional",
    "num_classes",
    "class_names",
    "dataset",
    "params_hash",
    "git_revision",
)
CODE_KEYS = ("code_categories", "code_continuous")  # InfoGAN generators only; absent means 0
METADATA_PROP = "model"  # the one ONNX metadata key: a JSON object with METADATA_KEYS, typed (numbers, lists, null)
# input and output names of each kind; conditional models take "label" (int64, B) next, InfoGAN generators "code"
# (float32, B×(K + C): a one-hot category over K, then C continuous codes in [-1, 1]) last
INPUT_NAMES = {"vae_decoder": ("z",), "gan_generator": ("z",), "vae_encoder": ("image",), "vae_prior": ("noise", "u")}
OUTPUT_NAMES = {
    "vae_decoder": ("image",),
    "gan_generator": ("image",),
    "vae_encoder": ("mu", "logvar"),
    "vae_prior": ("z",),
}
STANDARD_NORMAL = "standard_normal"
PRIOR_FILE = "vae_prior.onnx"  # the prior sampler of a VAE whose prior is not N(0, I), beside its decoder
ENCODER_EXPORTED = "exported"
LABEL_NAME = "label"
CODE_NAME = "code"
MANIFEST_NAME = "models.json"  # the export stage's list of the files it wrote together, with their sha256
SAMPLE_BATCH = 1024  # images decoded per onnxruntime call when sampling


class ModelFileError(ValueError):
    """A file is not an exported model of this project (not ONNX, or its metadata is missing or wrong)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself (the JSON object under ONNX ``metadata_props["model"]``)."""

    kind: str
    variant: str
    latent_dim: int
    image_shape: tuple[int, int, int]
    likelihood: str
    prior: str  # "standard_normal", or the prior the vae_prior model samples ("vampprior", "hvae:vampprior", ...)
    encoder: str  # "exported", or why q(z|x) has no faithful ONNX encoder
    conditional: bool
    num_classes: int | None
    class_names: tuple[str, ...]  # one name per class of a conditional model's dataset, else empty
    dataset: str
    params_hash: str
    git_revision: str
    # sha256 of the trained network's weights, shared by the files of one export ("": exported before it was recorded)
    weights_sha256: str = ""
    code_categories: int = 0  # InfoGAN: categories of the categorical code (Chen et al. 2016)
    code_continuous: int = 0  # InfoGAN: continuous codes, each in [-1, 1]

    @property
    def code_dim(self) -> int:
        """Width of the ``code`` input (0: the model takes none)."""
        return self.code_categories + self.code_continuous

    def to_json(self) -> dict[str, Any]:
        """The metadata as typed JSON values (the InfoGAN code sizes only where there are codes)."""
        codes = {key: getattr(self, key) for key in CODE_KEYS} if self.code_dim else {}
        return {
            **{key: getattr(self, key) for key in METADATA_KEYS},
            "weights_sha256": self.weights_sha256,
            "image_shape": list(self.image_shape),
            "class_names": list(self.class_names),
            **codes,
        }

    def to_props(self) -> dict[str, str]:
        """The key/value pairs stored in the ONNX file: one key, its value JSON (ONNX metadata holds strings)."""
        return {METADATA_PROP: json.dumps(self.to_json(), sort_keys=True)}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse and check the metadata of ``source``; raise :class:`ModelFileError` naming what is wrong."""
        if METADATA_PROP not in props:
            raise ModelFileError(
                f"{source}: its ONNX metadata has no {METADATA_PROP!r} entry; it was not written by this project's "
                "export stage (or by an older version). Export the model with `python -m stages export`."
            )
        try:
            values = json.loads(props[METADATA_PROP])
            missing = [key for key in METADATA_KEYS if key not in values]
            if missing:
                raise ModelFileError(f"{source}: ONNX metadata lacks {', '.join(missing)}; re-export the model")
            num_classes = values["num_classes"]
            meta = cls(
                kind=str(values["kind"]),
                variant=str(values["variant"]),
                latent_dim=int(values["latent_dim"]),
                image_shape=tuple(int(v) for v in values["image_shape"]),  # type: ignore[arg-type]
                likelihood=str(values["likelihood"]),
                prior=str(values["prior"]),
                encoder=str(values["encoder"]),
                conditional=bool(values["conditional"]),
                num_classes=None if num_classes is None else int(num_classes),
                class_names=tuple(str(v) for v in values["class_names"]),
                dataset=str(values["dataset"]),
                params_hash=str(values["params_hash"]),
                git_revision=str(values["git_revision"]),
                weights_sha256=str(values.get("weights_sha256", "")),
                **{key: int(values.get(key, 0)) for key in CODE_KEYS},
            )
        except (ValueError, TypeError, AttributeError) as err:
            if isinstance(err, ModelFileError):
                raise
            raise ModelFileError(f"{source}: malformed ONNX metadata ({err}); re-export the model") from None
        if meta.kind not in KINDS:
            raise ModelFileError(f"{source}: metadata kind {meta.kind!r} is not one of {', '.join(KINDS)}")
        if (
            len(meta.image_shape) != 3
            or meta.latent_dim < 1
            or (meta.conditional and not meta.num_classes)
            or min(meta.code_categories, meta.code_continuous) < 0
            or (meta.code_dim and meta.kind != "gan_generator")
        ):
            raise ModelFileError(f"{source}: inconsistent ONNX metadata {props}; re-export the model")
        return meta


def portable_normal(seed: int, shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    """float32 standard normals that JavaScript reproduces from the same seed (``web/src/portable.js``): elements
    ``start`` … of the stream, so a draw cut into batches gives the numbers of one draw.

    numpy's generators have no JavaScript twin, so the explorer page and this function share a small one:
    Mulberry32 (32-bit integer arithmetic, exact in both languages) for uniforms u in (0, 1), and Box-Muller pairs
    sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2). The float64 transcendental functions may differ in the last bit
    between libms; after the cast to float32 the values agree to ~1e-7.
    """
    count = int(np.prod(shape))
    first = start - start % 2  # the pair that holds element ``start``
    uniforms = portable_uniform(seed, 2 * ((start + count - first + 1) // 2), first)
    radius = np.sqrt(-2.0 * np.log(uniforms[0::2]))
    angle = 2.0 * np.pi * uniforms[1::2]
    pairs = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)
    return pairs[start - first : start - first + count].astype(np.float32).reshape(shape)


# the explorer's random streams under one seed: Mulberry32 seeded with 8 seed + index, so the streams of one seed
# and those of its neighbours (the page's Resample draws seed + 1) never share numbers; web/src/portable.js twins it
PORTABLE_STREAMS = {"noise": 0, "u": 1, "category": 2, "continuous": 3, "image": 4}


def portable_stream(seed: int, stream: str) -> int:
    """The Mulberry32 seed of stream ``stream`` (a key of :data:`PORTABLE_STREAMS`) under ``seed``."""
    return (8 * seed + PORTABLE_STREAMS[stream]) & 0xFFFFFFFF


def portable_uniform(seed: int, count: int, start: int = 0) -> np.ndarray:
    """Uniforms ``start`` … ``start + count - 1`` (float64, in (0, 1)) of Mulberry32 seeded with ``seed``, as
    :func:`portable_normal` and the page draw them. Mulberry32's state after i steps is seed + i·0x6D2B79F5 (mod
    2^32), so any stretch of the stream is computed at once; products of 32-bit numbers are exact in uint64."""
    mask = np.uint64(0xFFFFFFFF)
    steps = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    state = (np.uint64(seed & 0xFFFFFFFF) + steps * np.uint64(0x6D2B79F5)) & mask
    t = ((state ^ (state >> np.uint64(15))) * (state | np.uint64(1))) & mask
    t = ((t + (((t ^ (t >> np.uint64(7))) * (t | np.uint64(61))) & mask)) & mask) ^ t
    return (((t ^ (t >> np.uint64(14))) & mask).astype(np.float64) + 0.5) / 2**32


def _bounds(a: np.ndarray) -> tuple[np.generic, np.generic]:
    """Smallest and largest element (NaN if any is NaN); the ufunc reductions are faster than .min() at batch 1."""
    return np.minimum.reduce(a, axis=None), np.maximum.reduce(a, axis=None)


# onnxruntime's CUDA provider runs float32 matrix products and convolutions in TF32 (10-bit mantissas) on Ampere
# and newer GPUs unless told otherwise; the export checks its models against torch in full float32, so the runtime
# keeps full float32 there too (and a seed gives the same images on a GPU as on a CPU, to float32 rounding)
CUDA_PROVIDER = ("CUDAExecutionProvider", {"use_tf32": "0"})
Provider = str | tuple[str, dict[str, str]]  # an onnxruntime provider name, or a name with its options


def default_providers(available: list[str] | None = None) -> list[Provider]:
    """CUDA (in full float32) when this onnxruntime build has it (``available``: its providers), else CPU."""
    available = ort.get_available_providers() if available is None else available
    providers: list[Provider] = [CUDA_PROVIDER] if CUDA_PROVIDER[0] in available else []
    return [*providers, "CPUExecutionProvider"]


def full_float32(providers: list[Provider]) -> list[Provider]:
    """``providers`` with a bare "CUDAExecutionProvider" given :data:`CUDA_PROVIDER`'s options (no TF32)."""
    return [CUDA_PROVIDER if p == CUDA_PROVIDER[0] else p for p in providers]


def open_session(
    path: str | Path, providers: list[Provider] | None = None, threads: int | None = None
) -> ort.InferenceSession:
    """An onnxruntime session with full graph optimization; ``threads`` caps intra-op threads (None: all cores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file; run `python -m stages export` first")
    check_against_manifest(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=full_float32(providers or default_providers())
        )
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        raise ModelFileError(f"{path}: not a loadable ONNX model ({str(err).strip()[:300]})") from None


def check_against_manifest(path: str | Path) -> None:
    """Where a ``models.json`` lies beside ``path``, the file must be listed there with its sha256: a model left
    over from another export (or a manifest that is not) is refused, so one set of files is used together."""
    path = Path(path)
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return
    try:
        entries = {entry["file"]: entry["sha256"] for entry in json.loads(manifest.read_text())["models"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{manifest}: not a valid export manifest ({err}); re-run the export stage") from None
    if path.name not in entries:
        raise ModelFileError(f"{path}: not listed in {manifest} beside it; use the files of one export")
    if hashlib.sha256(path.read_bytes()).hexdigest() != entries[path.name]:
        raise ModelFileError(f"{path}: its sha256 differs from {manifest} beside it; re-run the export stage")


def read_metadata(session: ort.InferenceSession, source: str = "model") -> ModelMetadata:
    """The metadata of an open session, checked against the inputs and outputs its kind must have."""
    meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), source)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    expected_inputs = [*INPUT_NAMES[meta.kind]] + (
        [LABEL_NAME] if meta.conditional and meta.kind != "vae_prior" else []
    )
    expected_inputs += [CODE_NAME] if meta.code_dim else []
    if inputs != expected_inputs or outputs != list(OUTPUT_NAMES[meta.kind]):
        raise ModelFileError(
            f"{source}: a {meta.kind} must have inputs {expected_inputs} and outputs {list(OUTPUT_NAMES[meta.kind])}, "
            f"this file has {inputs} and {outputs}; re-export the model"
        )
    return meta


class GenerativeModel:
    """A VAE decoder or GAN generator (plus, optionally, the VAE encoder) run by onnxruntime.

    ``path``: ``vae_decoder*.onnx`` or ``gan_generator*.onnx``; ``encoder_path``: the matching
    ``vae_encoder*.onnx`` for :meth:`encode` and :meth:`reconstruct`. Images are float32 N×C×H×W in
    [0, 1]; latents float32 N×D; labels integers in [0, num_classes) for conditional models.
    """

    def __init__(
        self,
        path: str | Path,
        encoder_path: str | Path | None = None,
        *,
        providers: list[Provider] | None = None,
        threads: int | None = None,
    ) -> None:
        for name, value in (("path", path), ("encoder_path", encoder_path)):
            if not isinstance(value, (str, Path)) and not (name == "encoder_path" and value is None):
                raise ValueError(f"{name} must be the path of an .onnx file, got {value!r}")
        self.path = Path(path)
        self._session = open_session(path, providers, threads)
        self.metadata = read_metadata(self._session, str(path))
        if self.metadata.kind in ("vae_encoder", "vae_prior"):
            raise ModelFileError(
                f"{path}: this is a VAE {self.metadata.kind.removeprefix('vae_')}; pass the decoder as the model"
                + (" and this file as encoder_path" if self.metadata.kind == "vae_encoder" else "")
            )
        self._prior = None
        if self.metadata.prior != STANDARD_NORMAL:
            prior_path = self.path.parent / PRIOR_FILE
            if not prior_path.is_file():
                raise ModelFileError(
                    f"{path}: its prior is {self.metadata.prior}, sampled by {prior_path}, which is missing; keep the "
                    "files of one export together"
                )
            self._prior = open_session(prior_path, providers, threads)
            prior_meta = read_metadata(self._prior, str(prior_path))
            mine = self.metadata
            if prior_meta.kind != "vae_prior" or any(
                getattr(prior_meta, key) != getattr(mine, key) for key in ("params_hash", "weights_sha256")
            ):
                raise ModelFileError(f"{prior_path} and {path} come from different models; use the files of one export")
        self._encoder = None
        if encoder_path is not None:
            self._encoder = open_session(encoder_path, providers, threads)
            encoder_meta = read_metadata(self._encoder, str(encoder_path))
            mine = self.metadata
            if encoder_meta.kind != "vae_encoder" or mine.kind != "vae_decoder":
                raise ModelFileError(
                    f"{encoder_path}: an encoder pairs a vae_encoder with a vae_decoder, got {encoder_meta.kind} "
                    f"with {mine.kind}"
                )
            same = ("latent_dim", "image_shape", "conditional", "num_classes", "params_hash", "weights_sha256")
            if any(getattr(encoder_meta, key) != getattr(mine, key) for key in same):
                raise ModelFileError(
                    f"{encoder_path} and {path} come from different models (compare their {', '.join(same)}); "
                    "use the files of one export"
                )

    @property
    def latent_dim(self) -> int:
        return self.metadata.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.metadata.image_shape

    @property
    def num_classes(self) -> int | None:
        return self.metadata.num_classes

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    @property
    def code_dim(self) -> int:
        """Width of an InfoGAN generator's code (0 for every other model)."""
        return self.metadata.code_dim

    def sample(
        self,
        n: int,
        seed: int = 0,
        labels: int | np.ndarray | None = None,
        temperature: float = 1.0,
        codes: np.ndarray | None = None,
    ) -> np.ndarray:
        """Decode ``n`` draws from the model's prior under ``seed``: z ~ N(0, temperature² I), or noise of that
        scale mapped by the model's prior sampler (for the VampPrior: within the chosen component).

        Conditional models: ``labels`` is one class for all, or ``n`` classes; None cycles 0, 1, ..., K-1, 0, ...
        InfoGAN generators: ``codes`` is one code for all (size K + C, see :func:`make_codes`) or ``n`` codes; None
        draws them from their prior (a uniform category, continuous codes uniform on [-1, 1]) under ``seed``.

        The numbers come from the explorer page's portable streams of ``seed`` (:func:`portable_stream`), so
        ``sample(64, s, temperature=t)`` is the page's grid for seed s at temperature t (its default class and code
        choices), to float32 rounding.
        """
        return np.concatenate(list(self.sample_batches(n, seed, labels, temperature, codes=codes)))

    def sample_batches(
        self,
        n: int,
        seed: int = 0,
        labels: int | np.ndarray | None = None,
        temperature: float = 1.0,
        batch_size: int = SAMPLE_BATCH,
        codes: np.ndarray | None = None,
    ) -> Iterator[np.ndarray]:
        """:meth:`sample` in consecutive batches of at most ``batch_size`` images (the same images, in order, for any
        ``batch_size``), so memory does not grow with ``n``. The noise, the prior's component choices, the code
        categories and the continuous codes are four portable streams of ``seed``, each read on from where the last
        batch stopped."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"n must be a positive integer number of samples, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if labels is None and self.metadata.conditional:
            labels = np.arange(n) % self.metadata.num_classes
        elif labels is not None and np.ndim(labels) == 0:
            labels = np.full(n, labels)
        if labels is not None:
            self._label_feed(labels, n)  # every label checked before the first batch is decoded
        if codes is not None and np.ndim(codes) == 1:
            codes = np.broadcast_to(codes, (n, len(codes)))
        if codes is not None:
            self._code_feed(codes, n)
        d, k, c = self.latent_dim, self.metadata.code_categories, self.metadata.code_continuous
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            noise = portable_normal(portable_stream(seed, "noise"), (count, d), start * d)
            z = (noise.astype(np.float64) * temperature).astype(np.float32)  # rounded as the page rounds it
            if self._prior is not None:  # the noise (and a uniform choosing a mixture component) mapped to p(z)
                u = portable_uniform(portable_stream(seed, "u"), count, start).astype(np.float32)
                (z,) = self._prior.run(None, {"noise": z, "u": u})
            batch_codes = None if codes is None else codes[start : start + count]
            if batch_codes is None and self.code_dim:
                category = None
                if k:
                    u = portable_uniform(portable_stream(seed, "category"), count, start)
                    category = np.minimum(k - 1, np.floor(u * k).astype(np.int64))
                continuous = 2 * portable_uniform(portable_stream(seed, "continuous"), count * c, start * c) - 1
                batch_codes = make_codes(category, continuous.astype(np.float32).reshape(count, c), k)
            labels_now = None if labels is None else np.asarray(labels)[start : start + count]
            yield self.decode(z, labels_now, batch_codes)

    def decode(self, z: np.ndarray, labels: np.ndarray | None = None, codes: np.ndarray | None = None) -> np.ndarray:
        """Images for latents ``z`` (float32 N×D): Bernoulli probabilities or Gaussian means, or g(z[, code])."""
        z = self._check_array("z", z, (self.latent_dim,))
        if not np.isfinite(_bounds(z)).all():
            raise ValueError("z holds NaN or infinite values; pass finite latents")
        feeds = {"z": z, **self._label_feed(labels, len(z)), **self._code_feed(codes, len(z))}
        (images,) = self._session.run(None, feeds)
        if images.shape != (len(z), *self.image_shape):
            raise ModelFileError(
                f"{self.path}: outputs images of shape {images.shape[1:]}, its metadata says {self.image_shape}; "
                "re-export the model"
            )
        return images

    def encode(self, x: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The approximate posterior q(z|x) = N(mu, diag exp(logvar)) (11.18) of images ``x`` (float32 N×C×H×W)."""
        if self._encoder is None and self.metadata.encoder != ENCODER_EXPORTED:
            raise ValueError(f"{self.path}: the encoder is {self.metadata.encoder}")
        if self._encoder is None:
            raise ValueError("encode needs the VAE encoder: pass encoder_path=export/vae_encoder.onnx")
        x = self._check_array("x", x, self.image_shape)
        low, high = _bounds(x)
        if not (low >= 0.0 and high <= 1.0):  # also refuses NaN
            raise ValueError(f"x must lie in [0, 1], got values from {low} to {high}; divide 8-bit images by 255")
        mu, logvar = self._encoder.run(None, {"image": x, **self._label_feed(labels, len(x))})
        if mu.shape != (len(x), self.latent_dim) or logvar.shape != mu.shape:
            raise ModelFileError(
                f"{self.path}: the encoder outputs shapes {mu.shape} and {logvar.shape}, its metadata says "
                f"({len(x)}, {self.latent_dim}); re-export the model"
            )
        return mu, logvar

    def reconstruct(self, x: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Decode the posterior mean of each image: x -> mu(x) -> decoder."""
        mu, _ = self.encode(x, labels)
        return self.decode(mu, labels)

    def interpolate(
        self, z0: np.ndarray, z1: np.ndarray, steps: int, labels: int | np.ndarray | None = None
    ) -> np.ndarray:
        """Images along the straight line from ``z0`` to ``z1`` (each float32 of size D), ``steps`` ≥ 2 points."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise ValueError(f"steps must be an integer ≥ 2, got {steps!r}")
        z0 = self._check_array("z0", np.asarray(z0)[None], (self.latent_dim,))
        z1 = self._check_array("z1", np.asarray(z1)[None], (self.latent_dim,))
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        if labels is not None and np.ndim(labels) == 0:
            labels = np.full(steps, labels)
        return self.decode((1 - t) * z0 + t * z1, labels)

    def _check_array(self, name: str, a: np.ndarray, item_shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a numpy array of float32, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise ValueError(f"{name} has dtype {a.dtype}; the model takes float32 (use {name}.astype(np.float32))")
        if a.ndim != 1 + len(item_shape) or tuple(a.shape[1:]) != tuple(item_shape) or len(a) == 0:
            expected = "N×" + "×".join(str(s) for s in item_shape)
            raise ValueError(f"{name} has shape {a.shape}; this model takes {expected} with N ≥ 1")
        return np.ascontiguousarray(a)

    def _code_feed(self, codes: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
        k, width = self.metadata.code_categories, self.code_dim
        if not width:
            if codes is not None:
                raise ValueError("this model has no InfoGAN codes; do not pass codes")
            return {}
        if codes is None:
            raise ValueError(f"this InfoGAN generator takes codes, N×{width}: build them with make_codes")
        codes = self._check_array("codes", np.asarray(codes), (width,))
        if len(codes) != n:
            raise ValueError(f"codes have {len(codes)} rows; expected one per item, {n}")
        one_hot, continuous = codes[:, :k], codes[:, k:]
        if k and not (np.isin(one_hot, (0.0, 1.0)).all() and (one_hot.sum(1) == 1).all()):
            raise ValueError(
                f"the first {k} values of each code must be a one-hot category; build codes with make_codes"
            )
        low, high = _bounds(continuous) if continuous.size else (0.0, 0.0)
        if not (low >= -1.0 and high <= 1.0):
            raise ValueError(f"continuous codes must lie in [-1, 1], got values from {low} to {high}")
        return {CODE_NAME: codes}

    def _label_feed(self, labels: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
        k = self.metadata.num_classes
        if not self.metadata.conditional:
            if labels is not None:
                raise ValueError("this model is unconditional; do not pass labels")
            return {}
        if labels is None:
            raise ValueError(f"this model is conditional on the class label: pass labels in [0, {k})")
        labels = np.asarray(labels)
        if labels.dtype == object and all(isinstance(v, int) for v in labels.flat):
            raise ValueError(f"labels must lie in [0, {k}), got values from {min(labels.flat)} to {max(labels.flat)}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels have dtype {labels.dtype}; pass integer class indices in [0, {k})")
        if labels.shape != (n,):
            raise ValueError(f"labels have shape {labels.shape}; expected one label per item, shape ({n},)")
        low, high = _bounds(labels)
        if low < 0 or high >= k:
            raise ValueError(f"labels must lie in [0, {k}), got values from {low} to {high}")
        return {LABEL_NAME: labels.astype(np.int64, copy=False)}


def make_codes(category: np.ndarray | None, continuous: np.ndarray, categories: int) -> np.ndarray:
    """InfoGAN codes, float32 N×(K + C): the one-hot ``category`` (N integers in [0, K); None when K = 0) followed by
    the ``continuous`` codes (N×C in [-1, 1])."""
    continuous = np.asarray(continuous, dtype=np.float32).reshape(len(continuous), -1)
    if not categories:
        if category is not None:
            raise ValueError("category: this generator has no categorical code; pass category=None")
        return continuous
    if category is None:
        raise ValueError(
            f"category: this generator has {categories} categories; pass one integer in [0, {categories}) per code"
        )
    category = np.asarray(category).reshape(-1)
    if not np.issubdtype(category.dtype, np.integer) or len(category) != len(continuous):
        raise ValueError(
            f"category: expected {len(continuous)} integers (one per continuous code), got {len(category)} of "
            f"dtype {category.dtype}"
        )
    if category.size and (category.min() < 0 or category.max() >= categories):
        raise ValueError(f"category: values must lie in [0, {categories}), got {category.min()}..{category.max()}")
    one_hot = np.eye(categories, dtype=np.float32)[category]
    return np.concatenate([one_hot, continuous], axis=1)
