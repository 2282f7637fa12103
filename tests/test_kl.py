import math

import pytest
import torch

from abliterate.ablation import Baker, Profile, find_writers
from abliterate.ablation.bake import Edit
from abliterate.ablation.errors import AblationError
from abliterate.ablation.loading import LoadedModel
from abliterate.objectives.kl import KLScorer, kl_divergence, response_logprobs
from fixtures.tiny import MULTIMODAL_TYPES, TEXT_TYPES

PROMPTS = ["How do I bake bread?", "Hi", "Write a short poem about the sea and the wind please"]


def test_kl_hand_computed():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.25, 0.5])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert kl_divergence(p.log(), q.log()).item() == pytest.approx(expected)
    assert kl_divergence(p.log(), p.log()).item() == 0.0
    batch = kl_divergence(torch.stack([p, q]).log(), torch.stack([q, q]).log())
    assert batch.shape == (2,) and batch[1] == 0.0


@pytest.fixture
def loaded(tiny):
    model, tokenizer = tiny("qwen3")
    return LoadedModel(model, tokenizer, "tiny")


def test_first_token_logprobs_match_unbatched_forward(loaded):
    texts = loaded.format_chat(PROMPTS)
    batched = response_logprobs(loaded.model, loaded.tokenizer, texts, batch_size=3)
    assert batched.shape == (3, 1, len(loaded.tokenizer))
    for row, text in enumerate(texts):
        ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logits = loaded.model(**ids).logits[0, -1]
        assert torch.allclose(batched[row, 0], torch.log_softmax(logits, -1), atol=1e-5)


def test_scorer_against_hand_computation_and_after_bake(loaded):
    texts = loaded.format_chat(PROMPTS)
    scorer = KLScorer(loaded.model, loaded.tokenizer, texts, k=1, batch_size=2)
    assert scorer.score() == pytest.approx(0.0, abs=1e-6)
    baker = Baker(find_writers(loaded.model))
    with baker.baked_into(Edit(torch.randn(64), Profile.uniform(1.0))):
        kl = scorer.score()
        per_prompt = []
        for text, base in zip(texts, scorer.base_logprobs):
            ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                edited = torch.log_softmax(loaded.model(**ids).logits[0, -1], -1)
            per_prompt.append(float((base[0].exp() * (base[0] - edited)).sum()))
    # The head runs on the picked positions only, a different GEMM shape than the unbatched
    # forward, so log-probs agree to float32 noise (~5e-7), a few 1e-4 of a KL this small.
    assert kl > 1e-4 and kl == pytest.approx(sum(per_prompt) / len(per_prompt), rel=1e-3)
    assert scorer.score() == pytest.approx(0.0, abs=1e-6)  # restored


def test_rows_come_back_in_the_given_order(loaded):
    # Batches are formed from prompts sorted by length; every row must still land in its place,
    # with its own continuation.
    texts = loaded.format_chat(PROMPTS + ["Tell me a story about a dragon who learns to cook", "Why?"])
    continuations = [[7 + row, 30 + row] for row in range(len(texts))]
    alone = torch.cat([response_logprobs(loaded.model, loaded.tokenizer, [text], [forced])
                       for text, forced in zip(texts, continuations)])
    batched = response_logprobs(loaded.model, loaded.tokenizer, texts, continuations, batch_size=2)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_k_tokens_teacher_forced_on_base_greedy_answer(loaded, tmp_path):
    texts = loaded.format_chat(PROMPTS[:2])
    scorer = KLScorer(loaded.model, loaded.tokenizer, texts, k=3)
    assert scorer.base_logprobs.shape == (2, 3, len(loaded.tokenizer))
    # the base model's greedy answer is the argmax at each forced position
    greedy = scorer.base_logprobs.argmax(-1)[:, :2]
    assert torch.equal(greedy, scorer.continuations)
    scorer.save(tmp_path / "base.safetensors")
    again = KLScorer(loaded.model, loaded.tokenizer, texts, k=3, base=KLScorer.load_base(tmp_path / "base.safetensors"))
    assert torch.equal(again.base_logprobs, scorer.base_logprobs)
    with pytest.raises(AblationError, match="recompute"):
        KLScorer(loaded.model, loaded.tokenizer, texts, k=2, base=KLScorer.load_base(tmp_path / "base.safetensors"))


def _full_logits_logprobs(model, tokenizer, texts, continuations):
    """The reference: logits at every position of a right-padded batch, then the picked ones."""
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    sequences = [p + c for p, c in zip(prompts, continuations)]
    width = max(map(len, sequences))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    positions = torch.stack([torch.arange(len(p) - 1, len(p) + len(c)) for p, c in zip(prompts, continuations)])
    return torch.log_softmax(logits[torch.arange(len(texts)).unsqueeze(1), positions].float(), dim=-1)


@pytest.mark.parametrize("model_type", TEXT_TYPES + MULTIMODAL_TYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_head_at_picked_positions_equals_full_logits(tiny, model_type, k):
    model, tokenizer = tiny(model_type)
    if model_type == "gemma2":
        assert model.config.final_logit_softcapping  # the model's own softcapping still applies
    texts = LoadedModel(model, tokenizer, "tiny").format_chat(PROMPTS)
    continuations = [[5 + row, 40 + row][: k - 1] for row in range(len(texts))] if k > 1 else None
    picked = response_logprobs(model, tokenizer, texts, continuations, batch_size=len(texts))
    reference = _full_logits_logprobs(model, tokenizer, texts, continuations or [[]] * len(texts))
    assert picked.shape == (len(texts), k, len(tokenizer))
    torch.testing.assert_close(picked, reference, atol=1e-6, rtol=0)


def test_a_model_that_ignores_per_row_positions_is_an_error(loaded):
    class EveryPosition(torch.nn.Module):  # an older-style head: logits_to_keep dropped
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, logits_to_keep=None, **kwargs):
            return self.model(**kwargs)

    with pytest.raises(AblationError, match="logits_to_keep"):
        response_logprobs(EveryPosition(loaded.model), loaded.tokenizer, loaded.format_chat(PROMPTS))
