"""ONNX export: parity with torch (plain, conditional, quantized), metadata, the card, all-or-nothing writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from pipeline.checkpoint import checkpoint_state, save_checkpoint
from pipeline.config import ExportParams, config_from_dict
from pipeline.export import (
    ExportError,
    InputSpec,
    class_names,
    export_generator,
    export_module,
    export_vae,
    manifest_schema,
    params_hash,
    validate_manifest,
    write_exported,
)
from pipeline.gan_trainer import build_generator
from pipeline.io import read_json
from pipeline.runtime import METADATA_KEYS, GenerativeModel, ModelMetadata
from pipeline.vae_trainer import build_vae
from stages import export as export_stage

IMAGE_SHAPE = (1, 8, 8)
DATA = {"image_shape": list(IMAGE_SHAPE), "num_classes": 10, "dataset": "digits", "binarize": "dynamic"}


def tiny_config(conditional: bool, quantize: list[str] | None = None, **export):
    return config_from_dict(
        {
            "latent_dim": 4,
            "vae": {"arch": "mlp", "hidden_sizes": [32], "conditional": conditional},
            "gan": {
                "arch": "dcgan",
                "base_channels": 8,
                "conditional": conditional,
                "init": "torch",
            },  # spread-out outputs: N(0, 0.02) gives ~0.5 everywhere
            "export": {"quantize": quantize or [], **export},
        }
    )


def run_onnx(path: Path, **feeds: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """An unconditional VAE and a conditional DCGAN generator, exported with fp16 and int8 variants."""
    torch.manual_seed(0)
    plain, conditional = tiny_config(False, ["fp16", "int8"]), tiny_config(True, ["fp16", "int8"])
    vae = build_vae(plain, IMAGE_SHAPE, 10).eval()
    generator = build_generator(conditional, IMAGE_SHAPE, 10).eval()
    out = tmp_path_factory.mktemp("export")
    models = export_vae(vae, DATA, plain.to_dict(), plain.export) + export_generator(
        generator, DATA, conditional.to_dict(), conditional.export
    )
    card = write_exported(models, out)
    return out, card, vae, generator, plain, conditional


def test_float32_models_match_torch_at_new_batch_sizes(exported) -> None:
    out, _, vae, generator, _, _ = exported
    rng = np.random.default_rng(123)
    for batch in (2, 33):
        z = rng.standard_normal((batch, 4), dtype=np.float32)
        x = rng.random((batch, *IMAGE_SHAPE), dtype=np.float32)
        labels = rng.integers(0, 10, batch)
        with torch.no_grad():
            want_image = vae.decode_mean(torch.from_numpy(z)).numpy()
            want_mu, want_logvar = (t.numpy() for t in vae.encode(torch.from_numpy(x)))
            want_gan = generator(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
        (image,) = run_onnx(out / "vae_decoder.onnx", z=z)
        mu, logvar = run_onnx(out / "vae_encoder.onnx", image=x)
        (gan,) = run_onnx(out / "gan_generator.onnx", z=z, label=labels)
        assert image.shape == (batch, *IMAGE_SHAPE) and gan.shape == (batch, *IMAGE_SHAPE)
        for got, want in ((image, want_image), (mu, want_mu), (logvar, want_logvar), (gan, want_gan)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        # the label changes a conditional generator's output: it is wired in, not ignored
        (other,) = run_onnx(out / "gan_generator.onnx", z=z, label=(labels + 1) % 10)
        assert np.abs(other - gan).max() > 1e-3


def test_quantized_variants_are_close_to_float32_and_smaller(exported) -> None:
    out, card, vae, _, _, _ = exported
    entries = {e["file"]: e for e in card["models"]}
    z = np.random.default_rng(5).standard_normal((16, 4), dtype=np.float32)
    (reference,) = run_onnx(out / "vae_decoder.onnx", z=z)
    for variant, bound in (("fp16", 1e-2), ("int8", 1e-2)):  # int8 weights would saturate without VNNI: 0.075
        entry = entries[f"vae_decoder.{variant}.onnx"]
        (got,) = run_onnx(out / entry["file"], z=z)
        assert got.dtype == np.float32  # float32 inputs and outputs, reduced weights inside
        assert 0 < np.abs(got - reference).max() < bound
        assert entry["parity"]["reference"] == "float32 onnx"
        assert 0 < entry["parity"]["max_abs_error"] < bound
        assert entry["bytes"] < entries["vae_decoder.onnx"]["bytes"]


def test_card_lists_every_file_with_hash_shapes_and_parity(exported) -> None:
    out, card, *_ = exported
    assert read_json(out / "models.json") == card
    files = sorted(p.name for p in out.glob("*.onnx"))
    assert sorted(e["file"] for e in card["models"]) == files and len(files) == 9
    for entry in card["models"]:
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        if entry["variant"] == "float32":
            assert entry["parity"]["reference"] == "torch"
            assert entry["parity"]["max_abs_error"] <= entry["parity"]["atol"] == 1e-5
    decoder = next(e for e in card["models"] if e["file"] == "vae_decoder.onnx")
    z = {"name": "z", "shape": ["batch", 4], "dtype": "float32", "role": "latent", "distribution": "standard_normal"}
    assert decoder["inputs"] == [z]
    image = {"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32", "role": "image", "layout": "NCHW"}
    assert decoder["outputs"] == [image | {"range": [0.0, 1.0]}]
    assert decoder["prior"] == {"kind": "standard_normal", "sampler": None, "how": "z ~ N(0, I)"}
    encoder = next(e for e in card["models"] if e["file"] == "vae_encoder.onnx")
    assert [o["name"] for o in encoder["outputs"]] == ["mu", "logvar"]
    generator = next(e for e in card["models"] if e["file"] == "gan_generator.onnx")
    assert generator["inputs"][1] == {
        "name": "label",
        "shape": ["batch"],
        "dtype": "int64",
        "role": "class",
        "range": [0, 9],
    }
    assert generator["metadata"]["class_names"] == [str(k) for k in range(10)]
    assert decoder["opset"] == 18


def test_class_names_come_from_the_checkpoint_then_the_registry() -> None:
    """An image folder's subfolder names, recorded with the training data, are what the metadata names."""
    assert class_names({"dataset": "image_folder", "num_classes": 2, "class_names": ["cat", "dog"]}) == ("cat", "dog")
    assert class_names({"dataset": "fashion_mnist", "num_classes": 10})[1] == "Trouser"  # an older checkpoint
    assert class_names({"dataset": "npz", "num_classes": 3}) == ("0", "1", "2")


