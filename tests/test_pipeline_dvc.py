"""The whole pipeline under the real `dvc` and `git`, in a temporary copy of the repository."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_PARAMS, copy_repository, dvc_env, node, serve

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _exp_show(project: Path) -> list[dict]:
    """`dvc exp show --json`: one row per commit, its experiments under "experiments"."""
    result = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=project, env=dvc_env(), capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + dvc copy of the repository's tracked and new files, with tiny params, reproduced once."""
    root = copy_repository(tmp_path_factory.mktemp("project"), TINY_PARAMS)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "copy"], root)
    run(["dvc", "repro"], root)
    return root


def test_repro_builds_every_declared_output(project: Path) -> None:
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            assert (project / path).exists(), f"stage {name} did not produce {path}"
    assert (project / "data/processed/stats.json").exists()
    web = project / "export" / "web"  # the explorer, ready to serve, with the test images it ships
    assert {"index.html", "models.json", "reference.json", "ort.wasm.min.mjs"} <= {p.name for p in web.iterdir()}
    assert json.loads((web / "reference.json").read_text())["images"]["shape"][0] == 8


def test_plots_show_draws_every_chart_with_no_internet(project: Path, tmp_path: Path) -> None:
    """The repo's DVC config sets the HTML template with vega, vega-lite and vega-embed inlined."""
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    with serve(tmp_path / "plots") as url:
        result = node("browser_check.mjs", url + "index.html", str(tmp_path / "plots.png"), "plots")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["consoleErrors"] == [] and report["outsideRequests"] == [], report
    assert report["embeds"] >= 4 and report["drawn"] == report["inked"] == report["embeds"], report


def test_second_repro_does_nothing(project: Path) -> None:
    out = run(["dvc", "repro"], project)
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_a_forced_rerun_with_the_same_seed_gives_identical_metrics(project: Path) -> None:
    metrics = sorted((project / "metrics").glob("*.json")) + [project / "plots/vae_likelihood_curve.json"]
    before = {path.name: path.read_bytes() for path in metrics}
    run(["dvc", "repro", "--force"], project)
    assert {path.name: path.read_bytes() for path in metrics} == before


def test_changing_gan_params_does_not_retrain_the_vae(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["gan"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], project)
    assert "Running stage 'train_gan'" in out
    for untouched in ("download", "preprocess", "train_vae", "evaluate_vae", "train_classifier"):
        assert f"Running stage '{untouched}'" not in out


