"""README's two set-up commands are the ones CI runs and the ones the project supports."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme[readme.index("## Set up"):readme.index("## Commands")]
    return [line for block in re.findall(r"```bash\n(.*?)```", setup, re.S) for line in block.splitlines()]


def test_the_test_command_is_what_ci_runs_and_ends_in_pytest():
    test_command = next(line for line in _commands() if line.startswith("apt-get update"))
    assert test_command.endswith("&& pytest")
    assert "bash .ci/postgres" in test_command and "postgresql" in test_command
    assert "bash .ci/docker" in test_command  # the tests marked docker need an engine and the base image
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_demo_command_needs_no_separate_prompt_packages():
    assert "pip install torch==2.13.0 && pip install -e . && abliterate demo" in _commands()
    assert not any("prompt-sets.txt" in line for line in _commands())
