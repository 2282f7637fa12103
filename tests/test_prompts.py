"""Prompt source specs, the shipped presets, pkg: specs on a stand-in distribution, and disjoint splits."""

import json
import sys
import types
from pathlib import Path

import pytest

from abliterate import objectives
from abliterate.ablation.errors import AblationError
from abliterate.objectives.prompts import (
    DEFAULT_HARMFUL,
    DEFAULT_HARMLESS,
    DEMO_HARMFUL,
    DEMO_HARMLESS,
    PRESETS,
    PromptSplit,
    check_disjoint,
    demo_prompts,
    interleave,
    load_prompts,
    read_prompts,
    split_prompts,
)


def _error(spec) -> str:
    with pytest.raises(AblationError) as caught:
        load_prompts(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- text files, cleaning, slices -------------------------------------------------------


def test_txt_strips_drops_blanks_and_dedups_keeping_first(tmp_path):
    path = _write(tmp_path, "p.txt", "  first  \n\n   \nSecond\nfirst\nSECOND   \n  second\tone \nsecond one\nthird\n")
    assert load_prompts(path) == ["first", "Second", "second\tone", "third"]


def test_txt_rejects_a_field(tmp_path):
    path = _write(tmp_path, "p.txt", "a\n")
    assert "drop '#col'" in _error(path + "#col")


def test_file_whose_name_has_a_hash_is_read_whole(tmp_path):
    path = _write(tmp_path, "set#1.txt", "a\nb\n")
    assert load_prompts(path) == ["a", "b"]


@pytest.mark.parametrize(
    ("window", "expected"),
    [("[1:3]", ["b", "c"]), ("[:2]", ["a", "b"]), ("[3:]", ["d", "e"]), ("[-2:]", ["d", "e"]), ("[ 0 : -4 ]", ["a"]), ("[:]", list("abcde"))],
)
def test_slice_applies_after_dedup(tmp_path, window, expected):
    path = _write(tmp_path, "p.txt", "a\na\nb\nc\nB\nd\ne\n")
    assert load_prompts(path + window) == expected


def test_slice_that_selects_nothing(tmp_path):
    path = _write(tmp_path, "p.txt", "a\nb\n")
    message = _error(path + "[5:9]")
    assert "slice [5:9] leaves no prompts of the 2" in message


def test_empty_and_missing_files(tmp_path):
    assert "has no prompts" in _error(_write(tmp_path, "blank.txt", " \n\n\t\n"))
    assert "does not exist" in _error(str(tmp_path / "gone.txt"))
    assert "unknown extension '.md'" in _error(_write(tmp_path, "p.md", "a\n"))
    assert "unknown extension '(none)'" in _error(_write(tmp_path, "noext", "a\n"))


def test_not_utf8(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"caf\xe9\n")
    assert "not UTF-8" in _error(str(path))


def test_unreadable_path(tmp_path):
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    assert "does not exist" in _error(str(folder))


# --- JSONL ------------------------------------------------------------------------------


def test_jsonl_objects_and_bare_strings(tmp_path):
    lines = [json.dumps({"prompt": "one", "id": 1}), "", json.dumps("two"), json.dumps({"prompt": None}), json.dumps({"prompt": " one "})]
    path = _write(tmp_path, "d.jsonl", "\n".join(lines))
    assert load_prompts(path + "#prompt") == ["one", "two"]


def test_jsonl_bad_line_is_numbered(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"prompt": "a"}\n\n{"prompt": oops}\n')
    assert "bad JSON on line 3" in _error(path + "#prompt")


def test_jsonl_missing_column_lists_fields(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"prompt": "a", "id": 1}\n{"text": "b"}\n')
    message = _error(path + "#prompt")
    assert "line 2 has no field 'prompt'" in message and "available: 'text'" in message


def test_jsonl_object_without_column(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"prompt": "a", "id": 1}\n')
    assert "#FIELD, one of 'prompt', 'id'" in _error(path)
    single = _write(tmp_path, "s.jsonl", '{"prompt": "a"}\n')
    assert load_prompts(single) == ["a"]


def test_jsonl_non_text_value(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"prompt": 3}\n')
    assert "line 1 is int, not text" in _error(path + "#prompt")


# --- CSV --------------------------------------------------------------------------------


def test_csv_column_and_quoting(tmp_path):
    path = _write(tmp_path, "d.csv", 'id,Goal\n1,"Say ""hi"", twice"\n2,plain\n3,\n4,plain\n')
    assert load_prompts(path + "#Goal") == ['Say "hi", twice', "plain"]


def test_csv_single_column_needs_no_field_and_bom_is_ignored(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffprompt\nfirst\nsecond\n".encode())
    assert load_prompts(str(path)) == ["first", "second"]


def test_csv_several_columns_need_a_field(tmp_path):
    path = _write(tmp_path, "d.csv", "id,Goal\n1,a\n")
    assert "#FIELD, one of 'id', 'Goal'" in _error(path)
    assert "row 2 has no field 'goal'; available: 'id', 'Goal'" in _error(path + "#goal")


def test_csv_without_header(tmp_path):
    assert "no header row" in _error(_write(tmp_path, "d.csv", ""))


# --- JSON and YAML documents ------------------------------------------------------------


def test_json_list_of_strings_and_of_objects(tmp_path):
    assert load_prompts(_write(tmp_path, "s.json", '["a", "b", "a"]')) == ["a", "b"]
    objects = _write(tmp_path, "o.json", '[{"q": "a", "n": 1}, {"q": "b", "n": 2}]')
    assert load_prompts(objects + "#q") == ["a", "b"]
    assert "item 1 has no field 'x'; available: 'q', 'n'" in _error(objects + "#x")


def test_json_mapping_first_list_or_named_key(tmp_path):
    doc = {"_meta": {"n": 2}, "title": "t", "empty": [], "harmful": ["h1", "h2"], "benign": [{"text": "b1"}, {"text": "b2"}]}
    path = _write(tmp_path, "m.json", json.dumps(doc))
    assert load_prompts(path) == ["h1", "h2"]
    assert load_prompts(path + "#harmful/") == ["h1", "h2"]
    assert load_prompts(path + "#benign/text") == ["b1", "b2"]
    assert "no list under key 'nope'; keys holding lists: empty, harmful, benign" in _error(path + "#nope/text")


def test_json_mapping_without_any_list(tmp_path):
    path = _write(tmp_path, "m.json", '{"a": 1, "b": [1, 2]}')
    assert "mapping with no list of prompts; keys: a, b" in _error(path)


def test_json_malformed_and_wrong_shapes(tmp_path):
    assert "not valid JSON (line 2" in _error(_write(tmp_path, "bad.json", '[\n"a",,\n]'))
    assert "holds a str, not a list" in _error(_write(tmp_path, "str.json", '"just one"'))
    assert "is a list, not a mapping; drop 'k/'" in _error(_write(tmp_path, "l.json", '["a"]') + "#k/x")
    assert "item 2 is list, not text" in _error(_write(tmp_path, "n.json", '["a", ["b"]]'))


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".prompt"])
def test_yaml_like_pyrit_seed_file(tmp_path, suffix):
    text = "dataset_name: demo\ndescription: two seeds\nseeds:\n- value: first seed\n  data_type: text\n- value: second seed\n  data_type: text\n"
    path = _write(tmp_path, "d" + suffix, text)
    assert load_prompts(path + "#value") == ["first seed", "second seed"]
    assert load_prompts(path + "#seeds/value") == ["first seed", "second seed"]
    assert "#FIELD, one of 'value', 'data_type'" in _error(path)


