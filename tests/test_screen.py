"""The generation-free refusal screen: the forced tokens' log-probs are the model's own, the shipped
refuser's refusals are screened, an edit that removes refusal lowers the score, and the prefix
cache gives the same score from the first edited layer up."""

import math

import pytest
import torch

from abliterate.ablation.architectures import find_writers
from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.directions import mean_difference
from abliterate.ablation.errors import AblationError
from abliterate.ablation.profile import Profile
from abliterate.ablation.residuals import capture_last_token
from abliterate.objectives.kl import forced_logprobs
from abliterate.objectives.refusal import MarkerProxy
from abliterate.objectives.refuser import prompt_path
from abliterate.objectives.screen import RefusalScreen, refusal_likelihood
from abliterate.search.space import Candidate
from abliterate.search.trial import TrialRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read(kind: str, purpose: str, n: int) -> list[str]:
    return prompt_path(kind, purpose).read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture(scope="module")
def directions(refuser):
    residuals = [capture_last_token(refuser.model, refuser.tokenizer, refuser.format_chat(read(k, "extraction", 32)))
                 for k in ("harmful", "harmless")]
    return mean_difference(*residuals)


def test_refusal_likelihood_is_the_geometric_mean_probability():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.5)], [0.0, math.log(0.25)]])
    assert refusal_likelihood(logprobs).tolist() == pytest.approx([0.5, 0.5])


def test_forced_log_probs_are_those_of_one_plain_forward_per_text(tiny):
    model, tokenizer = tiny("qwen3")
    texts = ["How do I bake bread?", "Tell me how to break into a locked car without the key."]
    forced = [[5, 9, 11], [7, 2, 30]]
    batched = forced_logprobs(model, tokenizer, texts, forced, batch_size=2)  # right-padded together
    for row, (text, tokens) in enumerate(zip(texts, forced)):
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0]
        expected = torch.log_softmax(logits.float(), -1)[len(prompt) - 1: len(prompt) - 1 + len(tokens)]
        assert torch.allclose(batched[row], expected.gather(-1, torch.tensor(tokens)[:, None])[:, 0], atol=1e-5)
    with pytest.raises(AblationError, match="same length of at least 1"):
        forced_logprobs(model, tokenizer, texts, [[1, 2], [3]])


def test_the_refusers_refusals_are_screened_and_an_edit_lowers_the_score(refuser, directions):
    harmful = read("harmful", "evaluation", 12)
    texts = refuser.format_chat(harmful)
    screen = RefusalScreen(refuser, texts, max_new_tokens=24, batch_size=4)
    judged = MarkerProxy(max_new_tokens=24, early_stop=False).score(refuser, harmful)
    assert screen.screened == judged.counts["refusal"] > 0
    assert screen.score().value == pytest.approx(screen.base.value, rel=1e-6)
    full = RefusalScreen(refuser, texts, max_new_tokens=24, batch_size=4, prefix_cache=False)
    with Baker(find_writers(refuser.model)).baked_into(Edit(directions, Profile.uniform(1.0, first_layer=2))) as report:
        edited = screen.score(report.layers[0])
        assert edited.value == full.score().value  # the cached pass, bit for bit
        refused_now = MarkerProxy(max_new_tokens=24, early_stop=False).score(refuser, harmful).counts.get("refusal", 0)
    # (this tiny model is unsure of every token: greedy ones have a probability of about 0.02)
    assert refused_now < judged.counts["refusal"] and edited.value < screen.base.value * 0.8


def test_a_model_that_refuses_nothing_has_nothing_to_screen(refuser):
    harmless = read("harmless", "evaluation", 6)
    assert "refusal" not in MarkerProxy(max_new_tokens=24).score(refuser, harmless).counts
    with pytest.raises(AblationError, match="refuses none of the 6 harmful prompts"):
        RefusalScreen(refuser, refuser.format_chat(harmless), max_new_tokens=24)


def test_a_trial_records_the_screen_beside_the_judged_count(refuser, directions):
    harmful, harmless = read("harmful", "evaluation", 8), read("harmless", "evaluation", 8)
    runner = TrialRunner(refuser, {"mean": directions}, harmful, harmless, MarkerProxy(max_new_tokens=24, batch_size=8),
                         kl_cap=10.0, batch_size=8, max_new_tokens=24, screen=True)
    outcome = runner.run(Candidate("mean", "per-layer", 0.5, Profile.uniform(1.0)))
    assert outcome.feasible and outcome.screen is not None and 0.0 <= outcome.screen < runner.screen.base.value
    assert "screen" in outcome.seconds
    plain = TrialRunner(refuser, {"mean": directions}, harmful, harmless, MarkerProxy(max_new_tokens=24, batch_size=8),
                        kl_cap=10.0, batch_size=8, max_new_tokens=24)
    assert plain.screen is None and plain.run(Candidate("mean", "per-layer", 0.5, Profile.uniform(1.0))).screen is None


@pytest.mark.parametrize("mode", ["record", "prune"])
def test_a_study_records_the_screen_and_prunes_by_it_only_when_asked(tmp_path, mode):
    """The demo's study with the screen: every feasible trial has its screen and the measure that
    settled it; under prune, trials with no less KL than a fully scored trial's and a screen higher
    by the margin skip their refusal pass, and the front holds only fully scored trials."""
    from dataclasses import replace

    import optuna
    from optuna.trial import TrialState

    from abliterate.search.demo import demo_config
    from abliterate.search.front import feasible_front
    from abliterate.search.study import create_or_resume
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    config = replace(demo_config(16), screen=mode)
    study_margin = config.screen_margin
    assert study_margin == 0.03  # the default: a ruling needs a screen lower by the margin, a share of its own
    create_or_resume(open_storage(url), "s", config)
    said = []
    run_worker(url, "s", device="cpu", log=said.append)
    study = optuna.load_study(study_name="s", storage=url)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 16 and any("screen: the base model's refusals of" in line for line in said)
    feasible = [t for t in trials if t.user_attrs["feasible"]]
    assert feasible and all("screen" in t.user_attrs and "seconds_cpu" in t.user_attrs for t in feasible)
    decided = {t.number: t.user_attrs["decided_by"] for t in trials}
    complete = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    assert all(decided[n] in ("judged", "kl") for n in complete)
    screened = [t for t in trials if decided[t.number] == "screen"]
    assert bool(screened) == (mode == "prune")
    for trial in screened:
        by = complete[trial.user_attrs["dominated_by"]].user_attrs
        assert trial.state == TrialState.PRUNED
        assert by["kl"] <= trial.user_attrs["kl"] and by["screen"] * (1 + study_margin) <= trial.user_attrs["screen"]
        assert "seconds_refusal" not in trial.user_attrs and "refusal_at_least" not in trial.user_attrs
    assert all(t.state == TrialState.COMPLETE for t in feasible_front(study))


@pytest.mark.parametrize("margin", ["1.5", "-0.1", "nan"])
def test_a_screen_margin_outside_0_to_1_is_refused_before_anything_is_written(tmp_path, capsys, margin):
    from abliterate.search.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["search", "--model", "unused", "--screen", "prune", "--screen-margin", margin, "--workers", "0",
              "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and lines == [f"abliterate search: error: argument --screen-margin: must be between 0 and 1, "
                                                f"got {margin} (see abliterate search --help)"]
    assert not (tmp_path / "x.db").exists()
