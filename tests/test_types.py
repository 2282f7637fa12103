"""The engine type-checks: mypy, configured in pyproject.toml ([tool.mypy]), finds no error in
the packages listed in CHECKED.

The folders install as ``abliterate.<name>`` through setuptools' package-dir (ablation/ is
``abliterate.ablation``), and an editable install reaches them through an import hook that mypy
cannot follow (``mypy -p abliterate.ablation`` says "Can't find package"). So the test lays the
namespace out as mypy expects it, in a throw-away folder: ``abliterate/`` with the files of the
real abliterate/ linked in, and one symbolic link per package-dir entry (``abliterate/ablation ->
ablation/``), read from pyproject.toml so that a new mapping needs no change here. mypy then
checks the tree's own files through the links, and resolves imports between the packages the way
the installed package does. Run it alone to see mypy's report: pytest tests/test_types.py.
"""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
# The engine and the scoring code; search/ and storage/ are not checked yet.
CHECKED = ("abliterate.ablation", "abliterate.objectives")


def namespace_tree(root: Path) -> Path:
    """``root``/abliterate laid out as installed: the real abliterate/ files plus a link per
    package-dir folder. Returns ``root``, the folder to put on mypy's path."""
    package = root / "abliterate"
    package.mkdir(parents=True)
    for file in (ROOT / "abliterate").glob("*.py"):
        (package / file.name).symlink_to(file)
    mapping = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        prefix, _, leaf = name.rpartition(".")
        assert prefix == "abliterate", f"package-dir maps {name}, outside the abliterate namespace"
        (package / leaf).symlink_to(ROOT / folder, target_is_directory=True)
    return root


def test_engine_type_checks(tmp_path):
    tree = namespace_tree(tmp_path / "tree")
    packages = [arg for name in CHECKED for arg in ("-p", name)]
    # cwd is the tree: mypy searches its working directory too, and from the repository root it
    # would also find the folders under their bare names. The cache is the test's own: a cold
    # check takes about 25 s on two cores, most of it reading torch.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(tmp_path / "cache"), *packages],
        cwd=tree, env={**os.environ, "MYPYPATH": str(tree)}, capture_output=True, text=True, timeout=600,
    )
    report = (result.stdout + result.stderr).strip()
    # (mypy comes with the test extra: pip install -e '.[test]')
    assert result.returncode == 0, f"mypy found errors (exit {result.returncode}):\n{report}"
    # every module was checked (mypy counts data folders as namespace packages too, hence >=)
    files = sum(1 for name in CHECKED for _ in (tree / name.replace(".", "/")).rglob("*.py"))
    checked = re.fullmatch(r"Success: no issues found in (\d+) source files", report)
    assert checked and int(checked[1]) >= files, report
