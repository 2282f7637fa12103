import math

import pytest
import torch

from ablation import Baker, Profile, find_writers
from ablation.errors import AblationError
from ablation.loading import LoadedModel
from objectives.kl import KLScorer, kl_divergence, response_logprobs

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
    with baker.baked_into(torch.randn(64), Profile.uniform(1.0)):
        kl = scorer.score()
        per_prompt = []
        for text, base in zip(texts, scorer.base_logprobs):
            ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                edited = torch.log_softmax(loaded.model(**ids).logits[0, -1], -1)
            per_prompt.append(float((base[0].exp() * (base[0] - edited)).sum()))
    assert kl > 1e-4 and kl == pytest.approx(sum(per_prompt) / len(per_prompt), rel=1e-4)
    assert scorer.score() == pytest.approx(0.0, abs=1e-6)  # restored


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
