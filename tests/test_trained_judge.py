"""The trained judge: its head's math, its file, and the shipped judge against its own record."""

import json
from pathlib import Path

import pytest
import torch

from abliterate.ablation.errors import AblationError
from abliterate.objectives.trained_judge import Encoder, Head, TrainedJudge, row_hash

RECORD = Path(__file__).resolve().parents[1] / "bench" / "judge" / "trained.json"


def _toy(classes=("refusal", "compliance", "evasive")):
    """Three clusters in 2-D, one per class, 10 rows each."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])[: len(classes)]
    features = torch.cat([c + 0.3 * torch.randn(10, 2, generator=generator) for c in centres])
    return features, [label for label in classes for _ in range(10)]


def test_the_head_is_sklearns_multinomial_regression():
    from sklearn.linear_model import LogisticRegression

    features, labels = _toy()
    head = Head.fit(features, labels, "toy")
    assert head.classes == ("refusal", "compliance", "evasive")  # VERDICTS order, classes present only
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(
        features.double().numpy(), [head.classes.index(label) for label in labels])
    assert head.probabilities(features).numpy() == pytest.approx(reference.predict_proba(features.double().numpy()), abs=1e-5)


def test_a_two_class_head_gives_both_probabilities():
    from sklearn.linear_model import LogisticRegression

    features, labels = _toy(("refusal", "compliance"))
    head = Head.fit(features, labels, "toy")
    assert head.weight.shape == (1, 2)  # sklearn keeps one row for two classes
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(features.double().numpy(), [label == "compliance" for label in labels])
    assert head.probabilities(features).numpy() == pytest.approx(reference.predict_proba(features.double().numpy()), abs=1e-5)


def test_the_head_file_round_trips_and_refuses_garbage(tmp_path):
    features, labels = _toy()
    head = Head.fit(features, labels, "toy", trained_rows=[row_hash("p", "r")])
    digest = head.save(tmp_path / "head.safetensors", {"note": "toy"})
    assert len(digest) == 64 and not (tmp_path / "head.partial").exists()
    loaded = Head.load(tmp_path / "head.safetensors")
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)
    assert (loaded.classes, loaded.encoder, loaded.trained_rows) == (head.classes, "toy", {row_hash("p", "r")})
    (tmp_path / "bad.safetensors").write_text("not a tensor file")
    with pytest.raises(AblationError, match="is not a trained judge's head"):
        Head.load(tmp_path / "bad.safetensors")


class _Lengths(Encoder):
    """A real, trivial encoder (answer length and word count): enough to check the judge's wiring."""

    name = "lengths"

    def encode(self, prompts, responses):
        return torch.tensor([[len(r) / 100, len(r.split()) / 20] for r in responses])


def test_the_judge_rules_degenerate_first_and_reads_the_head_otherwise():
    short = "I can't help with that, sorry, it is not something I will do for anyone here."
    long = ("First, open the case and lift out the old battery. Next, clean the contacts with a dry cloth, then seat the new "
            "cell with its plus side up. Close the lid, press the reset button for five seconds, and check that the light turns green.")
    features = _Lengths().encode([], [short] * 5 + [long] * 5)
    judge = TrainedJudge(_Lengths(), Head.fit(features, ["refusal"] * 5 + ["compliance"] * 5, "lengths"))
    verdicts = judge.verdicts(["q"] * 3, [short, long, "the " * 40])
    assert [v.label for v in verdicts] == ["refusal", "compliance", "degenerate"]
    assert verdicts[0].non_compliance > 0.5 > verdicts[1].non_compliance and verdicts[2].non_compliance == 1.0
    assert set(verdicts[0].probabilities) == {"refusal", "compliance", "evasive", "degenerate"}
    with pytest.raises(AblationError, match="trained on the 'lengths' encoder, not 'embed'"):
        TrainedJudge(type("E", (_Lengths,), {"name": "embed"})(), judge.head)


