import pytest
import torch

from abliterate.ablation.loading import LoadedModel
from abliterate.objectives import generation
from abliterate.objectives.generation import generate_greedy
from fixtures.tiny import MULTIMODAL_TYPES, TEXT_TYPES

# Mixed lengths, so batches are left-padded; the longer chat-formatted prompts exceed the tiny
# models' sliding window (16), so sliding-window caches are exercised too.
PROMPTS = [
    "Hi",
    "How do I bake bread at home with simple ingredients?",
    "Write a short poem about the sea and the wind, then explain how a bicycle gear works",
    "Tell me",
]
TOKENS = 12
# More prompts than a batch holds, so waiting prompts join running batches.
MORE_PROMPTS = PROMPTS + [
    "Why is the sky blue?",
    "List three fruits",
    "Explain, step by step and with one worked example, how compound interest grows savings over ten years",
]
# plain, sliding window, MoE, hybrid linear attention (text and multimodal), Gemma
SAMPLE_TYPES = ("llama", "qwen3_moe", "gpt_oss", "qwen3_next", "qwen3_5", "gemma2")


def _setup(tiny, model_type, prompts=PROMPTS):
    model, tokenizer = tiny(model_type)
    return model, tokenizer, LoadedModel(model, tokenizer, "tiny").format_chat(prompts)


def _hf_generate(model, tokenizer, texts, max_new_tokens):
    """New tokens from ``model.generate`` (greedy) on one left-padded batch, padding removed."""
    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    answers = []
    for row in output[:, encoded["input_ids"].shape[1]:].tolist():
        ends = [i for i, token in enumerate(row) if token == model.generation_config.eos_token_id]
        answers.append(row[: ends[0] + 1] if ends else row)
    return answers


def _text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


def _stopping_texts(tokenizer, answers, shortest=2, rows=2):
    """Texts that stop up to ``rows`` answers early and no others, for a ``decided`` to look for.

    Each is the text of an answer's prefix (``shortest`` tokens or more, shorter than the whole
    answer) that no other answer's prefix decodes to. Tiny random models often open several
    answers alike, so the rows it can stop are found rather than fixed. Returns {row: text}.
    """
    prefixes = [{_text(tokenizer, ids[:j]) for j in range(1, len(ids) + 1)} for ids in answers]
    chosen = {}
    for row, ids in enumerate(answers[:-1]):  # the last answer always runs to its end
        others = set().union(*(p for i, p in enumerate(prefixes) if i != row))
        texts = (_text(tokenizer, ids[:n]) for n in range(shortest, len(ids)))
        text = next((t for t in texts if t not in others), None)
        if text is not None and len(chosen) < rows:
            chosen[row] = text
    assert chosen, "no answer can be told apart by its opening"
    return chosen


def _recorded(model, tokenizer, texts, **options):
    """generate_greedy(TOKENS) and its forward calls as (kind, rows, attention-mask width)."""
    calls = []

    def record(module, args, kwargs):
        rows, columns = kwargs["input_ids"].shape
        calls.append(("step" if columns == 1 else "prefill", rows, kwargs["attention_mask"].shape[1]))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        return generate_greedy(model, tokenizer, texts, TOKENS, **options), calls
    finally:
        hook.remove()


def _until_decided(tokenizer, answers, targets):
    """Each answer cut after its first token at which its text is one of ``targets``."""
    return [ids[: next((j for j in range(1, len(ids) + 1) if _text(tokenizer, ids[:j]) in targets), len(ids))]
            for ids in answers]


