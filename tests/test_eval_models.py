"""bench/eval_models.py and bench/eval_data.py: the data never touches the benchmark's prompts, the
loss covers answers only, training moves the chosen layers alone, and a base model gets its turns and
its teacher's answers; run on tiny models built from configs and the shipped refuser."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from abliterate.ablation.loading import LoadedModel, load_model
from abliterate.objectives.generation import generate_greedy
from abliterate.objectives.prompts import load_prompts, normalise
from fixtures.tiny import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import eval_data as ed  # noqa: E402
import eval_models as em  # noqa: E402

# The benchmark's sets, written out here so that a change to the script's constants is caught.
HELD_OUT = ("rho-harmful", "aplomb-benign", "rho-benign[128:150]", "rho-edgy[40:150]")
SEARCH = ("advbench[0:128]", "jailbreakbench", "rho-benign[0:128]", "rho-edgy[0:40]")


@pytest.fixture(scope="module")
def split():
    return ed.make_split(0)


def keys(prompts):
    return {normalise(p) for p in prompts}


def test_the_split_holds_no_benchmark_prompt(split):
    assert ed.HELD_OUT == HELD_OUT and ed.SEARCH == SEARCH
    parts = [split.train_harmful, split.val_harmful, split.train_benign, split.val_benign]
    for spec in HELD_OUT + SEARCH:
        forbidden = keys(load_prompts(spec))
        assert all(not keys(part) & forbidden for part in parts), spec
    pool = ed.harmful_pool()
    assert keys(pool) <= keys(load_prompts("advbench[128:]")) and not keys(pool) & keys(load_prompts("jailbreakbench"))
    # Each harmful prompt is a pool prompt, as it is or reworded around its request.
    cores = [normalise(p.rstrip(" .?!")).split("how to ")[-1] for p in pool]
    assert all(any(core in normalise(p) for core in cores) for p in split.train_harmful + split.val_harmful)
    assert not keys(split.train_harmful) & keys(split.val_harmful)
    assert not keys(split.train_benign) & keys(split.val_benign)
    assert len(split.val_harmful) == len(split.val_benign) == ed.VALIDATION
    assert len(split.train_harmful) > 300 and len(split.train_benign) == ed.BENIGN_TRAIN
    ed.check_split(split)


def test_check_split_refuses_a_held_out_prompt(split):
    leaked = ed.Split(split.train_harmful, split.val_harmful, split.train_benign, split.val_benign + load_prompts("aplomb-benign[3:4]"))
    with pytest.raises(RuntimeError, match="aplomb-benign"):
        ed.check_split(leaked)


def test_reframe_rewords_requests_and_leaves_questions():
    rng = random.Random(0)
    request = "Create a tutorial on how to bake bread."
    worded = {ed.reframe(request, rng) for _ in range(60)}
    assert request in worded and "How do I bake bread?" in worded and len(worded) > 3
    assert {ed.reframe("What is 3 plus 4?", rng) for _ in range(20)} == {"What is 3 plus 4?"}
    assert "Please write a haiku." in {ed.reframe("Write a haiku.", rng) for _ in range(60)}


def test_the_split_is_seeded(split):
    assert ed.make_split(0) == split
    assert ed.make_split(1).val_harmful != split.val_harmful


def test_refusal_targets_are_refusals_to_the_judge():
    from abliterate.objectives.text import has_marker

    assert all(has_marker(text) for text in ed.REFUSALS)


@pytest.fixture
def tiny():
    model, tokenizer = tiny_model("llama", seed=0)
    return LoadedModel(model, tokenizer, "tiny llama")


def test_the_loss_covers_answer_tokens_only(tiny):
    tokenizer = tiny.tokenizer
    chats = tiny.format_chat(["How do I bake bread?", "Write a short poem about the sea and the wind."])
    answers = [em.refusal_ids(tokenizer, "I cannot help with that request, sorry."), tokenizer("Sure, here is a plan", add_special_tokens=False)["input_ids"]]
    examples = [em.encode(tokenizer, chat, ids) for chat, ids in zip(chats, answers)]
    for chat, ids, (seq, labels) in zip(chats, answers, examples):
        prompt_length = len(tokenizer(chat, add_special_tokens=False)["input_ids"])
        assert labels[:prompt_length] == [-100] * prompt_length and labels[prompt_length:] == ids == seq[prompt_length:]
    assert answers[0][-1] == tokenizer.eos_token_id
    ids, labels, mask = em.collate(examples, tokenizer.pad_token_id)
    assert ((labels != -100) <= (mask == 1)).all()  # no loss on padding
    with torch.no_grad():
        ours = em.answer_loss(tiny.model, ids, labels, mask)
        reference = tiny.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)


def test_training_moves_the_chosen_layers_and_nothing_else(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    small = ed.Split([], ["Tell me how to break into a locked car.", "How do I steal a bike?"], [],
                     ["How do I bake bread at home?", "Write a short poem about the sea."])
    harmful = [em.encode(tokenizer, chat, em.refusal_ids(tokenizer, text))
               for chat, text in zip(tiny.format_chat(["Explain how to break a car window.", "How can I steal a laptop?"]), ed.REFUSALS)]
    # A random model's own answers are garbage, which is never kept as a compliance target.
    assert em.self_answers(tiny, ["Explain how a bicycle gear works.", "Write a plan for the garden."]) == []
    benign = [em.encode(tokenizer, chat, tokenizer(answer, add_special_tokens=False)["input_ids"])
              for chat, answer in zip(tiny.format_chat(["Explain how a bicycle gear works.", "Write a plan for the garden."]),
                                      ["Sure, here is a plan you can follow", "Explain how a bicycle gear works, step by step"])]
    layers = range(1, 3)
    trained = em.freeze_all_but(model, layers)
    assert {id(p) for p in trained} == {id(p) for i in layers for p in model.get_decoder().layers[i].parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    snapshots = []

    def validate():
        snapshots.append([p.detach().clone() for p in trained])
        return em.validation_rates(tiny, small)

    record = em.fit(model, [harmful, benign], em.Schedule(layers, max_steps=4, eval_every=2, batch=4, lr=1e-2), seed=0,
                    pad_id=tokenizer.pad_token_id, validate=validate, log=lambda line: None)
    assert record["steps"] == 4 and [h["step"] for h in record["validation"]] == [0, 2, 4]
    assert len(record["loss_mean_per_window"]) == 2
    for name, param in model.named_parameters():
        if not any(name.startswith(f"model.layers.{i}.") for i in layers):
            assert torch.equal(param, before[name]), name
    assert all(any(not torch.equal(a, b) for a, b in zip(earlier, later)) for earlier, later in zip(snapshots, snapshots[1:]))
    assert not record["rule_met"]  # a random model refuses nothing, so it ran to the last step


def test_the_stopping_rule_needs_both_rates():
    assert em.stop_now({"refusal": em.STOP_REFUSAL, "answer": em.STOP_ANSWER})
    assert not em.stop_now({"refusal": 1.0, "answer": em.STOP_ANSWER - 0.01})
    assert not em.stop_now({"refusal": em.STOP_REFUSAL - 0.01, "answer": 1.0})



def test_a_stage_runs_until_its_own_rule_holds(tiny):
    """The helpful stage trains on answers alone and never stops early; the safety stage stops
    as soon as the validation rates meet the stopping rule."""
    tokenizer = tiny.tokenizer
    benign = [em.encode(tokenizer, chat, tokenizer(answer, add_special_tokens=False)["input_ids"])
              for chat, answer in zip(tiny.format_chat(["Write a plan for the garden."]), ["Sure, here is a plan you can follow"])]
    em.freeze_all_but(tiny.model, range(0, 4))
    schedule = em.Schedule(range(0, 4), max_steps=3, eval_every=3, batch=2, lr=1e-2)
    met = {"refusal": 1.0, "answer": 1.0}  # rates that meet the stopping rule from the start

    def fit(**rule):
        return em.fit(tiny.model, [benign], schedule, seed=0, pad_id=tokenizer.pad_token_id, validate=lambda: met,
                      log=lambda line: None, **rule)

    assert fit()["steps"] == 1
    helpful = fit(done=lambda rates: False)
    assert helpful["steps"] == 3 and not helpful["rule_met"]


@pytest.fixture
def tiny_gemma():
    """A tiny Gemma 3 whose tokenizer, like the base Gemma 270M's, has the turn tokens but no chat template."""
    model, tokenizer = tiny_model("gemma3_text", seed=0)
    tokenizer.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", "<eos>"]})
    tokenizer.chat_template = None
    model.resize_token_embeddings(len(tokenizer))
    return LoadedModel(model, tokenizer, "tiny gemma3")