def test_the_manifest_follows_its_schema_and_the_onnx_metadata_carries_the_same_typed_facts(exported) -> None:
    out, card, *_ = exported
    jsonschema.validate(card, manifest_schema())
    for entry in card["models"]:
        props = {p.key: p.value for p in onnx.load(out / entry["file"]).metadata_props}
        assert set(props) == {"model"} and json.loads(props["model"]) == entry["metadata"]
        assert entry["metadata"]["variant"] == entry["variant"] and entry["metadata"]["kind"] == entry["kind"]
    broken = json.loads(json.dumps(card))
    broken["models"][0]["inputs"][0]["dtype"] = "float64"
    with pytest.raises(ExportError, match="models.json does not follow its schema at models/0/inputs/0/dtype"):
        validate_manifest(broken)


def test_quantized_files_declare_only_the_domains_their_operators_use(exported) -> None:
    out, card, *_ = exported
    for entry in card["models"]:
        model = onnx.load(out / entry["file"])
        used = {node.domain or "ai.onnx" for node in model.graph.node} | {"ai.onnx"}
        assert set(entry["domains"]) == used == {opset.domain or "ai.onnx" for opset in model.opset_import}


def test_metadata_round_trip(exported) -> None:
    out, _, _, _, plain, conditional = exported
    props = {p.key: p.value for p in onnx.load(out / "gan_generator.int8.onnx").metadata_props}
    assert {*METADATA_KEYS, "weights_sha256"} == set(json.loads(props["model"]))
    meta = GenerativeModel(out / "gan_generator.int8.onnx").metadata
    assert meta == ModelMetadata.from_props(props)
    assert meta.kind == "gan_generator" and meta.variant == "int8" and meta.likelihood == "implicit"
    assert meta.conditional and meta.num_classes == 10 and meta.latent_dim == 4 and meta.image_shape == IMAGE_SHAPE
    assert meta.params_hash == params_hash(conditional.to_dict()) and meta.dataset == "digits"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()  # same cwd
    assert meta.git_revision == (head or "unknown")
    decoder = GenerativeModel(out / "vae_decoder.onnx").metadata
    assert decoder.likelihood == "bernoulli" and not decoder.conditional and decoder.num_classes is None
    assert decoder.params_hash == params_hash(plain.to_dict()) != meta.params_hash


class NoisyDecoder(torch.nn.Module):
    """A decoder that (wrongly) samples inside forward: torch and onnxruntime draw different noise."""

    latent_dim, image_shape, num_classes = 4, IMAGE_SHAPE, None

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(z.sum(1)[:, None, None, None] + torch.rand(z.shape[0], *IMAGE_SHAPE))