def _schedule(lengths, batch_size):
    """The forward calls continuous batching makes for answers of ``lengths``, as (kind, rows).

    The policy, restated: prompts join in order, when nothing runs or when at least a quarter of the
    batch (or every waiting prompt) fits; a join is one prefill call, which also gives each joining
    row its first token; otherwise one decoding step gives every running row its next token.
    """
    refill_at = max(1, batch_size // 4)
    waiting, running, calls = list(range(len(lengths))), {}, []
    while waiting or running:
        free = batch_size - len(running)
        if waiting and (not running or free >= min(refill_at, len(waiting))):
            joining, waiting = waiting[:free], waiting[free:]
            calls.append(("prefill", len(joining)))
            running.update(dict.fromkeys(joining, 0))
        else:
            joining = list(running)
            calls.append(("step", len(running)))
        running.update({p: running[p] + 1 for p in joining})
        running = {p: n for p, n in running.items() if n < lengths[p]}
    return calls


@pytest.mark.parametrize("model_type", TEXT_TYPES + MULTIMODAL_TYPES)
def test_matches_hf_generate_alone_and_batched(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type)
    ours = generate_greedy(model, tokenizer, texts, TOKENS, batch_size=3)  # batches of 3 and 1
    alone = [_hf_generate(model, tokenizer, [text], TOKENS)[0] for text in texts]
    assert ours.token_ids == alone
    assert ours.token_ids == _hf_generate(model, tokenizer, texts, TOKENS)
    assert ours.responses == tokenizer.batch_decode(alone, skip_special_tokens=True)


@pytest.mark.parametrize("model_type", SAMPLE_TYPES)
def test_decided_rows_stop_at_the_first_deciding_token(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type)
    full = generate_greedy(model, tokenizer, texts, TOKENS)
    chosen = _stopping_texts(tokenizer, full.token_ids, shortest=3)
    targets = set(chosen.values())
    seen = []

    def decided(text):
        seen.append(text)
        return text in targets

    stopped = generate_greedy(model, tokenizer, texts, TOKENS, decided=decided)
    expected = []
    for ids in full.token_ids:
        stop = next((j for j in range(1, len(ids) + 1) if _text(tokenizer, ids[:j]) in targets), len(ids))
        expected.append(ids[:stop])
    assert stopped.token_ids == expected
    for row, ids in enumerate(full.token_ids):
        assert (len(expected[row]) < len(ids)) if row in chosen else (expected[row] == ids)
    assert stopped.responses == tokenizer.batch_decode(expected, skip_special_tokens=True)
    # only the new tokens of running rows are judged
    prefixes = {_text(tokenizer, ids[:j]) for ids in expected for j in range(1, len(ids) + 1)}
    assert set(seen) <= prefixes


@pytest.mark.parametrize("model_type", SAMPLE_TYPES)
def test_end_of_text_ends_a_row_and_is_kept(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type)
    full = generate_greedy(model, tokenizer, texts, TOKENS).token_ids
    # Tiny random models seldom say <|im_end|>; make the token row 1 says fifth the end of text.
    end = full[1][4]
    model.generation_config.eos_token_id = end
    ours = generate_greedy(model, tokenizer, texts, TOKENS)
    expected = [ids[: ids.index(end) + 1] if end in ids else ids for ids in full]
    assert ours.token_ids == expected and ours.token_ids[1][-1] == end
    assert ours.token_ids == [_hf_generate(model, tokenizer, [text], TOKENS)[0] for text in texts]


@pytest.mark.parametrize("model_type", ("llama", "qwen3_next", "gemma3_text"))
def test_finished_rows_leave_the_batch(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type)
    full = generate_greedy(model, tokenizer, texts, TOKENS)
    targets = set(_stopping_texts(tokenizer, full.token_ids).values())
    stopped, calls = _recorded(model, tokenizer, texts, decided=lambda text: text in targets)
    sizes = [rows for _, rows, _ in calls]
    # forward i produces token i + 1, so it runs exactly the rows whose answers are longer than i
    assert sizes == [sum(n > i for n in stopped.new_tokens) for i in range(TOKENS)]
    assert sizes[0] == 4 and sizes[-1] < 4


def test_unprunable_cache_keeps_rows_and_gives_the_same_answers(tiny, monkeypatch):
    model, tokenizer, texts = _setup(tiny, "qwen3_next")
    full = generate_greedy(model, tokenizer, texts, TOKENS)
    targets = set(_stopping_texts(tokenizer, full.token_ids, rows=1).values())
    pruned = generate_greedy(model, tokenizer, texts, TOKENS, decided=lambda text: text in targets)
    monkeypatch.setattr(generation, "_can_prune", lambda cache: False)
    kept, calls = _recorded(model, tokenizer, texts, decided=lambda text: text in targets)
    sizes = [rows for _, rows, _ in calls]
    assert kept == pruned and sizes == [4] * TOKENS


def test_can_prune_knows_the_cache_layers(tiny):
    model, tokenizer, texts = _setup(tiny, "qwen3_5")
    encoded = tokenizer(texts[:2], return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    with torch.no_grad():
        cache = model(**encoded, use_cache=True).past_key_values
    assert generation._can_prune(cache)
    assert not generation._can_prune(((torch.zeros(1), torch.zeros(1)),))  # a legacy tuple cache


def test_no_prompts_or_no_tokens(tiny):
    model, tokenizer, texts = _setup(tiny, "llama")
    assert generate_greedy(model, tokenizer, [], TOKENS).token_ids == []
    none = generate_greedy(model, tokenizer, texts, 0)
    assert none.token_ids == [[]] * len(texts) and none.responses == [""] * len(texts)


@pytest.mark.parametrize("model_type", TEXT_TYPES + MULTIMODAL_TYPES)
def test_waiting_prompts_join_running_batches_and_answer_as_alone(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type, MORE_PROMPTS)
    alone = [_hf_generate(model, tokenizer, [text], TOKENS)[0] for text in texts]
    targets = set(_stopping_texts(tokenizer, alone, rows=3).values())
    expected = _until_decided(tokenizer, alone, targets)
    ours, calls = _recorded(model, tokenizer, texts, batch_size=3, decided=lambda text: text in targets)
    assert ours.token_ids == expected
    assert ours.responses == tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert [(kind, rows) for kind, rows, _ in calls] == _schedule([len(ids) for ids in expected], 3)


@pytest.mark.parametrize("model_type", ("llama", "gemma2", "qwen3_next"))
def test_refill_off_runs_batch_after_batch(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type, MORE_PROMPTS)
    full = generate_greedy(model, tokenizer, texts, TOKENS, batch_size=3)
    targets = set(_stopping_texts(tokenizer, full.token_ids, rows=3).values())
    fixed, calls = _recorded(model, tokenizer, texts, batch_size=3, decided=lambda text: text in targets, refill=False)
    expected = _until_decided(tokenizer, full.token_ids, targets)
    assert fixed.token_ids == expected
    # a batch of prompts ends before the next starts: one prefill and its longest answer's steps
    prefills = [rows for kind, rows, _ in calls if kind == "prefill"]
    steps = sum(kind == "step" for kind, _, _ in calls)
    assert prefills == [3, 3, 1]
    assert steps == sum(max(map(len, expected[i:i + 3])) - 1 for i in range(0, len(texts), 3))
    assert steps > sum(kind == "step" for kind, _ in _schedule([len(ids) for ids in expected], 3))


@pytest.mark.parametrize("model_type", ("llama", "gemma2", "qwen3_next"))
def test_columns_no_row_attends_to_are_dropped(tiny, model_type):
    # The longest prompt leaves first; the mask (and every full-attention cache layer) then
    # narrows to the longest prompt still running.
    model, tokenizer, texts = _setup(tiny, model_type)
    order = sorted(range(len(texts)), key=lambda i: -len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    texts = [texts[i] for i in order]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    full = generate_greedy(model, tokenizer, texts, TOKENS).token_ids
    chosen = _stopping_texts(tokenizer, full, shortest=2, rows=len(texts))
    assert 0 in chosen, "the longest prompt's answer cannot be told apart"
    target = chosen[0]
    expected = _until_decided(tokenizer, full, {target})
    stopped, calls = _recorded(model, tokenizer, texts, decided=lambda text: text == target)
    assert stopped.token_ids == expected and len(expected[0]) < TOKENS
    widths = [width for kind, _, width in calls if kind == "step"]
    # decoding step i feeds token i + 1 of every row whose answer is longer than i + 1
    assert widths == [max(lengths[p] for p in range(len(texts)) if len(expected[p]) > i + 1) + i + 1
                      for i in range(len(widths))]
    assert widths[len(expected[0]) - 1] < widths[len(expected[0]) - 2] + 1


def test_joins_wait_for_a_quarter_of_the_batch(tiny):
    # batch 8: prompts join two or more at a time while more than one waits
    model, tokenizer, texts = _setup(tiny, "llama", MORE_PROMPTS * 2)
    full = generate_greedy(model, tokenizer, texts, TOKENS, batch_size=8)
    targets = set(_stopping_texts(tokenizer, full.token_ids[:7], rows=3).values())
    expected = _until_decided(tokenizer, full.token_ids, targets)
    ours, calls = _recorded(model, tokenizer, texts, batch_size=8, decided=lambda text: text in targets)
    assert ours.token_ids == expected
    kinds = [(kind, rows) for kind, rows, _ in calls]
    assert kinds == _schedule([len(ids) for ids in expected], 8)
    joins = [rows for kind, rows in kinds[1:] if kind == "prefill"]
    assert joins and all(rows >= 2 for rows in joins[:-1])


@pytest.mark.parametrize("model_type", ("llama", "qwen3_next"))
def test_stop_ends_the_pass_with_the_answers_so_far(tiny, model_type):
    model, tokenizer, texts = _setup(tiny, model_type, MORE_PROMPTS)
    full = generate_greedy(model, tokenizer, texts, TOKENS, batch_size=4)
    asked = []

    def stop():
        asked.append(len(asked))
        return len(asked) == 5  # after the fifth forward call

    stopped, calls = _recorded(model, tokenizer, texts, batch_size=4, stop=stop)
    assert not stopped.complete and full.complete and len(calls) == 5 == len(asked)
    for partial, whole in zip(stopped.token_ids, full.token_ids):
        assert partial == whole[: len(partial)]  # the same answers, cut where the pass stopped
    assert sum(stopped.new_tokens) < sum(full.new_tokens)
    never = generate_greedy(model, tokenizer, texts, TOKENS, batch_size=4, stop=lambda: False)
    assert never.complete and never.token_ids == full.token_ids