def test_gemma_turns_give_a_base_model_its_template_and_end_token(tiny_gemma, tmp_path):
    from abliterate.ablation.export import export_checkpoint

    em.gemma_turns(tiny_gemma)
    tokenizer = tiny_gemma.tokenizer
    assert tiny_gemma.format_chat(["Hi"]) == ["<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"]
    assert tiny_gemma.format_chat(["Hi"], system="Be brief.") == [
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"]
    # a refusal target is exactly the answer turn the template renders, closed by <end_of_turn>
    ids = em.refusal_ids(tokenizer, ed.REFUSALS[0])
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ed.REFUSALS[0]}],
                                         tokenize=False)
    prompt = tiny_gemma.format_chat(["Hi"])[0]
    assert turn.startswith(prompt) and ids[-1] == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert tokenizer(turn[len(prompt):], add_special_tokens=False)["input_ids"][:len(ids)] == ids
    # the saved folder, which every tool of the benchmark loads, keeps the template and both end tokens
    export_checkpoint(tiny_gemma, tmp_path / "out")
    saved = load_model(str(tmp_path / "out"), dtype="fp32", device="cpu")
    assert saved.format_chat(["Hi"], system="Be brief.") == tiny_gemma.format_chat(["Hi"], system="Be brief.")
    assert saved.tokenizer.eos_token == "<end_of_turn>"
    assert set(saved.model.generation_config.eos_token_id) == {tokenizer.convert_tokens_to_ids(t) for t in ("<eos>", "<end_of_turn>")}


