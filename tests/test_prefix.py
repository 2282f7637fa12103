"""The prefix cache: a pass that starts at the first edited layer gives the full pass's scores bit
for bit on every supported architecture, and the layers below it do not run."""

import pytest
import torch

from abliterate.ablation.architectures import decoder_layers, find_writers
from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.errors import AblationError
from abliterate.ablation.prefix import PrefixCache, first_edited_layer
from abliterate.ablation.profile import Profile
from abliterate.objectives.kl import KLScorer
from fixtures.tiny import LAYERS, MULTIMODAL_TYPES, TEXT_TYPES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HARMLESS = ["How do I bake bread at home?", "Write a short poem about the sea.",
            "Explain how a bicycle gear works, step by step.", "Sure, a plan for the garden?", "Hello"]


def chat(tokenizer, prompts):
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def edit_from(model, layer: int, seed: int = 3) -> Edit:
    hidden = model.config.get_text_config().hidden_size
    directions = torch.randn(LAYERS, hidden, generator=torch.Generator().manual_seed(seed))
    return Edit(directions, Profile.uniform(1.2, first_layer=layer))


def calls_of(module: torch.nn.Module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("model_type", TEXT_TYPES + MULTIMODAL_TYPES)
def test_a_cached_pass_gives_the_full_pass_bit_for_bit_and_skips_the_layers_below(tiny, model_type):
    model, tokenizer = tiny(model_type)
    texts = chat(tokenizer, HARMLESS)
    # Two tokens teacher-forced on the base answer, in batches of two of unequal lengths.
    cached = KLScorer(model, tokenizer, texts, k=2, batch_size=2)
    full = KLScorer(model, tokenizer, texts, k=2, batch_size=2, prefix_cache=False)
    assert cached.prefix.batches == 3 and cached.prefix.nbytes > 0 and full.prefix is None
    baker = Baker(find_writers(model))
    bottom = next(iter(decoder_layers(model)[0].children()))  # a submodule the stand-in never calls
    for layer in range(LAYERS):
        with baker.baked_into(edit_from(model, layer)) as report:
            first = first_edited_layer(report.layers, LAYERS)
            assert first == layer
            calls = calls_of(bottom)
            score = cached.score(first)
            assert (len(calls) == 0) == (layer > 0)
            assert score == full.score() and score > 0  # equal floats, not close ones
    assert cached.score(LAYERS) == full.score() == 0.0  # unedited: every layer from the cache


def test_a_cache_recorded_from_saved_base_log_probs_replays_the_same(tiny, tmp_path):
    model, tokenizer = tiny("qwen3")
    texts = chat(tokenizer, HARMLESS)
    first = KLScorer(model, tokenizer, texts, k=3, batch_size=2, prefix_cache=False)
    first.save(tmp_path / "base.safetensors")
    loaded = KLScorer(model, tokenizer, texts, k=3, batch_size=2, base=KLScorer.load_base(tmp_path / "base.safetensors"))
    with Baker(find_writers(model)).baked_into(edit_from(model, 2)):
        assert loaded.score(2) == first.score()


def test_an_edit_below_the_start_is_what_the_contract_rules_out(tiny):
    # The caller's side of the contract: were a layer below the start edited, the replay would
    # hide it. The trial runner starts at the bake report's lowest layer for this reason.
    model, tokenizer = tiny("llama")
    scorer = KLScorer(model, tokenizer, chat(tokenizer, HARMLESS), batch_size=2)
    with Baker(find_writers(model)).baked_into(edit_from(model, 1)):
        assert scorer.score(2) != scorer.score(1)


def test_a_replay_of_tokens_never_recorded_is_refused(tiny):
    model, tokenizer = tiny("llama")
    cache = PrefixCache(model)
    ids = tokenizer(["Hello there"], return_tensors="pt")["input_ids"]
    with cache.recording(0, ids), torch.no_grad():
        model(input_ids=ids)
    with pytest.raises(AblationError, match="no recording of batch 1"), cache.starting_at(2, 1, ids):
        pass
    with pytest.raises(AblationError, match="no recording of batch 0"), cache.starting_at(2, 0, ids[:, :1]):
        pass
    with cache.starting_at(2, 0, ids):  # the stand-ins are gone afterwards
        pass
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))


def test_first_edited_layer():
    assert first_edited_layer((3, 5, 9), 12) == 3
    assert first_edited_layer((), 12) == 12
