"""Exported checkpoints: readable by other users, with a model card and a reproduction record from
which the same weights are rebuilt bit for bit without the study's database."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from abliterate.ablation import export_checkpoint
from abliterate.ablation.errors import AblationError
from abliterate.ablation.export import current_umask, published_modes
from abliterate.ablation.loading import LoadedModel
from abliterate.search.card import card_header, front_matter, hub_id, layers_text, model_card
from abliterate.search.reproduce import differing_files, parse_reproduction, prompts_sha256, tensor_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE_CARD = "---\nlicense: other\nlicense_name: tiny-licence\nlicense_link: LICENSE\npipeline_tag: text-generation\n---\n# Tiny\n"


@pytest.fixture
def umask():
    """umask(value) for the rest of the test."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(folder):
    """relative path -> permission bits, for the folder and everything in it."""
    found = {".": stat.S_IMODE(os.stat(folder).st_mode)}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def tree(folder):
    """relative path -> bytes of every file under ``folder``."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, files in os.walk(folder) for name in files}


# ---- pure functions -------------------------------------------------------------------------


@pytest.mark.parametrize("mask, expected", [(0o022, (0o755, 0o644)), (0o002, (0o775, 0o664)), (0o077, (0o700, 0o600))])
def test_published_modes_follow_the_umask(mask, expected, umask):
    assert published_modes(mask) == expected
    umask(mask)
    assert current_umask() == mask and os.umask(mask) == mask  # read, and left as it was


def test_front_matter_of_a_card():
    assert front_matter(BASE_CARD) == {"license": "other", "license_name": "tiny-licence", "license_link": "LICENSE",
                                       "pipeline_tag": "text-generation"}
    assert front_matter("# no header\n") == {} and front_matter(None) == {}
    assert front_matter("---\n- a list\n---\n") == {} and front_matter("---\nkey: [unclosed\n---\n") == {}


@pytest.mark.parametrize("spec, expected", [
    ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B"),
    ("/root/.cache/huggingface/hub/models--Qwen--Qwen3-4B/snapshots/abc123", "Qwen/Qwen3-4B"),
    ("/models/qwen3", None), ("./Qwen/Qwen3-4B", None), ("model.gguf", None), ("a/b/c", None),
])
def test_hub_id_of_a_base_model_spec(spec, expected):
    assert hub_id(spec) == expected


def test_card_header_takes_the_licence_from_the_card_then_the_config():
    assert card_header("org/base", front_matter(BASE_CARD), {"license": "mit"}) == {
        "base_model": "org/base", "base_model_relation": "finetune", "license": "other", "license_name": "tiny-licence",
        "license_link": "LICENSE", "library_name": "transformers", "pipeline_tag": "text-generation",
        "tags": ["abliterated", "abliteration", "abliterate"]}
    assert card_header(None, {}, {"license": "mit"}) == {"license": "mit", "library_name": "transformers",
                                                          "tags": ["abliterated", "abliteration", "abliterate"]}


def test_layers_as_ranges():
    assert layers_text([7, 2, 3, 4, 5], 24) == "2-5, 7 (5 of 24)"
    assert layers_text([0], 4) == "0 (1 of 4)" and layers_text([], 4) == "none (0 of 4)"


def test_hashes_are_of_exact_contents():
    assert prompts_sha256(["a", "b\nc"]) == hashlib.sha256(b'["a","b\\nc"]').hexdigest()
    t = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert tensor_sha256(t) == hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
    assert tensor_sha256(t) != tensor_sha256(torch.nextafter(t, torch.full_like(t, 9.0)))


def test_differing_files_names_changed_missing_and_extra():
    assert differing_files({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"}) == ["b", "c", "d"]
    assert differing_files({"a": "1"}, {"a": "1"}) == []


@pytest.mark.parametrize("text, message", [
    ("{", "is not JSON"),
    ('{"format": "other/1"}', "is not an abliterate reproduction record (format 'other/1'"),
    ('{"format": "abliterate-reproduction/1", "study": {}}', "lacks base, params, directions, prompts, weights, card"),
])
def test_a_bad_record_is_one_line(text, message):
    with pytest.raises(AblationError, match=message.replace("(", r"\(")) as error:
        parse_reproduction(text, "f.json")
    assert "\n" not in str(error.value)


def test_model_card_states_the_edit_and_the_verdict():
    record = {
        "abliterate": "0.1.0",
        "study": {"name": "s", "trial": 7, "seed": 3, "config": {"proxy": "markers", "kl_cap": 0.5}},
        "base": {"model": "/models/tiny", "dtype": "float32", "device": "cpu"},
        "edit": {"intervention": "ablate", "method": "mean-projected", "scope": "global", "direction_layer": 1.5,
                 "norm_preserving": True, "first_layer": 0, "last_layer": 3, "num_layers": 4, "layers_touched": [1, 2, 3],
                 "kernels": {"attn": {"shape": "tent", "peak": 1.8, "peak_weight": 1.3, "floor_weight": 0.52, "falloff": 1.2}}},
        "figures": {"kl": 0.01234, "refusal": 0.25, "refusal_rate": 0.25, "degenerate_rate": 0.0, "feasible": True},
        "promotion": {"status": "accepted", "details": {
            "confirmation": {"refusal": 0.2, "base_refusal": 0.9, "margin": 0.1, "kl": 0.015, "passed": True,
                             "capability": {"accuracy": 0.5, "base_accuracy": 0.5625, "median_length": 41.0, "base_median_length": 64.0,
                                            "questions": 32, "prompts": 40, "max_new_tokens": 96}},
            "runner": "local", "attempts": 3,
            "gate": {"reason": "wash-dishes: raw p = 0.05 < 0.1", "pooled_p": 0.04, "pooled_odds_ratio": None, "flags": [],
                     "tasks": [{"counts": {"task": "wash-dishes", "candidate_pass": 3, "candidate_n": 3, "baseline_pass": 0,
                                           "baseline_n": 3}, "p": 0.05, "p_holm": 0.05, "p_bh": 0.05}]}}},
        "packages": {"python": "3.11.9", "abliterate": "0.1.0", "torch": "2.13.0", "optuna": None},
    }
    card = model_card({"license": "mit", "tags": ["abliterated"]}, record)
    assert card.startswith("---\nlicense: mit\ntags:\n- abliterated\n---\n\n# tiny, abliterated (study s, trial 7)\n")
    for line in ("| direction method | mean-projected, one direction interpolated at layer 1.50 |",
                 "| intervention | ablate (W ← W − w·r·rᵀ·W on every matrix that writes into the residual stream), norm-preserving |",
                 "| profile | attn: tent kernel, weight 1.300 at layer 1.80 falling to 0.520 over 1.20 layers; within layers 0-3 |",
                 "| layers touched | 1-3 (3 of 4) |",
                 "| KL drift from the base model (harmless evaluation prompts, first answer token) | 0.0123 |",
                 "| refusal objective (markers proxy, harmful evaluation prompts) | 0.250 |",
                 "Verdict: **accepted**",
                 "Held-out confirmation: refusal 0.200 against the base model's 0.900 (margin 0.1), KL 0.0150: passed.",
                 "Capability check: 50% of 32 multiple-choice questions right (base model 56%); greedy answers to 40 harmless "
                 "prompts 41 tokens long at the median (base model 64, at most 96).",
                 "| wash-dishes | 3/3 | 0/3 | 0.05 | 0.05 | 0.05 |",
                 "python 3.11.9, abliterate 0.1.0, torch 2.13.0; sampler seed 3."):
        assert line in card.splitlines(), line
    assert "Not promoted: no confirmation or agent sweep has judged this trial." in model_card({}, record | {"promotion": None})
    assert "Promotion in progress (sweeping): no verdict yet." in model_card({}, record | {"promotion": {"status": "sweeping"}})


# ---- export and rebuild on a tiny real model ------------------------------------------------


def test_export_is_readable_by_other_users_unless_the_umask_says_otherwise(tiny, tmp_path, umask):
    model, tokenizer = tiny("llama")
    loaded = LoadedModel(model, tokenizer, "tiny")

    def add_subfolder(staging):
        (staging / "extra").mkdir()
        (staging / "extra" / "notes.txt").write_text("x")

    umask(0o022)
    found = modes(export_checkpoint(loaded, tmp_path / "shared", finish=add_subfolder))
    assert found["."] == found["extra"] == 0o755
    assert {mode for path, mode in found.items() if path not in (".", "extra")} == {0o644}
    umask(0o077)
    found = modes(export_checkpoint(loaded, tmp_path / "private"))
    assert found["."] == 0o700 and {mode for path, mode in found.items() if path != "."} == {0o600}


def test_a_failing_finish_writes_nothing(tiny, tmp_path):
    model, tokenizer = tiny("llama")

    def refuse(staging):
        raise AblationError("no")

    with pytest.raises(AblationError):
        export_checkpoint(LoadedModel(model, tokenizer, "tiny"), tmp_path / "out", finish=refuse)
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A SQLite study of a tiny qwen3 (whose folder has a card) with one finished, promoted trial."""
    return make_study(tmp_path_factory.mktemp("study"))