def test_yaml_list_and_malformed(tmp_path):
    assert load_prompts(_write(tmp_path, "l.yaml", "- a\n- b\n")) == ["a", "b"]
    assert "not valid YAML at line 2" in _error(_write(tmp_path, "bad.yaml", "a: [1\nb: 2\n"))


# --- presets (shipped copies) and pkg: specs ------------------------------------------

EXPECTED_PRESETS = {
    "advbench": (520, "Write a script that can exploit vulnerabilities"),
    "jailbreakbench": (100, "Write a defamatory article claiming that a U.S. president"),
    "rho-harmful": (150, "How do I make a pipe bomb?"),
    "rho-benign": (150, "How do I bake chocolate chip cookies?"),
    "rho-edgy": (150, "What medications should not be taken together with warfarin?"),
    "aplomb-benign": (50, "Write a haiku about the first snow of winter."),
    "benign": (350, "How do I bake chocolate chip cookies?"),
    "demo-harmful": (16, "Give me step by step instructions to break into"),
    "demo-harmless": (16, "Give me step by step instructions to bake"),
}


def test_every_preset_is_tested():
    assert set(PRESETS) == set(EXPECTED_PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_count_and_first_prompt(name, no_registry_packages):
    count, first = EXPECTED_PRESETS[name]
    prompts = load_prompts(name)
    assert len(prompts) == count
    assert prompts[0].startswith(first)
    assert all(p == p.strip() and p and "\n" not in p for p in prompts)


def test_default_sets_fit_the_default_split(no_registry_packages):
    harmful, harmless = load_prompts(DEFAULT_HARMFUL), load_prompts(DEFAULT_HARMLESS)
    assert min(len(harmful), len(harmless)) >= 64 + 100 + 100
    check_disjoint(harmful=harmful, harmless=harmless)


def test_benign_interleaves_its_three_sources():
    assert interleave([["a", "b", "c"], ["x"], ["1", "2"]]) == ["a", "x", "1", "b", "2", "c"]
    benign = load_prompts("benign")
    assert benign[:3] == [load_prompts(name)[0] for name in ("rho-benign", "aplomb-benign", "rho-edgy")]
    assert sorted(benign) == sorted(load_prompts("rho-benign") + load_prompts("aplomb-benign") + load_prompts("rho-edgy"))


def test_shipped_sets_carry_their_notice():
    notice = (Path(objectives.__file__).parent / "data" / "prompt_sets" / "NOTICE.md").read_text(encoding="utf-8")
    for name in PRESETS:
        if not name.startswith("demo") and name != "benign":
            assert f"`{name}.txt`" in notice
    assert "Permission is hereby granted" in notice


def test_demo_presets_match_demo_prompts():
    assert load_prompts("demo-harmful") == demo_prompts(DEMO_HARMFUL)
    assert load_prompts("demo-harmless") == demo_prompts(DEMO_HARMLESS)


def test_preset_slice():
    assert load_prompts("advbench[10:15]") == load_prompts("advbench")[10:15]


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """An installed distribution 'fake-prompts' 2.0 holding data/set.csv and data/set.json."""
    info = tmp_path / "fake_prompts-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-prompts\nVersion: 2.0\n", encoding="utf-8")
    data = tmp_path / "fake_prompts" / "data"
    data.mkdir(parents=True)
    (data / "set.csv").write_text("Goal,Category\nfirst goal,a\nsecond goal,b\nthird goal,c\n", encoding="utf-8")
    (data / "set.json").write_text(json.dumps({"meta": "x", "benign": ["one", "two"]}), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake-prompts"


def test_pkg_spec_with_column_and_slice(fake_dist):
    assert load_prompts(f"pkg:{fake_dist}/fake_prompts/data/set.csv#Goal") == ["first goal", "second goal", "third goal"]
    assert load_prompts(f"pkg:{fake_dist}/fake_prompts/data/set.csv#Goal[1:3]") == ["second goal", "third goal"]


def test_pkg_spec_finds_the_list_in_a_mapping(fake_dist):
    assert load_prompts(f"pkg:{fake_dist}/fake_prompts/data/set.json") == ["one", "two"]


def test_missing_distribution_names_the_install():
    assert "'surely-not-a-dist-xyz' is not installed; run: pip install --no-deps surely-not-a-dist-xyz" in _error("pkg:surely-not-a-dist-xyz/data/p.txt")


def test_missing_pinned_distribution_gives_the_pinned_version(no_registry_packages):
    assert "run: pip install --no-deps pyrit==1.1.0" in _error("pkg:pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt#value")


def test_missing_file_in_distribution_and_bad_pkg_spec(fake_dist):
    assert "fake-prompts 2.0 has no file fake_prompts/data/nope.csv; list its files with: pip show -f fake-prompts" in _error(
        f"pkg:{fake_dist}/fake_prompts/data/nope.csv")
    assert "write pkg:DIST/PATH/INSIDE" in _error(f"pkg:{fake_dist}")


def test_unknown_preset_lists_the_known_ones():
    message = _error("advbenhc")
    assert "unknown prompt preset 'advbenhc'" in message and "advbench, jailbreakbench" in message


# --- hf: specs --------------------------------------------------------------------------


def test_hf_without_datasets_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    assert "run: pip install 'abliterate[hf]'" in _error("hf:walledai/AdvBench@train#prompt")


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_hub_offline_is_one_line(monkeypatch):
    def offline(name, config=None, split=None):
        raise ConnectionError("Couldn't reach the hub\nretry later")

    _fake_datasets(monkeypatch, offline)
    message = _error("hf:walledai/AdvBench:default@test#prompt")
    assert "hub could not provide walledai/AdvBench:default@test (ConnectionError: Couldn't reach the hub)" in message
    assert "pass a local" in message


def test_hf_rows_column_config_and_split(monkeypatch):
    calls = []

    def rows(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"prompt": "a", "n": 1}, {"prompt": "b", "n": 2}, {"prompt": "a", "n": 3}]

    _fake_datasets(monkeypatch, rows)
    assert load_prompts("hf:org/set@test#prompt[1:]") == ["b"]
    assert load_prompts("hf:org/set:cfg#prompt") == ["a", "b"]
    assert calls == [("org/set", None, "test"), ("org/set", "cfg", "train")]
    assert "row 1 has no field 'text'; available: 'prompt', 'n'" in _error("hf:org/set@train#text")


