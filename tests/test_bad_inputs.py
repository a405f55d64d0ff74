"""Every user mistake gets one clear line, never a traceback, and leaves every output as it was.

Each case copies a workspace where the whole pipeline ran once on tiny params, applies one mistake (a params
value, a damaged file, a blocked output folder, a bad option), runs the real command, and checks: a non-zero exit,
a message naming the parameter, file or option, no traceback, and every file byte-identical to before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Workspace, merge
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One mistake: ``params`` merged into params.yaml (or ``params_text`` replacing it), ``setup`` run on the copy
    (after ``before``, commands that must succeed first), then ``command`` (after `python -m stages`, or a Python
    snippet with ``python``) must fail with ``message`` in its output."""

    kind: str
    command: list[str]
    message: str
    params: dict = field(default_factory=dict)
    params_text: str | None = None
    setup: Callable[[Path], None] | None = None
    before: tuple[tuple[str, ...], ...] = ()
    python: str | None = None


def truncate(relative: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        data = (root / relative).read_bytes()
        (root / relative).write_bytes(data[: len(data) // 2])

    return apply


def overwrite(relative: str, content: bytes) -> Callable[[Path], None]:
    return lambda root: (root / relative).write_bytes(content)


def file_in_place_of(relative: str, folder: bool = False) -> Callable[[Path], None]:
    """An output folder that cannot be written: a plain file stands where it must go (works as root too); or, with
    ``folder``, a folder where a file must go."""

    def apply(root: Path) -> None:
        target = root / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        target.mkdir() if folder else target.write_text("not a folder")

    return apply


def old_format_checkpoint(root: Path) -> None:
    import torch

    state = torch.load(root / "checkpoints/vae/best.pt", weights_only=True)
    old = {"config": state["params"], "data": state["data"], "model": state["models"]["model"]["weights"]}
    torch.save(old, root / "checkpoints/vae/best.pt")


def npz_with(x: np.ndarray) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        np.savez(root / "user.npz", x_train=x, x_test=x[:5])

    return apply


def image_folder_with_two_broken_images(root: Path) -> None:
    folder = root / "my_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"good{i}.png")
    (folder / "broken1.png").write_bytes(b"\x89PNG not really")
    (folder / "broken2.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")


def swap_in_the_generator(root: Path) -> None:
    shutil.copy(root / "export/gan_generator.onnx", root / "export/vae_decoder.onnx")


def npz_with_labels(y: np.ndarray) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        x = np.zeros((len(y), 8, 8), np.uint8)
        np.savez(root / "user.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])

    return apply


NPZ = {"data": {"dataset": "npz", "path": "user.npz", "binarize": "none"}}
RUNTIME = "from pipeline.runtime import GenerativeModel as M; import numpy as np; "
CASES = {
    # params: values, combinations, and what the machine or the data cannot do
    "empty params": Case("params", ["train_vae"], "the parameters file is empty", params_text=""),
    "partial params": Case("params", ["train_vae"], "missing keys: vae.lr", setup=lambda root: _drop_key(root, "vae")),
    "nan learning rate": Case("params", ["train_vae"], "vae.lr: nan is not allowed", {"vae": {"lr": float("nan")}}),
    "nan ema decay": Case("params", ["train_gan"], "gan.ema_decay: nan", {"gan": {"ema_decay": float("nan")}}),
    "inf validation fraction": Case(
        "params", ["preprocess"], "data.validation_fraction: inf", {"data": {"validation_fraction": float("inf")}}
    ),
    "cuda absent": Case("params", ["train_vae"], "device: 'cuda' was asked for", {"device": "cuda"}),
    "mps absent": Case("params", ["evaluate_vae"], "device: 'mps' was asked for", {"device": "mps"}),
    "no hidden layers": Case("params", ["train_vae"], "vae.hidden_sizes: []", {"vae": {"hidden_sizes": []}}),
    "conv too deep": Case(
        "params", ["train_vae"], "vae.conv_channels has 4", {"vae": {"arch": "conv", "conv_channels": [4, 4, 4, 4]}}
    ),
    "gan batch of one": Case("params", ["train_gan"], "gan.batch_size: 1 is out of range", {"gan": {"batch_size": 1}}),
    "gaussian on binary": Case(
        "params", ["train_vae"], "vae.likelihood: 'gaussian'", {"vae": {"likelihood": "gaussian"}}
    ),
    "free bits with iwae": Case(
        "params", ["train_vae"], "vae.free_bits applies to the ELBO", {"vae": {"free_bits": 0.1, "iwae_k": 4}}
    ),
    "hinge with smoothing": Case(
        "params", ["train_gan"], "gan.label_smoothing", {"gan": {"loss": "hinge", "label_smoothing": 0.1}}
    ),
    "dataset typo": Case("params", ["download"], "did you mean 'mnist'", {"data": {"dataset": "mnsit"}}),
    "a quantized variant twice": Case(
        "params", ["export"], "export.quantize: ['fp16', 'fp16'] names a variant twice",
        {"export": {"quantize": ["fp16", "fp16"]}},
    ),
    "unknown key": Case("params", ["train_vae"], "vae.epocs: unknown key", {"vae": {"epocs": 3}}),
    "params not UTF-8": Case(
        "params", ["train_vae"], "params.yaml: not UTF-8", setup=overwrite("params.yaml", b"\xff\xfe")
    ),
    "params YAML syntax": Case(
        "params", ["train_vae"], "params.yaml: not valid YAML at line 2", params_text="seed: [1,\n"
    ),
    "resume with other params": Case(
        "params", ["train_vae"], "vae.resume: last.pt was trained with different parameters (vae.lr)",
        {"vae": {"resume": True, "lr": 0.002}},
    ),
    # files: damaged, foreign or from an older version
    "truncated last.pt on resume": Case(
        "file", ["train_vae"], "last.pt: not a readable checkpoint", {"vae": {"resume": True}},
        setup=truncate("checkpoints/vae/last.pt"),
    ),
    "garbage best.pt": Case(
        "file", ["evaluate_vae"], "best.pt: not a readable checkpoint", setup=overwrite("checkpoints/vae/best.pt", b"x")
    ),
    "garbage gan checkpoint to export": Case(
        "file", ["export"], "gan/best.pt: not a readable checkpoint", setup=truncate("checkpoints/gan/best.pt")
    ),
    "old checkpoint format": Case(
        "file", ["evaluate_vae"], "written by an older version", setup=old_format_checkpoint
    ),
    "truncated arrays.npz": Case(
        "file", ["train_vae"], "arrays.npz: unreadable processed data", setup=truncate("data/processed/arrays.npz")
    ),
    "malformed stats.json": Case(
        "file", ["train_gan"], "stats.json: not valid JSON", setup=overwrite("data/processed/stats.json", b"{")
    ),
    "stats.json without a key": Case(
        "file", ["train_vae"], "stats.json: lacks binarize",
        setup=overwrite("data/processed/stats.json", b'{"levels": 255, "num_classes": null, "dataset": "digits"}'),
    ),
    "manifest.json not an object": Case(
        "file", ["preprocess"], "manifest.json: not the JSON object expected",
        setup=overwrite("data/raw/manifest.json", b"[1]"),
    ),
    "vae checkpoint as the classifier": Case(
        "file", ["evaluate_samples", "--classifier", "checkpoints/vae/best.pt"],
        "holds a vae network where a classifier is expected",
    ),
    "classifier checkpoint to export as the vae": Case(
        "file", ["export", "--checkpoints", "c"], "c/vae/best.pt: holds a classifier network where a vae is expected",
        setup=lambda root: shutil.copytree(root / "checkpoints", root / "c")
        and shutil.copy(root / "checkpoints/classifier/best.pt", root / "c/vae/best.pt"),
    ),
    "incomplete vae metrics": Case(
        "file", ["evaluate_samples", "--vae-metrics", "m.json"], "m.json: lacks ais, log_px",
        setup=overwrite("m.json", b"{}"),
    ),
    "stats.json of the wrong types": Case(
        "file", ["train_vae"], "stats.json: levels 'x' or num_classes None is not what preprocess writes",
        setup=overwrite("data/processed/stats.json", b'{"levels": "x", "binarize": "none", "num_classes": null, '
                        b'"dataset": "digits"}'),
    ),
    "models.json entry without its file": Case(
        "file", ["sample", "--all"], "models.json: not an export manifest",
        setup=overwrite("export/models.json", b'{"models": [{"kind": "vae_decoder"}]}'),
    ),
    "exported model deleted": Case(
        "file", ["sample", "--all"], "gan_generator.onnx: listed in export/models.json but missing",
        setup=lambda root: (root / "export/gan_generator.onnx").unlink(),
    ),
    "malformed models.json": Case(
        "file", ["sample", "--all"], "models.json: not valid JSON", setup=overwrite("export/models.json", b"[")
    ),
    "model from another export": Case(
        "file", ["sample", "--model", "export/vae_decoder.onnx"], "differs from export/models.json",
        setup=swap_in_the_generator,
    ),
    "not an onnx file": Case(
        "file", ["sample", "--model", "params.yaml"], "not a loadable ONNX model",
    ),
    # outputs that cannot be written: refused before the work starts
    "metrics not writable": Case(
        "output", ["evaluate_vae"], "metrics: cannot write", setup=file_in_place_of("metrics")
    ),
    "cards not writable": Case("output", ["train_classifier"], "cannot write", setup=file_in_place_of("cards")),
    "checkpoints not writable": Case(
        "output", ["train_vae"], "checkpoints/vae: cannot write", setup=file_in_place_of("checkpoints/vae")
    ),
    "export over a folder that is no export": Case(
        "output", ["export", "--out", "checkpoints"], "checkpoints: holds files but no models.json"
    ),
    "export over the working directory": Case("output", ["export", "--out", "."], ".: holds the working directory"),
    "a folder as the lock file": Case(
        "output", ["train_vae"], "checkpoints/.vae.lock: a folder stands where the lock file",
        setup=file_in_place_of("checkpoints/.vae.lock", folder=True),
    ),
    "export parent not writable": Case(
        "output", ["export", "--out", "blocked/export"], "blocked: cannot write", setup=file_in_place_of("blocked")
    ),
    "sample --out not writable": Case(
        "output", ["sample", "--model", "export/gan_generator.onnx", "--out", "blocked/s.png"], "blocked",
        setup=file_in_place_of("blocked"),
    ),
    # the sample command's options
    "negative seed": Case("option", ["sample", "--model", "export/gan_generator.onnx", "--seed", "-1"], "--seed"),
    "huge label": Case(
        "option", ["sample", "--model", "export/gan_generator.onnx", "--labels", "99999999999999999999"], "--labels"
    ),
    "zero samples": Case("option", ["sample", "--model", "export/gan_generator.onnx", "-n", "0"], "'-n'"),
    "grid too large": Case(
        "option", ["sample", "--model", "export/gan_generator.onnx", "-n", "5000"], "write .npy for more"
    ),
    "bad extension": Case("option", ["sample", "--model", "export/gan_generator.onnx", "--out", "s.jpg"], "--out"),
    "zero temperature": Case(
        "option", ["sample", "--model", "export/gan_generator.onnx", "--temperature", "0"], "--temperature"
    ),
    "encoder as model": Case("option", ["sample", "--model", "export/vae_encoder.onnx"], "this is a VAE encoder"),
    "missing model": Case("option", ["sample", "--model", "export/nope.onnx"], "nope.onnx: no such model file"),
    # the user's data
    "1x1 images": Case(
        "data", ["preprocess"], "too small for the train_classifier stage", NPZ,
        setup=npz_with(np.zeros((20, 1, 1), np.uint8)), before=(("download",),),
    ),
    "floats above one": Case(
        "data", ["preprocess"], "divide by 255 first (your data at data.path user.npz: fix it, then run "
        "`dvc repro -f download` and `dvc repro`)", NPZ, setup=npz_with(np.full((20, 8, 8), 200.0, np.float32)),
        before=(("download",),),
    ),
    "labels beyond the images": Case(
        "data", ["preprocess"], "more classes than the 25 images", NPZ,
        setup=npz_with_labels(np.full(20, 2**40, np.int64)), before=(("download",),),
    ),
    "gan on one training image": Case(
        "data", ["train_gan"], "1 training image(s) make no batch of at least 2", NPZ,
        setup=npz_with(np.zeros((2, 8, 8), np.uint8)), before=(("download",), ("preprocess",)),
    ),
    "npz path missing": Case(
        "data", ["download"], "data.path no-such.npz", {"data": {"dataset": "npz", "path": "no-such.npz"}}
    ),
    "two broken images": Case(
        "data", ["download"], "2 of the 8 images", {"data": {"dataset": "image_folder", "path": "my_images"}},
        setup=image_folder_with_two_broken_images,
    ),
    # the runtime API
    "runtime path None": Case("runtime", [], "path must be the path of an .onnx file", python=RUNTIME + "M(None)"),
    "runtime seed of the wrong type": Case(
        "runtime", [], "seed must be a non-negative integer",
        python=RUNTIME + "M('export/gan_generator.onnx').sample(2, seed='0')",
    ),
    "runtime temperature of the wrong type": Case(
        "runtime", [], "temperature must be a positive number",
        python=RUNTIME + "M('export/gan_generator.onnx').sample(2, temperature='hot')",
    ),
    "runtime category out of range": Case(
        "runtime", [], "category: values must lie in [0, 10)",
        python="from pipeline.runtime import make_codes; import numpy as np; "
        "make_codes(np.array([11]), np.zeros((1, 2)), 10)",
    ),
    "runtime NaN latent": Case(
        "runtime", [], "z holds NaN or infinite values",
        python=RUNTIME + "M('export/gan_generator.onnx').decode(np.full((1, 2), np.nan, np.float32))",
    ),
}  # fmt: skip


def _drop_key(root: Path, section: str, key: str = "lr") -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    del params[section][key]
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` but the trainers' lock files (which hold the last holder's pid)."""
    files = (p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _run(root: Path, args: list[str], python: str | None = None) -> subprocess.CompletedProcess:
    """`python -m stages ARGS`, or a snippet whose ValueError (the runtime API's error for bad input) is printed as
    an application would show it: its message alone."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if python:
        handler = "except ValueError as err:\n    raise SystemExit(f'{type(err).__name__}: {err}')"
        snippet = f"try:\n    {python}\n{handler}"
        command = [sys.executable, "-c", snippet]
    else:
        command = [sys.executable, "-m", "stages", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_gets_one_clear_line_and_changes_nothing(
    name: str, pipeline_workspace: Workspace, tmp_path: Path
) -> None:
    case = CASES[name]
    root = tmp_path / "work"
    shutil.copytree(pipeline_workspace.path, root, symlinks=True)
    params_file = root / "params.yaml"
    if case.params_text is not None:
        params_file.write_text(case.params_text)
    elif case.params:
        params_file.write_text(yaml.safe_dump(merge(yaml.safe_load(params_file.read_text()), case.params)))
    if case.setup is not None:
        case.setup(root)
    for args in case.before:
        done = _run(root, list(args))
        assert done.returncode == 0, done.stderr
    before = _snapshot(root)
    result = _run(root, case.command, case.python)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert case.message in output, output
    assert "Traceback" not in output, output
    assert _snapshot(root) == before, "files changed"


def test_the_suite_covers_every_kind() -> None:
    kinds = {}
    for case in CASES.values():
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
    assert set(kinds) == {"params", "file", "output", "option", "data", "runtime"}, kinds


def _copy(workspace: Workspace, tmp_path: Path, params: dict | None = None) -> Path:
    root = tmp_path / "work"
    shutil.copytree(workspace.path, root, symlinks=True)
    if params:
        merged = merge(yaml.safe_load((root / "params.yaml").read_text()), params)
        (root / "params.yaml").write_text(yaml.safe_dump(merged))
    return root


def test_any_valid_gan_batch_size_trains(pipeline_workspace: Workspace, tmp_path: Path) -> None:
    """1294 training digits in batches of 3 leave a last batch of one image, which batch norm cannot train on:
    it is left out of the epoch, not a crash after the epoch's work."""
    root = _copy(pipeline_workspace, tmp_path, {"gan": {"batch_size": 3}})
    result = _run(root, ["train_gan"])
    assert result.returncode == 0, result.stderr


def test_integer_images_of_zeros_and_ones_are_read_as_binary(pipeline_workspace: Workspace, tmp_path: Path) -> None:
    root = _copy(pipeline_workspace, tmp_path, NPZ)
    x = (np.random.default_rng(0).random((60, 8, 8)) < 0.3).astype(np.uint8)
    np.savez(root / "user.npz", x_train=x, x_test=x[:10])
    assert _run(root, ["download"]).returncode == 0
    result = _run(root, ["preprocess"])
    assert result.returncode == 0, result.stderr
    assert "images are already binary (0/1 values); recording binarize=static" in result.stderr
    stored = np.load(root / "data/processed/arrays.npz")["x_train"]
    assert set(np.unique(stored)) == {0, 1}
    # binary whatever the config string says: no warning that a Bernoulli decoder models grey values
    trained = _run(root, ["train_vae"])
    assert trained.returncode == 0, trained.stderr
    assert "bernoulli on grey data" not in trained.stderr


def test_an_upper_case_extension_is_accepted(pipeline_workspace: Workspace, tmp_path: Path) -> None:
    root = _copy(pipeline_workspace, tmp_path)
    result = _run(root, ["sample", "--model", "export/gan_generator.onnx", "-n", "4", "--out", "S.PNG"])
    assert result.returncode == 0, result.stderr
    assert (root / "S.PNG").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_samples_given_train_vaes_metrics_names_evaluate_vaes(
    digits_processed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file that lacks the likelihoods is the wrong one, not one to re-run: say which file to pass."""
    from click.testing import CliRunner

    from stages.evaluate_samples import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", "params.yaml")
    Path("train_vae.json").write_text('{"train": -30.0, "valid": -31.0}')
    result = CliRunner().invoke(main, ["--data-dir", str(digits_processed_dir), "--vae-metrics", "train_vae.json"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: train_vae.json: lacks ais, log_px, so it is not evaluate_vae's metrics; pass --vae-metrics "
        "metrics/evaluate_vae.json, which python -m stages evaluate_vae writes\n"
    )
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/evaluate_vae.json").write_text("{}")  # the right file, but stale
    result = CliRunner().invoke(main, ["--data-dir", str(digits_processed_dir)])
    assert result.exit_code == 1 and result.output.endswith(
        "not evaluate_vae's metrics; re-run python -m stages evaluate_vae\n"
    )