def make_study(folder, dtype=torch.float32):
    """The study of :func:`study` in ``folder``, its base model saved in ``dtype`` (searched in fp32)."""
    import optuna

    from abliterate.ablation.resolve import payload_key
    from abliterate.objectives.gate import GateRule, TaskCounts, gate
    from abliterate.objectives.payload import compute_payload
    from abliterate.search.space import starting_points, suggest
    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.search.trial import capture_extraction, directions_to_bytes
    from abliterate.storage.cache import ArtifactCache
    from abliterate.storage.promotions import PromotionStore
    from abliterate.storage.rdb import open_storage
    from fixtures.tiny import tiny_model

    model, tokenizer = tiny_model("qwen3")
    model.to(dtype).save_pretrained(folder / "model")
    model.float()
    tokenizer.save_pretrained(folder / "model")
    (folder / "model" / "README.md").write_text(BASE_CARD)
    config = StudyConfig.split(str(folder / "model"), "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=4, batch_size=8, seed=5)
    url = f"sqlite:///{folder / 'study.db'}"
    storage = open_storage(url)
    created, _ = create_or_resume(storage, "s", config)
    prompts = config.prompts()
    loaded = LoadedModel(model, tokenizer, config.model)
    harmful, harmless = prompts["harmful", "extraction"], prompts["harmless", "extraction"]
    residuals = capture_extraction(loaded, harmful, harmless, batch_size=config.batch_size)
    directions = compute_payload(loaded, harmful, harmless, residuals, config.space, batch_size=config.batch_size)
    ArtifactCache(storage.engine, "s", "test").get_or_compute(payload_key(config.space), lambda: directions_to_bytes(directions))
    created = optuna.load_study(study_name="s", storage=url)  # ask/tell without the workers' heartbeat
    created.enqueue_trial(starting_points(config.space, 0.5, 1)[0])
    trial = created.ask()
    suggest(trial, config.space)
    for key, value in {"kl": 0.0123, "feasible": True, "refusal_rate": 0.25, "degenerate_rate": 0.0}.items():
        trial.set_user_attr(key, value)
    created.tell(trial, [0.25, 0.0123])
    result = gate([TaskCounts("wash-dishes", 3, 3, 0, 3)], GateRule())
    PromotionStore(storage.engine, "s").update(trial.number, "accepted", runner="local", attempts=3, gate=result.as_dict(),
                                               confirmation={"refusal": 0.2, "base_refusal": 0.9, "margin": 0.1, "kl": 0.02, "passed": True})
    assert optuna.load_study(study_name="s", storage=url).trials[0].state.name == "COMPLETE"
    return {"url": url, "db": folder / "study.db", "model": folder / "model", "config": config, "trial": trial.number}


def run(capsys, *args):
    from abliterate.search.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory):
    from abliterate.search.cli import main

    out = tmp_path_factory.mktemp("export") / "trial-0"
    old = os.umask(0o022)
    try:
        assert main(["export", "--storage", study["url"], "--study", "s", "--trial", str(study["trial"]), "--out", str(out),
                     "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    return out


def test_export_writes_card_record_and_directions_readable_by_all(exported, study):
    found = modes(exported)
    assert {"README.md", "reproduce.json", "directions/directions.safetensors", "config.json", "model.safetensors"} <= set(found)
    assert {mode for path, mode in found.items() if os.path.isdir(exported / path)} == {0o755}
    assert {mode for path, mode in found.items() if not os.path.isdir(exported / path)} == {0o644}

    card = (exported / "README.md").read_text()
    assert front_matter(card) == {"license": "other", "license_name": "tiny-licence", "license_link": "LICENSE",
                                  "library_name": "transformers", "pipeline_tag": "text-generation",
                                  "tags": ["abliterated", "abliteration", "abliterate"]}
    for line in ("| study | `s` |", "| trial | 0 |", "Verdict: **accepted**", "| wash-dishes | 3/3 | 0/3 | 0.05 | 0.05 | 0.05 |"):
        assert line in card.splitlines(), line

    record = json.loads((exported / "reproduce.json").read_text())
    assert record["params"]["method"] == "mean-projected" and record["study"]["seed"] == 5 and record["study"]["trial"] == 0
    assert record["figures"] == {"kl": 0.0123, "refusal": 0.25, "refusal_rate": 0.25, "degenerate_rate": 0.0, "feasible": True}
    assert record["base"] == {"model": str(study["model"]), "hub_id": None, "dtype": "float32", "device": "cpu"}
    assert record["edit"]["layers_touched"] and record["packages"]["torch"] == torch.__version__
    extraction = {(p["side"], p["purpose"]): p for p in record["prompts"]}
    assert len(extraction) == 6 and extraction["harmful", "extraction"]["count"] == 4
    from abliterate.objectives.prompts import load_prompts

    assert extraction["harmless", "evaluation"]["sha256"] == prompts_sha256(load_prompts("demo-harmless[4:10]"))
    assert record["weights"] == {"model.safetensors": hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()}


def test_rebuild_from_the_record_alone_is_bit_identical(exported, study, tmp_path, capsys):
    moved = tmp_path / "db-gone"
    shutil.move(study["db"], moved)  # no study database from here on
    try:
        status, out, err = run(capsys, "export", "--from-file", exported / "reproduce.json", "--model", study["model"],
                               "--out", tmp_path / "rebuilt")
        assert status == 0, err
        assert tree(tmp_path / "rebuilt") == tree(exported)

        # Only the record, without the directions beside it: they are computed again from the prompts.
        (tmp_path / "alone").mkdir()
        shutil.copy(exported / "reproduce.json", tmp_path / "alone")
        status, out, err = run(capsys, "export", "--from-file", tmp_path / "alone" / "reproduce.json", "--model", study["model"],
                               "--out", tmp_path / "recomputed")
        assert status == 0, err
        assert "computing the mean-projected directions again" in out
        assert tree(tmp_path / "recomputed") == tree(exported)
    finally:
        shutil.move(moved, study["db"])


def test_a_record_that_does_not_rebuild_its_weights_writes_nothing(exported, study, tmp_path, capsys):
    record = json.loads((exported / "reproduce.json").read_text())
    record["params"]["attn_peak_weight"] += 0.01
    (tmp_path / "tampered").mkdir()
    (tmp_path / "tampered" / "reproduce.json").write_text(json.dumps(record))
    shutil.copytree(exported / "directions", tmp_path / "tampered" / "directions")
    status, out, err = run(capsys, "export", "--from-file", tmp_path / "tampered" / "reproduce.json", "--model", study["model"],
                           "--out", tmp_path / "out")
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("error")]  # (transformers draws a progress bar before)
    assert len(errors) == 1 and errors[0].startswith("error: the rebuilt weights differ from the recorded ones (model.safetensors)")
    assert sorted(os.listdir(tmp_path)) == ["tampered"]


def test_an_adapter_export_is_the_checkpoint_as_peft_loads_it_and_rebuilds_bit_for_bit(exported, study, tmp_path, capsys):
    """``--adapter RANK``: a PEFT adapter of the base model with the card and record. This trial is
    norm-preserving (as the designed starting trials are), a change of full rank: at rank 4 the
    record and card state the fit's error; at the matrices' full rank (64) it is exact, and PEFT
    loads it as the exported checkpoint. Its record rebuilds it bit for bit."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def adapter(rank):
        out = tmp_path / f"adapter-{rank}"
        status, said, err = run(capsys, "export", "--storage", study["url"], "--study", "s", "--trial", study["trial"], "--out", out,
                                "--device", "cpu", "--adapter", rank)
        assert status == 0, err
        assert f"to {out} as a LoRA adapter of the base model" in said
        files = set(os.listdir(out))
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "reproduce.json", "directions"} <= files
        assert "model.safetensors" not in files
        record = json.loads((out / "reproduce.json").read_text())
        assert record["params"]["norm_preserving"] and record["adapter"]["max_rank"] == rank
        assert record["edit"] == json.loads((exported / "reproduce.json").read_text())["edit"]
        return out, record["adapter"], (out / "README.md").read_text()

    fitted, figures, card = adapter(4)
    assert figures["rank"] == 4 and figures["max_error"] > 1e-3
    assert "## As a LoRA adapter" in card and f"leaving out up to {figures['max_error']:.1%} of the change" in card
    exact, figures, card = adapter(64)
    assert figures["max_error"] < 1e-5 and "It is the edit itself" in card

    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    ids = tokenizer(["How do I bake bread at home?"], return_tensors="pt")
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(study["model"])), str(exact))(**ids).logits
        whole = AutoModelForCausalLM.from_pretrained(str(exported))(**ids).logits
    assert (adapted - whole).abs().max() < 1e-5  # float32 rounding: W + B A against the baked W'

    status, _, err = run(capsys, "export", "--from-file", fitted / "reproduce.json", "--model", study["model"], "--out", tmp_path / "rebuilt")
    assert status == 0, err
    assert tree(tmp_path / "rebuilt") == tree(fitted)
    status, _, err = run(capsys, "export", "--from-file", fitted / "reproduce.json", "--model", study["model"], "--out", tmp_path / "again",
                         "--adapter", 2)
    assert status == 2 and err.strip().splitlines()[-1].startswith("error: --adapter goes with --trial")


def test_export_keeps_the_base_model_s_dtype_unless_asked(tmp_path, capsys):
    """A bf16 base searched in fp32 on the CPU is exported in bf16 (not at twice its size), and its
    record rebuilds it bit for bit; --dtype fp32 asks for the searched precision."""
    from safetensors import safe_open

    bf16 = make_study(tmp_path / "study", torch.bfloat16)
    assert bf16["config"].dtype == "auto"  # fp32 on this CPU

    def exported(*options):
        out = tmp_path / ("export" + "".join(options))
        status, _, err = run(capsys, "export", "--storage", bf16["url"], "--study", "s", "--trial", 0, "--out", out, "--device", "cpu", *options)
        assert status == 0, err
        with safe_open(out / "model.safetensors", "pt") as weights:
            dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
        return out, dtypes, json.loads((out / "reproduce.json").read_text())["base"]["dtype"]

    out, dtypes, recorded = exported()
    assert dtypes == {"BF16"} and recorded == "bfloat16"
    status, _, err = run(capsys, "export", "--from-file", out / "reproduce.json", "--model", bf16["model"], "--out", tmp_path / "rebuilt")
    assert status == 0, err
    assert tree(tmp_path / "rebuilt") == tree(out)
    _, dtypes, recorded = exported("--dtype", "fp32")
    assert dtypes == {"F32"} and recorded == "float32"


@pytest.mark.parametrize("env, message", [
    ({"HF_HUB_OFFLINE": "1"}, "error: cannot push to me/tiny: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1)"),
    ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_not_a_token"},
     "error: cannot push to me/tiny: the Hugging Face Hub did not answer or refused the token"),
])
def test_push_to_hub_fails_in_one_line_before_anything_is_written(study, tmp_path, env, message):
    result = subprocess.run([sys.executable, "-m", "abliterate", "export", "--storage", study["url"], "--study", "s", "--trial", "0",
                             "--out", tmp_path / "out", "--push-to-hub", "me/tiny"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert os.listdir(tmp_path) == []


def test_an_adapter_without_peft_is_one_line_before_anything_is_written(study, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "peft.py").write_text("raise ImportError('no peft in this environment')\n")  # as if it were not installed
    result = subprocess.run([sys.executable, "-m", "abliterate", "export", "--storage", study["url"], "--study", "s", "--trial", "0",
                             "--out", tmp_path / "out", "--adapter", "4"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 2
    assert result.stderr == ("error: --adapter writes a PEFT adapter, and PEFT is not installed here; "
                             "pip install 'abliterate[adapter]'\n"), result.stderr
    assert os.listdir(tmp_path) == ["shadow"]


@pytest.mark.parametrize("args, message", [
    (["--from-file", "r.json"], "error: --from-file needs --model BASE"),
    (["--trial", "0", "--model", "m"], "error: --model goes with --from-file"),
    (["--from-file", "/no/reproduce.json", "--model", "m"], "error: reproduction file /no/reproduce.json does not exist"),
    (["--from-file", "r.json", "--model", "m", "--dtype", "bf16"], "error: --dtype goes with --trial"),
])
def test_bad_export_arguments_are_one_line(args, message, tmp_path, capsys):
    status, out, err = run(capsys, "export", *args, "--out", tmp_path / "out")
    assert status == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("change, message", [
    (None, "could not be read at export"),
    ("0" * 64, "has changed since the export"),
])
def test_directions_are_not_recomputed_from_prompts_other_than_the_recorded(exported, tmp_path, change, message):
    from abliterate.search.checkpoint import recorded_directions

    record = json.loads((exported / "reproduce.json").read_text())
    for entry in record["prompts"]:
        if entry["purpose"] == "extraction" and entry["side"] == "harmless":
            entry["sha256"] = change
    with pytest.raises(AblationError, match=message):
        recorded_directions(record, tmp_path, loaded=None, log=lambda line: None)  # no directions/ folder in tmp_path


def _abliterate(*args, limit_file_size=None):
    """The command as a subprocess; ``limit_file_size`` (bytes) makes every write past it fail as
    on a full disk (RLIMIT_FSIZE: the write returns EFBIG, Python ignoring SIGXFSZ), root or not."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-m", "abliterate", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=limit if limit_file_size else None)