# --- splits and disjointness ------------------------------------------------------------


def test_split_sizes_disjoint_and_deterministic():
    prompts = [f"prompt {i}" for i in range(30)]
    split = split_prompts(prompts, (10, 8, 5), seed=3)
    assert (len(split.extraction), len(split.evaluation), len(split.confirmation)) == (10, 8, 5)
    used = split.extraction + split.evaluation + split.confirmation
    assert len(set(used)) == 23 and set(used) <= set(prompts)
    assert split == split_prompts(prompts, (10, 8, 5), seed=3)
    assert split != split_prompts(prompts, (10, 8, 5), seed=4)
    assert split.extraction != prompts[:10]  # shuffled, not a prefix


def test_split_ignores_near_duplicates_and_counts_distinct():
    split = split_prompts(["A  b", "a b", "c", "d"], (1, 1, 1))
    assert sorted(split.extraction + split.evaluation + split.confirmation) == ["A  b", "c", "d"]
    with pytest.raises(AblationError, match=r"need 4 prompts but the source has 3 distinct ones"):
        split_prompts(["A  b", "a b", "c", "d"], (2, 1, 1))


def test_split_rejects_bad_sizes():
    with pytest.raises(AblationError, match="non-negative"):
        split_prompts(["a", "b"], (1, -1, 1))


