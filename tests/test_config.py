"""The params schema: defaults round-trip, every kind of bad value is rejected with a message naming it."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import Config, ConfigError, check_compatible, config_from_dict, load_config, schema_help
from pipeline.data.processed import ProcessedData

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_are_valid_and_cover_every_section() -> None:
    config = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Config().to_dict())
    assert config.to_dict()["data"].keys() == raw["data"].keys()


def test_defaults_round_trip() -> None:
    assert config_from_dict(Config().to_dict()) == Config()


def test_schema_defaults_are_the_shipped_params() -> None:
    """One set of defaults: anything built from Config() (tests, benchmarks) trains what `dvc repro` trains."""
    assert load_config(REPO / "params.yaml") == Config()


def test_an_empty_or_partial_params_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the parameters file is empty"):
        load_config(empty)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["vae"]["lr"], raw["gan"]
    empty.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params.yaml: missing keys: .*(vae.lr.*gan|gan.*vae.lr)"):
        load_config(empty)


def _float_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _float_keys(hints[f.name], f"{f.name}.")
        elif hints[f.name] is float:
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", _float_keys())
def test_nan_and_infinity_are_refused_for_every_float(key: str, value: float) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}: {value!r} is not allowed; give a finite number"):
        config_from_dict({section: {name: value}})


def test_select_gives_what_a_stage_depends_on() -> None:
    selected = Config().select(("seed", "vae", "evaluate.num_samples"))
    assert selected == {"seed": 0, "vae": Config().vae.__dict__ | {}, "evaluate": {"num_samples": 1000}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"latent_dim": 0}, r"latent_dim: 0 is out of range; allowed: \[1, 4096\]"),
        ({"data": {"dataset": "mnsit"}}, r"data.dataset: 'mnsit' is not allowed \(did you mean 'mnist'\?\)"),
        ({"latnt_dim": 2}, r"latnt_dim: unknown key \(did you mean 'latent_dim'\?\)"),
        ({"vae": {"epocs": 2}}, r"vae.epocs: unknown key \(did you mean 'epochs'\?\)"),
        ({"vae": {"lr": "fast"}}, r"vae.lr: 'fast' is not a number"),
        ({"vae": {"lr": 0}}, r"vae.lr: 0.0 is out of range; allowed: \(0.0, 1.0\]"),
        ({"vae": {"epochs": 2.5}}, r"vae.epochs: 2.5 is not an integer"),
        ({"vae": {"epochs": True}}, r"vae.epochs: True is not an integer"),
        ({"vae": {"patience": "None"}}, r"vae.patience: 'None' is a string; write null, unquoted, for none"),
        ({"vae": {"conditional": "yes"}}, r"vae.conditional: 'yes' is not true or false"),
        ({"vae": {"hidden_sizes": [64, 0]}}, r"vae.hidden_sizes\[1\]: 0 is out of range"),
        ({"vae": {"hidden_sizes": 64}}, r"vae.hidden_sizes: 64 is not a list"),
        ({"data": {"channels": 2}}, r"data.channels: 2 is not allowed; allowed: one of 1, 3"),
        ({"data": "digits"}, r"data: expected a mapping"),
        ({"data": {"dataset": "npz"}}, r"data.path: null is not allowed with data.dataset 'npz'"),
        ({"export": {"quantize": ["int4"]}}, r"export.quantize\[0\]: 'int4' is not allowed"),
        ({"vae": {"prior": "vamp"}}, r"vae.prior: 'vamp' is not allowed \(did you mean 'vampprior'\?\)"),
        ({"vae": {"family": "hvae", "flow_steps": 2}}, r"vae.flow_steps: flows refine the one-layer vae"),
        ({"vae": {"prior": "vampprior", "conditional": True}}, r"vae.conditional: true is for the one-layer vae"),
        ({"vae": {"family": "hvae", "free_bits": 0.5}}, r"vae.free_bits needs the closed-form KL"),
        ({"vae": {"iwae_gradient": "dreg"}}, r"vae.iwae_gradient: dreg is for the IWAE bound; set vae.iwae_k"),
        (
            {"vae": {"iwae_gradient": "dreg", "iwae_k": 5, "flow_steps": 2}},
            r"vae.iwae_gradient: dreg scores z at q's fixed parameters, which an IAF cannot",
        ),
        (
            {"vae": {"family": "hvae", "iwae_gradient": "dreg", "iwae_k": 5, "dropout": 0.1}},
            r"vae.iwae_gradient: dreg scores z1 by q\(z1\|x, z2\) run again, where dropout",
        ),
        ({"vae": {"iwae_gradient": "DReG"}}, r"vae.iwae_gradient: 'DReG' is not allowed"),
        ({"vae": {"arch": "resnet", "conv_channels": []}}, r"vae.conv_channels: \[\] is not allowed with arch resnet"),
        (
            {"vae": {"family": "hvae", "arch": "conv", "hidden_sizes": []}},
            r"vae.hidden_sizes: \[\] is not allowed with family hvae \(its z1 layers",
        ),
        ({"vae": {"max_minutes": 0}}, r"vae.max_minutes: 0.0 is out of range"),
        ({"vae": {"arch": "conv", "dropout": 0.2}}, r"vae.dropout applies to the mlp architectures; set vae.dropout"),
        ({"vae": {"decoder_input": "per_layer"}}, r"vae.decoder_input: per_layer is for family hvae with an mlp"),
        ({"vae": {"dropout": 1.0}}, r"vae.dropout: 1.0 is out of range"),
        ({"vae": {"ema_decay": -0.1}}, r"vae.ema_decay: -0.1 is out of range"),
        ({"gan": {"beta2": 1.0}}, r"gan.beta2: 1.0 is out of range; allowed: \[0.0, 1.0\)"),
        ({"gan": {"info_categories": 1}}, r"gan.info_categories: 1 category carries no information"),
        ({"vae": {"weight_decay": -1e-3}}, r"vae.weight_decay: -0.001 is out of range"),
        ({"evaluate": {"splits": ["train"]}}, r"evaluate.splits\[0\]: 'train' is not allowed"),
    ],
)
def test_bad_values_are_named(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(raw)


def test_int_accepted_where_float_expected() -> None:
    assert config_from_dict({"vae": {"lr": 1}}).vae.lr == 1.0


def test_a_yaml_1_2_number_is_a_number(tmp_path: Path) -> None:
    """PyYAML reads 1e-3 (no decimal point) as text; a float parameter takes it as the number YAML 1.2 reads."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3", 1))
    assert "lr: 1e-3" in path.read_text()
    assert load_config(path).vae.lr == 0.001
    with pytest.raises(ConfigError, match="vae.lr: '1e-3x' is not a number"):
        config_from_dict({"vae": {"lr": "1e-3x"}})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such parameters file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("latent_dim: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_schema_help_lists_every_leaf_key() -> None:
    keys = {line.split(" = ")[0] for line in schema_help()}
    assert {"seed", "latent_dim", "data.dataset", "vae.iwae_k", "export.opset"} <= keys


def test_the_params_command_lists_the_schema(tmp_path: Path) -> None:
    """`python -m stages params [PREFIX]`: every key with its default and meaning; an unknown prefix is one line."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    run = functools.partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True)
    everything = run([sys.executable, "-m", "stages", "params"])
    assert everything.returncode == 0 and everything.stdout.splitlines() == schema_help()
    vae = run([sys.executable, "-m", "stages", "params", "vae."]).stdout.splitlines()
    assert vae and all(line.startswith("vae.") for line in vae)
    assert "vae.hidden_sizes = [512, 256]: hidden layer widths of the mlp architectures" in "\n".join(vae)
    unknown = run([sys.executable, "-m", "stages", "params", "vea"])
    assert unknown.returncode == 2 and "no parameter starts with 'vea'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and not list(tmp_path.iterdir())


def test_stage_rejects_bad_params_with_exit_code_and_writes_nothing(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text()) | {"latent_dim": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "stages", "download"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: invalid parameters: params.yaml: latent_dim: 0 is out of range; allowed: [1, 4096]"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("dataset", "stored", "param", "fix"),
    [
        ("digits", "dynamic", "dynamic", "; set data.binarize: none on grey data, or vae.likelihood: bernoulli"),
        (
            "digits",
            "static",
            "none",
            "'static'); params.yaml says none now: rerun preprocess (`dvc repro preprocess`), or if the images "
            "themselves are 0/1, set vae.likelihood: bernoulli",
        ),
        ("binarized_mnist", "static", "none", "; the images themselves are 0/1; set vae.likelihood: bernoulli"),
        ("npz", "none", "none", "; the images themselves are 0/1; set vae.likelihood: bernoulli"),
    ],
)
def test_a_gaussian_decoder_on_binary_data_is_told_the_fix_that_applies(
    dataset: str, stored: str, param: str, fix: str
) -> None:
    """Stale processed data (params.yaml says binarize none since) need preprocess rerun, not that param set again."""
    x = {split: np.zeros((2, 1, 4, 4), np.float32) for split in ("train", "valid", "test")}
    default = Config()
    config = dataclasses.replace(
        default,
        data=dataclasses.replace(default.data, binarize=param),
        vae=dataclasses.replace(default.vae, likelihood="gaussian"),
    )
    with pytest.raises(ConfigError, match=f"data.binarize: {stored!r}") as caught:
        check_compatible(config, "vae", ProcessedData(x, None, stored, None, dataset))
    assert str(caught.value).endswith(fix)