def test_parity_failure_is_an_error() -> None:
    meta = ModelMetadata(
        "gan_generator",
        "float32",
        4,
        IMAGE_SHAPE,
        "implicit",
        "standard_normal",
        "not exported",
        False,
        None,
        (),
        "digits",
        "h",
        "r",
    )
    with pytest.raises(ExportError, match="differs from torch by .* > export.parity_atol"):
        export_module(NoisyDecoder(), [InputSpec("z", (4,), "normal")], meta, opset=18, parity_atol=1e-5)


def write_checkpoints(root: Path, config, *, gan_weights_nan: bool = False) -> None:
    torch.manual_seed(1)
    vae = build_vae(config, IMAGE_SHAPE, 10)
    generator = build_generator(config, IMAGE_SHAPE, 10)
    ema = build_generator(config, IMAGE_SHAPE, 10)
    ema.load_state_dict(generator.state_dict())
    if gan_weights_nan:
        with torch.no_grad():
            for weight in ema.parameters():
                weight.fill_(float("nan"))
    params = config.to_dict()
    save_checkpoint(root / "vae" / "best.pt", checkpoint_state({"model": vae}, data=DATA, params=params))
    gan = {"generator": generator, "generator_ema": ema}
    save_checkpoint(root / "gan" / "best.pt", checkpoint_state(gan, data=DATA, params=params))


def run_stage(tmp_path: Path, config, checkpoints: Path, out: Path) -> Result:
    """The export stage's click command, in this process (the exporter is already warm)."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config.to_dict()))
    args = ["--params", str(params), "--checkpoints", str(checkpoints), "--out", str(out)]
    return CliRunner().invoke(export_stage.main, args)


def test_stage_exports_checkpoints_and_a_failure_writes_nothing(tmp_path: Path) -> None:
    config = tiny_config(True, ["fp16"])
    write_checkpoints(tmp_path / "good", config)
    write_checkpoints(tmp_path / "diverged", config, gan_weights_nan=True)
    out = tmp_path / "export"

    result = run_stage(tmp_path, config, tmp_path / "good", out)
    assert result.exit_code == 0, result.output
    names = {"vae_decoder", "vae_encoder", "gan_generator"}
    onnx_files = {f"{n}{v}.onnx" for n in names for v in ("", ".fp16")}
    assert {p.name for p in out.iterdir()} == onnx_files | {"models.json", "web"}
    assert onnx_files | {"models.json", "reference.json", "index.html"} <= {p.name for p in (out / "web").iterdir()}
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # the VAE passes, the generator (NaN weights) fails: nothing at all is written, the old export stays
    result = run_stage(tmp_path, config, tmp_path / "diverged", out)
    assert result.exit_code == 1
    assert "gan_generator: the reference outputs NaN" in result.output
    assert isinstance(result.exception, SystemExit)  # a clean click error, not a crash
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    result = run_stage(tmp_path, config, tmp_path / "none", tmp_path / "empty")
    assert result.exit_code == 1 and "train a model first" in result.output
    assert not (tmp_path / "empty").exists()


def test_an_export_replaces_the_previous_set_whole(tmp_path: Path, exported) -> None:
    """The files and the manifest are one set: a folder in the way of one file (where the old code wrote the other
    files and failed on it, leaving two exports mixed) does not matter, and files of the old set disappear."""
    _, _, vae, _, plain, _ = exported
    out = tmp_path / "export"
    (out / "vae_decoder.onnx").mkdir(parents=True)
    (out / "gan_generator.int8.onnx").write_bytes(b"an old model")
    models = export_vae(vae, DATA, plain.to_dict(), plain.export)
    with pytest.raises(ExportError, match="holds files but no models.json, so it is no earlier export"):
        write_exported(models, out)
    assert {p.name for p in out.iterdir()} == {"vae_decoder.onnx", "gan_generator.int8.onnx"}
    (out / "models.json").write_text("{}")  # an earlier export's manifest
    card = write_exported(models, out)
    files = {entry["file"] for entry in card["models"]}
    assert {p.name for p in out.iterdir()} == files | {"models.json"}
    for entry in card["models"]:
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "export"]  # no staging folder left


def test_export_params_are_checked_and_the_opset_is_honoured() -> None:
    with pytest.raises(ValueError, match="export.quantize"):
        tiny_config(False, ["int4"])
    with pytest.raises(ValueError, match=r"export.opset: 17 is out of range; allowed: \[18, 23\]"):
        tiny_config(False, opset=17)
    assert ExportParams().quantize == [] and ExportParams().parity_atol == 1e-5
    config = tiny_config(False, opset=21)
    (model,) = export_generator(build_generator(config, IMAGE_SHAPE, None), DATA, config.to_dict(), config.export)
    assert model.card["opset"] == 21
    assert [o.version for o in onnx.load_from_string(model.data).opset_import if o.domain == ""] == [21]
