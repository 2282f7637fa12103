"""What a fresh ``pip install`` brings is what the package imports: nothing installed by hand on
this machine can make these pass (matplotlib once did: CI was green, a fresh install was not)."""

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# Each installed package and the folder it is built from (package-dir maps abliterate.X to X/).
FOLDERS = {
    package: next((folder + package[len(prefix):].replace(".", "/") for prefix, folder in SETUPTOOLS["package-dir"].items()
                   if package == prefix or package.startswith(prefix + ".")), package.replace(".", "/"))
    for package in SETUPTOOLS["packages"]
}
PACKAGES = sorted({folder.split("/")[0] for folder in FOLDERS.values()})
# Installed first, by hand, on purpose (pyproject.toml says why): never declared.
NOT_DECLARED = {"torch"}
# Modules of optional features: the extra that brings each. Every import of one must sit in a
# try whose handler catches ImportError, so that a plain install says what to install instead
# of a traceback.
OPTIONAL = {"datasets": "hf", "harbor": "harbor", "peft": "adapter"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]).lower()


def _declared_closure() -> set[str]:
    """The declared distributions and everything they pull in (by their own metadata)."""
    closure, todo = set(), [_name(r) for r in PYPROJECT["project"]["dependencies"]]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            todo += [_name(r) for r in metadata.requires(name) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            pass
    return closure


def _imports():
    """(module file, top-level module, whether an ImportError handler guards it) for every
    absolute import in the package's own code."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            guarded = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                    guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    yield path.relative_to(ROOT), name.split(".")[0], id(node) in guarded


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(c, ast.Name) and c.id in ("ImportError", "ModuleNotFoundError") for c in caught)


def test_every_third_party_import_is_declared_or_an_optional_extra():
    closure, distributions = _declared_closure(), metadata.packages_distributions()
    own, stdlib = {"abliterate"}, set(sys.stdlib_module_names)
    undeclared, unguarded = [], []
    for path, module, guarded in _imports():
        if module in stdlib or module in own or module in NOT_DECLARED:
            continue
        if module in OPTIONAL:
            if not guarded:
                unguarded.append(f"{path}: {module}")
            continue
        if not {_name(d) for d in distributions.get(module, [module])} & closure:
            undeclared.append(f"{path}: {module}")
    assert not undeclared, f"imported but not among pyproject.toml's dependencies: {sorted(set(undeclared))}"
    assert not unguarded, f"optional modules imported without an ImportError handler: {sorted(set(unguarded))}"


def test_each_optional_module_has_its_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in OPTIONAL.items():
        assert any(_name(r) == module for r in extras.get(extra, [])), f"extra {extra!r} does not bring {module}"


def test_every_package_folder_is_installed():
    """A folder with an __init__.py that pyproject does not list would be left out of the wheel:
    its imports work in this checkout and fail on a user's install."""
    folders = {str(p.parent.relative_to(ROOT)) for name in PACKAGES for p in (ROOT / name).rglob("__init__.py")}
    assert folders == set(FOLDERS.values())


def test_no_generic_top_level_name_is_installed():
    assert all(package == "abliterate" or package.startswith("abliterate.") for package in FOLDERS)


@pytest.mark.slow
def test_a_fresh_venv_runs_analyze(tmp_path):
    """README's install in a new virtual environment (no test extras, nothing from this one), then
    the command that once died on a missing module after all its model work."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)
    subprocess.run([*pip, str(ROOT)], check=True, timeout=1800, cwd=tmp_path)
    from abliterate.objectives.refuser import refuser_path

    result = subprocess.run(
        [str(venv / "bin" / "abliterate"), "analyze", "--model", str(refuser_path()), "--harmful", "demo-harmful[0:8]",
         "--harmless", "demo-harmless[0:8]", "--methods", "mean", "--device", "cpu", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "analysis.json").is_file() and list((tmp_path / "out").glob("*.png"))