def _outputs(project: Path) -> dict[str, bytes]:
    folders = ("data/processed", "checkpoints", "metrics", "cards", "plots", "dvclive", "outputs", "export")
    return {
        str(path.relative_to(project)): path.read_bytes()
        for folder in folders
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(("section", "key", "value"), [("vae", "lr", -1), ("data", "validation_fraction", 0.9)])
def test_a_bad_value_stops_repro_before_any_output_is_removed(project: Path, section: str, key: str, value) -> None:
    """check_params runs first: dvc removes a stage's outputs before its command runs, so a value caught inside the
    stage would cost the last good run's results. Once the value is fixed, only the check reruns."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    run(["dvc", "repro"], project)
    before = _outputs(project)
    params = yaml.safe_load(original)
    params[section][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = subprocess.run(["dvc", "repro"], cwd=project, env=dvc_env(), capture_output=True, text=True)
    finally:
        params_file.write_text(original)
    assert result.returncode != 0
    assert f"Error: invalid parameters: params.yaml: {section}.{key}: {value}" in result.stdout + result.stderr
    assert _outputs(project) == before
    assert "Running stage 'check_params'" in result.stdout
    out = run(["dvc", "repro"], project)  # the check's unchanging output is run-cached or rewritten: nothing else
    assert set(re.findall(r"Running stage '(\w+)'", out)) <= {"check_params"}, out


def test_exp_run_with_a_new_latent_dim_reaches_the_exported_models(project: Path) -> None:
    from pipeline.runtime import GenerativeModel

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline results"], project)
    out = run(["dvc", "exp", "run", "-S", "latent_dim=3"], project)
    for stage in ("train_vae", "train_gan", "export", "sample"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'train_classifier'" not in out
    for name in ("vae_decoder", "gan_generator"):
        assert GenerativeModel(project / "export" / f"{name}.onnx").latent_dim == 3
    rows = [row["data"] for row in _exp_show(project) if row.get("data")]
    latent_dims = [row["params"]["params.yaml"]["data"]["latent_dim"] for row in rows]
    assert 3 in latent_dims and 2 in latent_dims, latent_dims
    for row in rows:
        assert "metrics/evaluate_vae.json" in row["metrics"]


def test_editing_a_library_file_makes_its_stages_stale(project: Path) -> None:
    """dvc.yaml declares every project file a stage imports: an edit to one is seen by exactly those stages."""
    seeds = project / "pipeline" / "seeds.py"
    original = seeds.read_text()
    try:
        seeds.write_text(original + "\n# an edit\n")
        status = run(["dvc", "status"], project)
    finally:
        seeds.write_text(original)
    stale = {line.rstrip(":").strip() for line in status.splitlines() if line and not line.startswith("\t")}
    assert {"train_vae", "evaluate_vae", "train_classifier", "train_gan", "evaluate_samples", "export"} <= stale, status
    assert not {"download", "preprocess", "sample"} & stale, status


def _leaf_count(tree: object) -> set[str]:
    if isinstance(tree, dict):
        return {f"{key}.{leaf}" if leaf else key for key, sub in tree.items() for leaf in _leaf_count(sub)}
    return {""}


def test_metrics_hold_only_numbers_in_a_table_of_at_most_30_columns(project: Path) -> None:
    """`dvc metrics show` is where experiments are compared: numbers only, short names shared across files."""
    result = subprocess.run(
        ["dvc", "metrics", "show", "--json"], cwd=project, env=dvc_env(), capture_output=True, text=True, check=True
    )
    files = json.loads(result.stdout)[""]["data"]
    columns = set()
    for path, entry in files.items():
        leaves = _leaf_count(entry["data"])
        columns |= leaves
        numbers = json.loads((project / path).read_text())
        assert all(isinstance(v, (int, float)) for v in _numbers(numbers)), path
    assert len(columns) + 1 <= 30, sorted(columns)  # + the Path column


def _numbers(tree: object) -> list:
    if isinstance(tree, dict):
        return [v for sub in tree.values() for v in _numbers(sub)]
    return [tree]


def test_queued_sweep_runs_in_the_queue_workers(project: Path) -> None:
    """The README's sweep: `dvc exp run --queue` with comma-separated values queues one experiment per value, and
    `dvc queue start -j 2` runs them in background workers, each with its own metrics in `dvc exp show`."""
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "results before the sweep", "--allow-empty"], project)
    out = run(["dvc", "exp", "run", "--queue", "-S", "evaluate.num_samples=10,30"], project)
    assert out.count("Queued experiment") == 2, out
    # the workers it starts inherit its standard streams: captured, they would hold the pipes (and this test) open
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=dvc_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project)
        if not any(state in status for state in ("Queued", "Running")):
            break
        time.sleep(2)
    run(["dvc", "queue", "stop", "--kill"], project)
    assert status.count("Success") == 2, status
    experiments = [exp["revs"][0]["data"] for row in _exp_show(project) for exp in row.get("experiments") or []]
    found = {e["params"]["params.yaml"]["data"]["evaluate"]["num_samples"]: e["metrics"] for e in experiments}
    assert {10, 30} <= set(found), found
    estimates = {k: found[k]["metrics/evaluate_vae.json"]["data"]["log_px"] for k in (10, 30)}
    assert estimates[10] != estimates[30], estimates
