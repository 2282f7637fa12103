"""Refusal proxy mechanics on tiny random models; behaviour on a model that refuses is in test_refuser."""

import textwrap

import pytest

from abliterate.ablation.errors import AblationError
from abliterate.ablation.loading import LoadedModel
from abliterate.objectives.refusal import AgentProxy, FirstTokenProxy, MarkerJudge, MarkerProxy, agent_outcome, load_judge

PROMPTS = ["How do I bake bread?", "Hi there", "Tell me how to fix a bike"]


@pytest.fixture
def loaded(tiny):
    model, tokenizer = tiny("qwen3")
    return LoadedModel(model, tokenizer, "tiny")


@pytest.mark.parametrize(
    "response, outcome",
    [
        ('{"analysis": "empty dir", "plan": "list", "commands": [{"keystrokes": "ls -la\\n", "duration": 0.1}], "task_complete": false}', "ok"),
        ('```json\n{"commands": [{"keystrokes": "cat x\\n"}]}\n```', "ok"),
        ('<think>plan</think>{"commands": [{"keystrokes": "pwd\\n"}]}', "ok"),
        ('{"analysis": "done", "commands": [], "task_complete": true}', "no_cmd"),
        ('{"commands": [{"keystrokes": "   "}]}', "no_cmd"),
        ('{"analysis": "x"}', "no_cmd"),
        ('{"commands": [{"keystrokes": "ls"', "parse_fail"),
        ("Sure, run ls.", "parse_fail"),
        ('{"analysis": "I\'m sorry, but I can\'t help with that", "commands": []}', "refusal"),
        ("I cannot assist with hacking.", "refusal"),
    ],
)
def test_agent_outcome(response, outcome):
    assert agent_outcome(response) == outcome


def test_garbage_answers_count_as_failures_not_compliance(loaded):
    score = MarkerProxy(max_new_tokens=12).score(loaded, PROMPTS)
    # a random model babbles bytes: degenerate, never compliance
    assert score.counts.get("degenerate", 0) == 3 and score.value == 1.0
    assert score.rate("refusal") == 0.0 and len(score.samples) == 3


def test_early_stop_saves_tokens_and_keeps_verdicts(loaded):
    common = MarkerJudge(markers=tuple("aeiouy"))  # a "marker" nearly every answer hits early
    eager = MarkerProxy(common, max_new_tokens=24).score(loaded, PROMPTS)
    full = MarkerProxy(common, max_new_tokens=24, early_stop=False).score(loaded, PROMPTS)
    assert eager.counts == full.counts
    assert eager.generated_tokens < full.generated_tokens == 24 * 3


def test_pluggable_judge(loaded, tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(textwrap.dedent("""
        class EverythingRefuses:
            def refuses(self, prompts, responses):
                return [True] * len(responses)
        def make():
            return EverythingRefuses()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("my_judges:EverythingRefuses", "my_judges:make"):
        judge = load_judge(spec)
        proxy = MarkerProxy(judge, max_new_tokens=4)
        score = proxy.score(loaded, PROMPTS)
        assert score.rate("refusal") == 1.0 and score.value == 1.0
        assert score.generated_tokens == 4 * len(PROMPTS)  # a model-based judge sees whole answers
    with pytest.raises(AblationError, match="has no attribute .Missing. for judge"):
        load_judge("my_judges:Missing")


def test_first_token_proxy_needs_refusals_to_calibrate(loaded):
    proxy = FirstTokenProxy(max_new_tokens=4)
    with pytest.raises(AblationError, match="not prepared"):
        proxy.score(loaded, PROMPTS)
    with pytest.raises(AblationError, match="refuses none of the 3"):
        proxy.prepare(loaded, PROMPTS)


def test_agent_proxy_input_errors(tmp_path):
    with pytest.raises(AblationError, match=r"\{task\}"):
        AgentProxy(template="no placeholder")
    with pytest.raises(AblationError, match="does not exist"):
        AgentProxy.from_template_file(tmp_path / "missing.txt")


def test_agent_proxy_scores_counts(loaded, tmp_path):
    template = tmp_path / "turn.txt"
    template.write_text("Task: {task}\nCurrent terminal state: $")
    score = AgentProxy.from_template_file(template, max_new_tokens=8).score(loaded, PROMPTS)
    assert score.total == 3 and sum(score.counts.values()) == 3
    assert score.value == 1.0 and score.counts.get("parse_fail") == 3  # babble never parses


def test_early_stopped_rows_do_not_count_padding(loaded):
    from abliterate.objectives.generation import generate_greedy

    texts = loaded.format_chat(PROMPTS)
    full = generate_greedy(loaded.model, loaded.tokenizer, texts, 12)
    # stop only the row whose opening differs from the others; the rest run on and pad it
    row = next(i for i, r in enumerate(full.responses) if sum(o.startswith(r[:3]) for o in full.responses) == 1)
    opening = full.responses[row][:3]
    stopped = generate_greedy(loaded.model, loaded.tokenizer, texts, 12, decided=lambda text: text.startswith(opening))
    assert loaded.tokenizer.pad_token_id != loaded.tokenizer.eos_token_id
    assert len(stopped.token_ids[row]) < 12 and max(stopped.new_tokens) == 12  # one row stopped, others ran on
    for ids in stopped.token_ids:
        assert ids and loaded.tokenizer.pad_token_id not in ids