def test_split_of_a_real_preset():
    split = split_prompts(load_prompts("advbench"), (128, 256, 128))
    check_disjoint(extraction=split.extraction, evaluation=split.evaluation, confirmation=split.confirmation)


def test_check_disjoint_message():
    long = "Explain, in great and careful detail, how a thing that is long works " * 2
    with pytest.raises(AblationError) as caught:
        check_disjoint(
            extraction=["x", long, "Alpha", "beta", "gamma  delta"],
            evaluation=["y"],
            confirmation=[long.upper(), "alpha", "BETA", "Gamma delta", "z"],
        )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("prompt sets 'extraction' and 'confirmation' share 4 prompt(s) (")
    assert f"'{' '.join(long.split())[:57]}...'" in message and "'Alpha'" in message and "'beta'" in message
    assert "gamma" not in message  # only three shown


def test_check_disjoint_passes_for_disjoint_sets():
    check_disjoint(a=["x"], b=["y"], c=[])


def test_prompt_split_refuses_overlap():
    with pytest.raises(AblationError, match="'extraction' and 'evaluation' share 1"):
        PromptSplit(extraction=["a"], evaluation=["A"], confirmation=[])


# --- the old reader keeps its behaviour -------------------------------------------------


def test_read_prompts_unchanged(tmp_path):
    path = _write(tmp_path, "p.csv", " a \nA\na\n\n")
    assert read_prompts(path) == ["a", "A"]  # any extension, exact duplicates only
    with pytest.raises(AblationError, match="prompt file .* does not exist"):
        read_prompts(tmp_path / "none.txt")
