"""Study names as folder names: any name stays one folder directly under the root, and two names
never share one."""

import pytest

from abliterate.search.paths import folder_name, study_folder

# Stable across versions: a restarted promoter must find the folders an earlier one wrote.
NAMES = {
    "abliterate": "abliterate",
    "qwen3.5-run_2": "qwen3.5-run_2",
    "../escaped": "_._escaped+75a9a607e451f2f7",
    "/abs": "_abs+e802dcc0fe5e6ec1",
    ".": "_+cdb4ee2aea69cc6a",
    "..": "_.+5ec1f7e700f37c3d",
    "": "+e3b0c44298fc1c14",
    ".hidden": "_hidden+1692419006a88aab",
    "my study": "my_study+67549874cb879af6",
    "étude": "_tude+f98da860316dabbe",
    "a" * 100: "a" * 100,
    "a" * 101: "a" * 64 + "+9d0793397991b57a",
}


@pytest.mark.parametrize("name, folder", NAMES.items())
def test_folder_names(name, folder):
    assert folder_name(name) == folder


@pytest.mark.parametrize("name", [*NAMES, "a/../../b", "C:\\x", "x\0y", "~", "-rf", "a" * 10000, "..." + "/" * 300])
def test_every_name_is_one_folder_directly_under_the_root(name, tmp_path):
    folder = study_folder(tmp_path, name)
    assert folder.parent == tmp_path and folder.name not in ("", ".", "..") and not folder.name.startswith(".")
    assert "/" not in folder.name and "\0" not in folder.name and len(folder.name) <= 100
    assert (tmp_path / folder.name).resolve().parent == tmp_path.resolve()


def test_two_names_never_share_a_folder():
    names = ["my study", "my_study", "my?study", "my/study", "my_study+67549874cb879af6", "_abs", "/abs", "\\abs",
             "a" * 101, "a" * 102, "a" * 64]
    assert len({folder_name(n) for n in names}) == len(names)