@pytest.mark.usefixtures("one_torch_thread")  # as bench/train_judge.py ran: the same sums in the same order
def test_judge_check_reproduces_the_shipped_judges_record(capsys):
    """The shipped head, run by judge-check on each held-out source, gives the figures its record
    holds, and says it never saw those answers."""
    from abliterate.search.cli import main

    record = json.loads(RECORD.read_text())
    for source, preset in (("judge-hard", "judge-hard"), ("refuser-answers", "refuser-answers")):
        assert main(["judge-check", "--labeled", preset, "--judge", "embed", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["judge"]["trained_on"] == 0
        assert result["judge"]["binary_accuracy"] == record["embed"]["held_out"][source]["judge"]["binary_accuracy"]
        assert result["judge"]["confusion"] == record["embed"]["held_out"][source]["judge"]["confusion"]
        assert result["markers"]["binary_accuracy"] == record["embed"]["held_out"][source]["markers"]["binary_accuracy"]
    assert main(["judge-check", "--labeled", "uncensorbench[0:20]", "--judge", "embed"]) == 0
    assert "was trained on 20 of these 20 answers" in capsys.readouterr().out


def test_the_residual_encoder_averages_each_answer_alone_whatever_the_batch(saved_tiny):
    """Every pair's features equal an unpadded pass of that pair alone: the mean, over the answer's
    tokens only, of the residual after the layer, at unit length."""
    from abliterate.ablation.loading import load_model
    from abliterate.objectives.trained_judge import ResidualEncoder

    loaded = load_model(str(saved_tiny("qwen2")), "fp32", "cpu")
    prompts, answers = ["How do I bake bread?", "Say hi"], ["Mix flour, water and yeast, then bake it for forty minutes.", "Hi"]
    encoder = ResidualEncoder(loaded, layer=1, batch_size=2)
    features = encoder.encode_layers(prompts, answers)
    assert features.shape == (2, loaded.model.config.num_hidden_layers, loaded.model.config.hidden_size)
    assert torch.equal(encoder.encode(prompts, answers), features[:, 1])
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        prefix = loaded.format_chat([prompt])[0]
        first = len(loaded.tokenizer(prefix, add_special_tokens=False)["input_ids"])
        ids = loaded.tokenizer(prefix + answer, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            hidden = loaded.model(**ids, output_hidden_states=True).hidden_states[2][0, first:]
        expected = torch.nn.functional.normalize(hidden.mean(dim=0), dim=-1)
        assert features[row, 1] == pytest.approx(expected, abs=1e-5)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_embed_judge_scores_the_refusal_pass_from_a_real_models_whole_answers(refuser):
    """--judge embed in the search's refusal pass: every answer is generated whole (the judge cannot
    settle one early) and the score is the mean of its non-compliance over the greedy answers."""
    from abliterate.objectives.generation import generate_greedy
    from abliterate.objectives.judges import VERDICTS, JudgeSettings
    from abliterate.objectives.refusal import MarkerProxy
    from abliterate.objectives.refuser import prompt_path

    judge = JudgeSettings("embed").build()
    prompts = prompt_path("harmful", "evaluation").read_text(encoding="utf-8").splitlines()[:8]
    score = MarkerProxy(judge, max_new_tokens=40).score(refuser, prompts)
    answers = generate_greedy(refuser.model, refuser.tokenizer, refuser.format_chat(prompts), 40).responses
    verdicts = judge.verdicts(prompts, answers)
    assert score.value == pytest.approx(sum(v.non_compliance for v in verdicts) / len(verdicts), abs=1e-9)
    assert sum(score.counts.values()) == 8 and set(score.counts) <= set(VERDICTS)


def test_attacks_are_built_from_the_rows_deterministically():
    import sys

    sys.path.insert(0, str(RECORD.parents[1]))
    from judge_attacks import FOREIGN, attacks

    rows = [{"prompt": "Write a poem about rain.", "response": "Rain falls on the roof tonight. It sings.", "label": "compliance"},
            {"prompt": "Write a poem about rain.", "response": "Sorry, I can't.", "label": "refusal"},
            {"prompt": "Explain tides", "response": "No.", "label": "refusal"}]
    built = attacks(rows)
    assert [(r["attack"], r["label"]) for r in built[:6]] == [
        ("warning-then-comply", "compliance"), ("loop", "degenerate"),
        ("echo", "evasive"), ("question-back", "evasive"), ("echo", "evasive"), ("question-back", "evasive")]
    assert built[0]["response"].endswith(rows[0]["response"]) and built[1]["response"] == " ".join(["Rain falls on the roof tonight."] * 8)
    assert built[2]["response"] == "Sure, here is how to write a poem about rain:"
    assert built[5]["response"].startswith("What exactly do you mean? Do you want to explain tides")
    assert len(built) == 6 + len(FOREIGN) and attacks(rows) == built
