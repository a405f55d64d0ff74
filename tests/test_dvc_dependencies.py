"""dvc.yaml declares exactly what each stage uses: the project's Python files its command imports (found
statically, function-level imports included) and the params keys it reads when it runs (traced on tiny data).
A dependency left out makes `dvc repro` answer "up to date" over stale results; one declared but unused reruns
a stage for nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import DVC_STAGES, Workspace, stage_args

from pipeline.config import Config
from stages.__main__ import STAGES

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pipeline", "stages", "benchmarks")


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _with_packages(name: str) -> list[str]:
    """A module and every package above it (importing a.b.c runs a/__init__.py and a/b/__init__.py)."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imports(path: Path, package: str) -> set[str]:
    """Project modules a file imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PROJECT_PACKAGES and _module_file(name) is not None:
                found.update(n for n in _with_packages(name) if _module_file(n) is not None)
    return found


def imported_files(stage_module: str) -> set[str]:
    """Repository-relative paths of every project file `python -m stages <stage>` imports."""
    todo = ["stages", "stages.__main__", *_with_packages(stage_module)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(_imports(path, package) - seen)
    return {str(_module_file(name).relative_to(REPO)) for name in seen}


def _leaf_keys(keys: list[str | dict]) -> set[str]:
    """Dotted leaf keys of declared params (a whole section such as "vae" stands for all its keys, and the file
    itself, ``params.yaml:``, for every key)."""
    defaults = Config().to_dict()
    leaves = set()
    for key in keys:
        if key == {"params.yaml": None}:
            leaves |= _leaf_keys(list(defaults))
            continue
        node = defaults
        for part in key.split("."):
            node = node[part]
        if isinstance(node, dict):
            leaves.update(f"{key}.{name}" for name in node)
        else:
            leaves.add(key)
    return leaves


@pytest.mark.parametrize("name", list(DVC_STAGES))
def test_stage_declares_exactly_the_project_files_it_imports(name: str) -> None:
    stage = DVC_STAGES[name]
    module = STAGES[stage_args(stage)[0]]
    used = imported_files(module)
    declared = {dep for dep in stage.get("deps", []) if dep.endswith(".py")}
    assert not used - declared, f"{name}: dvc.yaml does not declare {sorted(used - declared)}"
    assert not declared - used, f"{name}: dvc.yaml declares files it does not import: {sorted(declared - used)}"


@pytest.mark.parametrize("name", list(DVC_STAGES))
def test_stage_declares_exactly_the_params_it_reads(name: str, pipeline_workspace: Workspace) -> None:
    declared = _leaf_keys(DVC_STAGES[name].get("params", []))
    read = pipeline_workspace.params_read[name]
    if name == "check_params":  # it reads every key while validating, before the trace starts
        read = _leaf_keys(list(Config().to_dict()))
    assert not read - declared, f"{name}: dvc.yaml does not declare params {sorted(read - declared)}"
    assert not declared - read, f"{name}: dvc.yaml declares params it does not read: {sorted(declared - read)}"
