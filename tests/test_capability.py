"""The capability check: the shipped questions, how an answer is read, and evaluate's report."""

import json
import subprocess
import sys

import pytest
import torch

from abliterate.ablation.errors import AblationError
from abliterate.objectives.capability import LETTERS, CapabilityQuestions, answer_lengths, ask, chosen, letter_tokens, load_questions
from abliterate.objectives.kl import response_logprobs
from abliterate.objectives.refusal import ChatFormat

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_shipped_questions_have_four_distinct_choices_and_the_right_letter_spread_evenly():
    questions = load_questions()
    assert len(questions) == 32
    assert all(len(set(q.choices)) == 4 and 0 <= q.answer < 4 for q in questions)
    assert [sum(q.answer == i for q in questions) for i in range(4)] == [8, 8, 8, 8]  # always "A" scores 25 %, no more
    assert questions[0].prompt == "What is 7 times 8?\n\nA. 56\nB. 54\nC. 58\nD. 64\n\nAnswer with the letter of the right choice only."


def test_the_answer_is_the_letter_ranked_highest_among_the_four():
    logprobs = torch.full((3, 10), -5.0)
    logprobs[0, 9] = 0.0  # a token that is no letter never counts
    logprobs[0, 4] = -1.0
    logprobs[1, 2], logprobs[1, 6] = -0.5, -0.5  # equals: the first
    logprobs[2, 7] = -0.1
    assert chosen(logprobs, [2, 4, 6, 7]) == [1, 0, 3]


def test_letters_that_share_a_first_token_are_refused():
    class Same:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [5, ord(text)]}

    with pytest.raises(AblationError, match="cannot tell its answers apart"):
        letter_tokens(Same())


def test_ask_reads_the_next_token_after_each_question_and_lengths_are_the_greedy_answers(refuser):
    questions = load_questions()[:8]
    chat = ChatFormat()
    answers = ask(refuser, questions, chat, batch_size=4)
    texts = chat.apply(refuser, [q.prompt for q in questions])
    expected = response_logprobs(refuser.model, refuser.tokenizer, texts, batch_size=3)[:, 0][:, letter_tokens(refuser.tokenizer)]
    assert answers.chosen == expected.argmax(-1).tolist()
    assert answers.correct == [c == q.answer for c, q in zip(answers.chosen, questions)]
    assert answers.accuracy == sum(answers.correct) / 8
    lengths = answer_lengths(refuser, ["Say hello.", "Name a colour."], chat, max_new_tokens=6, batch_size=2)
    assert all(1 <= n <= 6 for n in lengths) and len(LETTERS) == 4


def test_a_trial_asks_from_its_first_edited_layer_up_with_the_full_pass_s_answers(refuser):
    """The capability objective replays the unedited layers below the edit (ablation.prefix): the
    same log-probs, so the same answers, as the whole pass; and the base's are recorded once."""
    from abliterate.ablation.architectures import find_writers
    from abliterate.ablation.bake import Baker, Edit
    from abliterate.ablation.profile import Profile

    chat = ChatFormat()
    cached = CapabilityQuestions(refuser, chat, batch_size=8)
    assert cached.prefix.nbytes > 0 and cached.base == ask(refuser, load_questions(), chat, batch_size=8)
    hidden = refuser.model.config.hidden_size
    direction = torch.nn.functional.normalize(torch.randn(hidden, generator=torch.Generator().manual_seed(0)), dim=0)
    directions = direction.expand(refuser.model.config.num_hidden_layers, hidden).clone()
    with Baker(find_writers(refuser.model)).baked_into(Edit(directions, Profile.uniform(3.0, first_layer=2))) as report:
        edited, full = cached.answers(report.layers[0]), ask(refuser, load_questions(), chat, batch_size=8)
        texts = chat.apply(refuser, [q.prompt for q in load_questions()])
        replayed = response_logprobs(refuser.model, refuser.tokenizer, texts, batch_size=8,
                                     prefix=lambda batch, ids: cached.prefix.starting_at(report.layers[0], batch, ids))
        assert torch.equal(replayed, response_logprobs(refuser.model, refuser.tokenizer, texts, batch_size=8))
    assert report.layers[0] == 2 and edited == full


def test_evaluate_reports_the_capability_check_beside_the_base(saved_tiny, tmp_path):
    model = saved_tiny("qwen3")
    result = subprocess.run([sys.executable, "-m", "abliterate", "evaluate", "--model", str(model), "--base", str(model),
                             "--max-new-tokens", "2", "--capability", "5", "--harmless", "demo-harmless[:4]",
                             "--harmful", "demo-harmful[:2]", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    capability = json.loads(result.stdout)["capability"]
    assert capability["questions"] == 32 and capability["prompts"] == 4 and capability["max_new_tokens"] == 5
    # The model against itself: the same answers, the same lengths.
    assert capability["accuracy"] == capability["base_accuracy"] and capability["median_length"] == capability["base_median_length"]
    plain = subprocess.run([sys.executable, "-m", "abliterate", "evaluate", "--model", str(model), "--base", str(model),
                            "--max-new-tokens", "2", "--capability", "5", "--harmless", "demo-harmless[:4]",
                            "--harmful", "demo-harmful[:2]"], capture_output=True, text=True, cwd=tmp_path)
    assert f"capability: {capability['accuracy']:.0%} of 32 questions right (base {capability['base_accuracy']:.0%})" in plain.stdout