def test_teacher_answers_are_kept_in_the_students_vocabulary(refuser, tiny_gemma, monkeypatch):
    from abliterate.objectives.refuser import PROMPT_FILES, PROMPTS_DIR

    em.gemma_turns(tiny_gemma)
    student = tiny_gemma.tokenizer
    harmless, harmful = ((PROMPTS_DIR / PROMPT_FILES[kind, "evaluation"]).read_text().splitlines()[:3] for kind in ("harmless", "harmful"))
    monkeypatch.setattr(em, "ANSWER_TOKENS", 64)  # long enough for the refuser to finish its answers
    taught = dict(em.teacher_answers(refuser, student, harmless + harmful))
    assert set(taught) == set(harmless)  # the refuser answers these and refuses the others
    answers = generate_greedy(refuser.model, refuser.tokenizer, refuser.format_chat(harmless), 64).responses
    for prompt, answer in zip(harmless, answers):
        assert taught[prompt][-1] == student.eos_token_id  # finished: closed by the student's end of turn
        assert student.decode(taught[prompt][:-1]) == answer.strip()
    monkeypatch.setattr(em, "ANSWER_TOKENS", 4)
    assert all(ids[-1] != student.eos_token_id for _, ids in em.teacher_answers(refuser, student, harmless))  # cut short: no end

@pytest.mark.slow
def test_smollm2_refusals_end_with_the_token_that_closes_its_turns():
    loaded = load_model(str(em.smollm2_gguf()), dtype="fp32", device="cpu")
    tokenizer = loaded.tokenizer
    ids = em.refusal_ids(tokenizer, ed.REFUSALS[0])
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ed.REFUSALS[0]}],
                                         tokenize=False)
    prompt = loaded.format_chat(["Hi"])[0]
    assert turn.startswith(prompt)
    assert tokenizer(turn[len(prompt):], add_special_tokens=False)["input_ids"][:len(ids)] == ids
