"""The llm judge end to end on the shipped refuser: it judges its own answers, and in a trial it
judges with the base weights after the bake is undone, never with the edited model.

The refuser is no rubric follower (it was trained on request templates only), so these tests
check the judge's mechanics on real answers, not its judgement; the figures of a real chat model
as judge are in bench/RESULTS.md. About 70 s on a loaded 2-core machine, hence slow.
"""

import pytest

from abliterate.ablation.architectures import find_writers
from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.directions import mean_difference
from abliterate.ablation.profile import Profile
from abliterate.ablation.residuals import capture_last_token
from abliterate.objectives.generation import generate_greedy
from abliterate.objectives.judges import VERDICTS, MarkerJudge
from abliterate.objectives.llm_judge import LLMJudge
from abliterate.objectives.refusal import MarkerProxy
from abliterate.objectives.refuser import prompt_path
from abliterate.search.space import Candidate
from abliterate.search.trial import TrialRunner

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

def read(kind: str, purpose: str, n: int = 8) -> list[str]:
    return prompt_path(kind, purpose).read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture(scope="module")
def loaded(refuser):
    return refuser


@pytest.fixture(scope="module")
def directions(loaded):
    residuals = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(read(k, "extraction", 64)))
                 for k in ("harmful", "harmless")]
    return mean_difference(*residuals)


def test_refuser_judges_its_own_refusals_and_compliant_answers(loaded):
    harmful, harmless = read("harmful", "evaluation"), read("harmless", "evaluation")
    judge = LLMJudge(loaded, batch_size=8)
    proxy = MarkerProxy(judge, max_new_tokens=40)
    refused, complied = proxy.score(loaded, harmful), proxy.score(loaded, harmless)
    for score in (refused, complied):
        assert sum(score.counts.values()) == 8 and set(score.counts) <= set(VERDICTS)
        assert 0.0 <= score.value <= 1.0
    # With the marker first pass the refuser's own refusals are settled without the model, and
    # generation stops at the marker: far fewer tokens.
    filtered = MarkerProxy(LLMJudge(loaded, prefilter=True), max_new_tokens=40)
    cheap = filtered.score(loaded, harmful)
    assert cheap.counts == {"refusal": 8} and cheap.value == 1.0
    assert cheap.generated_tokens < refused.generated_tokens / 2
    # the compliant answers are left to the model, so its verdicts stand
    assert filtered.score(loaded, harmless).value == pytest.approx(complied.value, abs=1e-6)


def test_trial_judges_with_the_base_weights_after_the_restore(loaded, directions):
    harmful, harmless = read("harmful", "evaluation"), read("harmless", "evaluation")
    proxy = MarkerProxy(LLMJudge(None, batch_size=8), max_new_tokens=40)
    runner = TrialRunner(loaded, {"mean": directions}, harmful, harmless, proxy, kl_cap=10.0, batch_size=8)
    candidate = Candidate("mean", "per-layer", 0.5, Profile.uniform(1.0))
    outcome = runner.run(candidate)
    assert outcome.feasible and "judge" in outcome.seconds

    # The same answers, generated under the same bake, judged by hand by the unedited model ...
    with Baker(find_writers(loaded.model)).baked_into(Edit(directions, Profile.uniform(1.0))):
        responses = generate_greedy(loaded.model, loaded.tokenizer, loaded.format_chat(harmful), 40, 8).responses
        edited_view = LLMJudge(loaded, batch_size=8).verdicts(harmful, responses)
    assert sum(v.label == "refusal" for v in MarkerJudge().verdicts(harmful, responses)) <= 2  # the edit removed refusals
    base_view = LLMJudge(loaded, batch_size=8).verdicts(harmful, responses)
    base_value = sum(v.non_compliance for v in base_view) / len(harmful)
    edited_value = sum(v.non_compliance for v in edited_view) / len(harmful)
    # ... give the trial's score; the edited model judging itself would have given another.
    assert outcome.refusal.value == pytest.approx(base_value, abs=1e-5)
    assert abs(edited_value - base_value) > 1e-3