def _one_error(result):
    return [line for line in result.stderr.splitlines() if "Writing model shards" not in line]


@pytest.mark.parametrize("where", ["read-only", "file", "full"])
def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(study, tmp_path, where):
    """A read-only file system (sysfs refuses new entries, to root too), a file where a folder
    must be, and a disk that fills mid-export: one line naming the target, exit 2, no staging
    folder left. The first two are told before the model is loaded."""
    (tmp_path / "a-file").write_text("")
    out = {"read-only": "/sys/abliterate-test/out", "file": tmp_path / "a-file" / "out", "full": tmp_path / "out"}[where]
    result = _abliterate("export", "--storage", study["url"], "--study", "s", "--trial", "0", "--out", out, "--device", "cpu",
                         limit_file_size=20000 if where == "full" else None)
    assert result.returncode == 2, result.stderr
    lines = _one_error(result)
    expected = {"read-only": "error: cannot write the checkpoint to /sys/abliterate-test/out: /sys is not writable (",
                "file": f"error: cannot write the checkpoint to {out}: {tmp_path / 'a-file'} is a file, not a folder",
                "full": f"error: cannot write the checkpoint to {out} (File too large"}[where]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


@pytest.mark.parametrize("change, message", [
    ("method", "error: RECORD names an unknown direction method 'magic'"),
    ("base", "error: REFUSER is not the record's base model: its directions are 4 layers x 64 wide, REFUSER has 4 layers x 128"),
])
def test_a_record_that_does_not_fit_is_one_line(exported, tmp_path, change, message):
    """An unknown method (a KeyError) or another base model (mat1 and mat2 shapes) gave tracebacks."""
    from abliterate.objectives.refuser import refuser_path

    shutil.copytree(exported, tmp_path / "record")
    record = json.loads((tmp_path / "record" / "reproduce.json").read_text())
    if change == "method":
        record["params"]["method"] = "magic"
    (tmp_path / "record" / "reproduce.json").write_text(json.dumps(record))
    base = refuser_path() if change == "base" else json.loads((exported / "reproduce.json").read_text())["base"]["model"]
    result = _abliterate("export", "--from-file", tmp_path / "record" / "reproduce.json", "--model", base, "--out", tmp_path / "out")
    assert result.returncode == 2
    lines = _one_error(result)
    expected = message.replace("RECORD", str(tmp_path / "record" / "reproduce.json")).replace("REFUSER", str(base))
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["record"]
