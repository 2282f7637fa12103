"""The abliterate command, run as a real subprocess."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from abliterate.ablation.bake import Edit
from abliterate.objectives.prompts import DEMO_HARMFUL, DEMO_HARMLESS, demo_prompts


def abliterate(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "abliterate", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=cwd,
    )


@pytest.fixture
def model_dir(saved_tiny):
    return saved_tiny("qwen3_moe")


def test_inspect_prints_every_writer_and_reader(model_dir):
    result = abliterate("inspect", "--model", model_dir)
    assert result.returncode == 0, result.stderr
    assert "model.layers.0.mlp.down_proj" in result.stdout
    assert "model.layers.3.mlp.experts.down_proj" in result.stdout and "4x64x32" in result.stdout
    assert "4 layers, 8 writers (attn 4, mlp 4), 12 routed experts" in result.stdout
    assert "model.layers.3.mlp.experts.gate_up_proj" in result.stdout and "model.layers.3.mlp.gate " not in result.stdout  # no router
    assert "4 layers, 17 readers (attn-read 12, mlp-read 5), 12 routed experts" in result.stdout


@pytest.mark.parametrize("method", ["mean", "probe"])
def test_directions_writes_unit_directions(model_dir, tmp_path, method):
    out = tmp_path / "directions.safetensors"
    result = abliterate("directions", "--model", model_dir, "--method", method, "--out", out, "--no-thinking",
                        "--harmful", _prompt_file(tmp_path, DEMO_HARMFUL), "--harmless", _prompt_file(tmp_path, DEMO_HARMLESS))
    assert result.returncode == 0, result.stderr
    tensors = load_file(out)
    assert tensors["directions"].shape == (4, 64)
    assert torch.allclose(tensors["directions"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert tensors["harmful_mean"].shape == (4, 64) and "harmful" not in tensors
    assert ("probe cross-validated accuracy" in result.stdout) == (method == "probe")


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "--model", "/no/such/model"], "error: model path /no/such/model does not exist"),
        (["inspect", "--model", "someorg/somemodel"], "error: someorg/somemodel is neither a local path nor a model available offline"),
        (["directions", "--model", "x", "--harmful", "/no/file.txt", "--harmless", "/no/file.txt", "--out", "o"],
         "error: prompt file /no/file.txt does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    result = abliterate(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--model", "m", "--base", "b", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["search", "--model", "m", "--max-new-tokens", "-3"], "argument --max-new-tokens: must be at least 1, got -3"),
        (["promote", "--storage", "sqlite:///x.db", "--study", "s", "--attempts", "two"],
         "argument --attempts: 'two' is not a whole number"),
        (["evaluate", "--model", "m"], "the following arguments are required: --base"),
        (["dashboard", "--port", "99999"], "argument --port: a port is at most 65535, got 99999"),  # was an OverflowError
    ],
)
def test_bad_arguments_are_one_line_before_anything_runs(args, message, tmp_path):
    result = abliterate(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"abliterate {args[0]}: error: {message} (see abliterate {args[0]} --help)"]
    assert not list(tmp_path.iterdir())  # no database, no checkpoint


def test_empty_prompt_file(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    result = abliterate("directions", "--model", model_dir, "--harmful", empty, "--harmless", empty, "--out", tmp_path / "o")
    assert result.returncode == 2 and "has no prompts" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["read-only", "file"])
def test_directions_to_a_place_that_cannot_be_written_is_one_line_before_the_capture(model_dir, tmp_path, where):
    """sysfs refuses new entries (to root too, so this holds in CI); a file stands where a folder must."""
    (tmp_path / "a-file").write_text("")
    out = {"read-only": "/sys/abliterate-test.safetensors", "file": tmp_path / "a-file" / "d.safetensors"}[where]
    result = abliterate("directions", "--model", model_dir, "--harmful", "demo-harmful", "--harmless", "demo-harmless", "--out", out)
    assert result.returncode == 2
    expected = {"read-only": "error: cannot write the directions to /sys/abliterate-test.safetensors: /sys is not writable (",
                "file": f"error: cannot write the directions to {out}: {tmp_path / 'a-file'} is a file, not a folder"}[where]
    assert result.stderr.startswith(expected) and len(result.stderr.splitlines()) == 1, result.stderr


def test_judge_check_on_a_binary_file_is_one_line(tmp_path):
    binary = tmp_path / "answers.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    result = abliterate("judge-check", "--labeled", binary)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {binary} is not UTF-8 text; give a .jsonl file of {{prompt, response, label}} rows"]


@pytest.mark.slow  # README's main command end to end (minutes of CPU); its parts have default tests of their own
def test_demo_runs_a_study_and_resumes(tmp_path):
    import optuna

    result = abliterate("demo", "--trials", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created study 'demo'" in result.stdout and "feasible Pareto front of 'demo'" in result.stdout
    assert "browse it: abliterate dashboard --storage sqlite:///abliterate-demo.db" in result.stdout
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'abliterate-demo.db'}")
    refusals = [t.values[0] for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs["feasible"]]
    assert len(study.trials) >= 12 and min(refusals) < 0.5  # the base refuses every harmful prompt
    # The front went through promotion with the shipped local suite, and a decision came back.
    assert "promotions of 'demo'" in result.stdout
    assert any(t.user_attrs.get("promotion") in ("accepted", "no_lift", "dropped") for t in study.trials)
    assert any((tmp_path / "abliterate-demo-checkpoints" / "demo").glob("trial-*/config.json"))
    assert any(t.user_attrs.get("specific") is True for t in study.trials)  # the controls ran in confirmation
    # This machine has a Docker engine (README's test command starts one): the whole path ran in containers.
    assert "promotions of 'demo-agent'" in result.stdout, result.stdout[-2000:]
    agent = optuna.load_study(study_name="demo-agent", storage=f"sqlite:///{tmp_path / 'abliterate-demo.db'}")
    assert any(t.user_attrs.get("promotion") == "accepted" for t in agent.trials)
    again = abliterate("demo", "--trials", "12", cwd=tmp_path)
    assert "resumed study 'demo'" in again.stdout and len(optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'abliterate-demo.db'}").trials) == len(study.trials)


@pytest.fixture(scope="module")
def refuser_edit(tmp_path_factory):
    """The shipped refuser and an abliterated checkpoint of it (direction of layer 2, all layers)."""
    from abliterate.ablation import Baker, Profile, export_checkpoint, find_writers, load_model
    from abliterate.ablation.directions import mean_difference
    from abliterate.ablation.residuals import capture_last_token
    from abliterate.objectives.prompts import read_prompts
    from abliterate.objectives.refuser import prompt_path, refuser_path

    loaded = load_model(str(refuser_path()), dtype="fp32", device="cpu")
    residuals = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(read_prompts(prompt_path(k, "extraction"))))
                 for k in ("harmful", "harmless")]
    direction = mean_difference(*residuals)[2]
    out = tmp_path_factory.mktemp("edit") / "edited"
    with Baker(find_writers(loaded.model)).baked_into(Edit(direction, Profile.uniform(1.0))):
        export_checkpoint(loaded, out)
    return refuser_path(), out


@pytest.mark.parametrize("proxy", ["markers", "first-token"])
def test_evaluate_json_shows_the_edit(refuser_edit, proxy):
    import json

    from abliterate.objectives.refuser import prompt_path

    base, edited = refuser_edit
    result = abliterate("evaluate", "--model", edited, "--base", base, "--proxy", proxy, "--json", "--max-new-tokens", "12",
                        "--harmful", prompt_path("harmful", "evaluation"), "--harmless", prompt_path("harmless", "evaluation"),
                        "--edgy", prompt_path("harmless", "confirmation"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["refusal"]["value"] < 0.5 * report["base_refusal"]["value"]
    assert 0 < report["kl"] < 1.0
    assert report["over_refusal"]["total"] > 0
    if proxy == "markers":
        assert report["refusal"]["samples"] and report["base_refusal"]["refusal_rate"] > 0.5


def test_evaluate_text_and_vocabulary_mismatch(refuser_edit, model_dir):
    base, edited = refuser_edit
    result = abliterate("evaluate", "--model", edited, "--base", base, "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert "KL (harmless, first token)" in result.stdout and "refusal rate" in result.stdout
    mismatch = abliterate("evaluate", "--model", model_dir, "--base", base)
    assert mismatch.returncode == 2 and "vocabulary" in mismatch.stderr


def _prompt_file(folder, name):
    path = folder / name
    path.write_text("\n".join(demo_prompts(name)))
    return path


def test_help_is_quick_and_imports_nothing_heavy():
    probe = ("import sys, contextlib, io\n"
             "from abliterate.search.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
             "    main(['search', '--help'])\n"
             "assert '(default: 100)' in out.getvalue(), out.getvalue()\n"
             "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'sqlalchemy', 'optuna') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_simple_errors_come_before_torch_is_imported(tmp_path):
    """A missing database or a wrong model path is told at once: importing torch and transformers
    takes seconds (about 30 on a loaded machine) and such an error needs neither."""
    commands = [["front"], ["export", "--trial", "0", "--out", "x"], ["worker"], ["dashboard"], ["controls", "--trial", "0"],
                ["dose", "--trial", "0"], ["analyze"]]
    wrong_path = [["search", "--model", "/no/such/model", "--storage", "missing.db"], ["inspect", "--model", "/no/such/model"],
                  ["directions", "--model", "/no/such/model", "--harmful", "demo-harmful", "--harmless", "demo-harmless", "--out", "d"],
                  ["evaluate", "--model", "/no/such/model", "--base", "/no/such/model"]]
    probe = ("import sys, contextlib, io\n"
             "from abliterate.search.cli import main\n"
             f"for command in {commands!r}:\n"
             "    with contextlib.redirect_stderr(io.StringIO()) as err:\n"
             "        status = main([*command, '--storage', 'missing.db'])\n"
             "    assert status == 2 and err.getvalue().startswith('error: no study database at'), (command, err.getvalue())\n"
             f"for command in {wrong_path!r}:\n"
             "    with contextlib.redirect_stderr(io.StringIO()) as err:\n"
             "        status = main(command)\n"
             "    assert status == 2 and err.getvalue().startswith('error: model path /no/such/model does not exist'), (command, err.getvalue())\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert not list(tmp_path.iterdir())


def test_cpu_advice_is_the_measured_cost_of_the_rest_and_how_to_cut_it():
    from abliterate.search.run import cpu_advice

    lines = cpu_advice([250.0, 310.0], 98, 2).splitlines()  # two trials of a 0.5B model took 280 s on average
    assert lines[0] == "  on the CPU a trial took 280 s (mean of 2): the 98 to go take about 3.8 h with 2 worker(s)"
    assert all(option in lines[1] for option in ("to spend less", "--trials", "--split", "--max-new-tokens", "--batch-size"))
    assert cpu_advice([5.0], 99, 1).splitlines() == ["  on the CPU a trial took 5.0 s (mean of 1): the 99 to go take about 8 min with 1 worker(s)"]


def test_cli_choices_are_the_library_names():
    from abliterate.ablation.directions import METHODS
    from abliterate.objectives import gate, judges, refusal
    from abliterate.search.cli import common

    assert common.METHODS == METHODS and common.PROXIES == refusal.PROXIES and common.JUDGES == judges.JUDGES
    assert common.RULES == gate.RULES and common.TESTS == gate.TESTS


def test_search_needs_only_a_model(no_registry_packages):
    from abliterate.objectives.prompts import DEFAULT_HARMFUL, DEFAULT_HARMLESS
    from abliterate.search.cli import parser
    from abliterate.search.cli.settings import resolve

    config = resolve(parser().parse_args(["search", "--model", "some/model"])).settings.study_config()
    assert config.harmful["evaluation"] == f"{DEFAULT_HARMFUL}[64:164]" and config.harmless["evaluation"] == f"{DEFAULT_HARMLESS}[64:164]"
    sizes = {key: len(prompts) for key, prompts in config.prompts().items()}  # loads and checks them disjoint
    assert sizes == {(side, purpose): n for side in ("harmful", "harmless")
                     for purpose, n in (("extraction", 64), ("evaluation", 100), ("confirmation", 100))}


def _render(renderable) -> list[str]:
    import io

    from rich.console import Console

    out = Console(width=80, file=io.StringIO(), color_system=None)
    out.print(renderable)
    return out.file.getvalue().splitlines()


def test_front_and_promotion_tables_fit_80_columns_one_line_a_row():
    from types import SimpleNamespace

    from abliterate.search.cli.views import front_table, summary_table

    def trials(different):
        return [SimpleNamespace(number=n, values=(refusal, kl), user_attrs={"refusal_rate": refusal, "degenerate_rate": 0.0208},
                                params={"method": "mean-projected", "scope": "per-layer"} | different.get(n, {}))
                for n, refusal, kl in ((1234, 0.938, 0.0000812), (26, 0.104, 0.000231), (2, 0.0, 0.00091))]

    base = {"refusal": 0.97, "refusal_rate": 0.96, "degenerate_rate": 0.01, "prompts": 100}
    # The intervention differs between trials (absent where a space searches none: ablate); the
    # method, the same in every row, is stated once under the table to keep it within 80 columns.
    lines = _render(front_table("a-study-with-a-long-name", trials({26: {"intervention": "heads"}, 2: {"scope": "global"}}), base))
    assert max(map(len, lines)) <= 80
    assert lines[1].split() == ["trial", "refusal", "KL", "refused", "degen", "scope", "intervention"]
    rows = [line.split() for line in lines if line.split()[:1] in (["2"], ["26"], ["1234"], ["base"])]
    assert rows == [["2", "0.000", "0.00091", "0%", "2%", "global", "ablate"],  # fewest refusals first
                    ["26", "0.104", "0.000231", "10%", "2%", "per-layer", "heads"],
                    ["1234", "0.938", "8.12e-05", "94%", "2%", "per-layer", "ablate"],
                    ["base", "0.970", "0", "96%", "1%"]]  # the unedited model, below the front
    assert "every trial: method mean-projected" in " ".join(lines)
    # Every edit column varies: all shown, every figure whole, at most a name cut short.
    lines = _render(front_table("s", trials({26: {"intervention": "amplify", "method": "mean"}, 2: {"scope": "global"}})))
    assert max(map(len, lines)) <= 80 and "every trial" not in " ".join(lines)
    assert lines[3].split()[:6] == ["2", "0.000", "0.00091", "0%", "2%", "mean-projected"]

    gate = {"reason": "no eligible task with raw p < 0.1 (best 0.222); " * 3, "tasks": [{"p": 0.2222, "p_holm": 1.0}], "pooled_p": 0.03125}
    promoted = [{"trial": 1234, "status": "no_lift", "confirmation": {"refusal": 0.0469, "base_refusal": 1.0}, "gate": gate},
                {"trial": 7, "status": "dropped", "confirmation": {"refusal": 0.9, "base_refusal": 1.0}}]
    lines = _render(summary_table(promoted, "a-study-with-a-long-name"))
    assert max(map(len, lines)) <= 80
    assert any(line.split() == ["1234", "no_lift", "0.047", "1.000", "0.222", "1", "0.0312", "1", "(1)", "not", "run"] for line in lines)


def test_the_report_says_what_the_specificity_controls_found():
    import io

    from rich.console import Console

    from abliterate.search.cli.views import print_report

    gate = {"reason": "trial passed", "tasks": [{"p": 0.01, "p_holm": 0.1}], "pooled_p": 0.01, "look": 12, "tested": 1068,
            "pooled_odds_ratio": None, "flags": []}
    confirmed = {"refusal": 0.05, "base_refusal": 1.0, "margin": 0.1, "beats_base": True}
    rows = [{"trial": 3, "status": "accepted", "gate": gate,
             "confirmation": confirmed | {"passed": True, "specific": True, "controls": {"specific": True, "spreads": 123.44, "count": 10}}},
            {"trial": 7, "status": "dropped",
             "confirmation": confirmed | {"passed": False, "specific": False, "controls": {"specific": False, "spreads": 1.2, "count": 10}}},
            {"trial": 8, "status": "skipped", "controls": {"specific": False, "spreads": -0.5, "count": 20}},
            {"trial": 9, "status": "sweeping", "confirmation": confirmed | {"passed": True, "specific": None,
                                                                             "controls": {"not_run": "--controls 0"}}},
            {"trial": 10, "status": "dropped", "confirmation": {"refusal": 0.95, "base_refusal": 1.0, "passed": False}}]
    out = Console(width=80, file=io.StringIO(), color_system=None)
    print_report(rows, "s", out, details=False)
    lines = out.file.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    cells = {line.split()[0]: line.split()[-1] for line in lines if line.split() and line.split()[0].isdigit()}
    assert cells == {"3": "yes", "7": "no", "8": "no", "9": "run", "10": "run"}  # "not run": nothing decided
    prose = " ".join(" ".join(lines).split())
    assert "trial 3: specificity controls: specific, its refusal drop 123.4 spreads from the band of 10 random directions" in prose
    assert ("trial 7: specificity controls: not specific, its refusal drop 1.2 spreads from the band of 10 random directions; "
            "dropped (--include-not-specific promotes it)") in prose
    assert ("trial 8: not specific, its refusal drop -0.5 spreads from the band of 20 random directions (abliterate controls); "
            "skipped, --include-not-specific promotes it") in prose
    assert "trial 9: specificity controls: not run (--controls 0)" in prose and "trial 10: specificity" not in prose


def test_promote_runs_the_promoter_s_default_controls():
    from abliterate.search.cli import parser
    from abliterate.search.promoter import DEFAULT_CONTROLS

    # The flag's default is a literal so that --help imports no torch; it must say what the promoter does.
    assert parser().parse_args(["promote"]).controls == DEFAULT_CONTROLS


def test_promote_refuses_the_leases_the_promoter_refuses():
    from abliterate.search import promotion_settings
    from abliterate.search.cli import promotion

    # Literals in the CLI, for the same reason as above.
    assert (promotion.MIN_LEASE_SECONDS, promotion.MAX_SECONDS) == (promotion_settings.MIN_LEASE_SECONDS, promotion_settings.MAX_SECONDS)
