"""Correctness on the device for bench/gpu.py: bit-exact bake + restore, and continuous batching
against each prompt decoded alone.

Batched arithmetic may round differently from one prompt alone, so in bfloat16 an answer can
take another token where the two best are nearly tied. Each mismatch is therefore reported with
the gap between the two best logits of the lone run at the first differing token, and the check
is repeated in float32 (a 4-layer model of the same width on a GPU), where only a logic error
makes answers differ.
"""

from __future__ import annotations

import json
import statistics
import time
import zlib
from pathlib import Path

import torch

from abliterate.ablation import Baker, Profile, find_writers
from abliterate.ablation.bake import Edit
from abliterate.objectives.generation import generate_greedy


def run_checks(bench, deadline: float) -> dict:
    plan, loaded = bench.plan, bench.loaded
    count, batch_size, tokens = plan.check
    # Plain prompts, not chat turns: a random model answers every turn that ends in the same
    # assistant header alike, so rows would end in step and never join a running batch.
    texts = bench.prompts["harmful"][plan.extraction:plan.extraction + count]
    out = {"bake_restore": bake_restore_exact(loaded.model)}
    models = [("the benchmark model", loaded.model)]
    if bench.device.startswith("cuda"):
        models.append(("float32, first 4 layers, same width", _float32_reduced(bench)))
    out["generation"] = []
    for name, model in models:
        if time.time() >= deadline:
            out["generation"].append({"model": name, "cut": "the part's deadline came first"})
            continue
        row = {"model": name, **generation_agreement(model, loaded.tokenizer, texts, tokens, batch_size)}
        if model is not loaded.model:
            row["bake_restore"] = bake_restore_exact(model)
        out["generation"].append(row)
    del models, model
    if bench.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def bake_restore_exact(model) -> dict:
    """Bakes a full-depth, norm-preserving edit, restores it, and compares every parameter bit for bit."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    hidden = model.get_input_embeddings().weight.shape[1]
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    baker = Baker(find_writers(model))
    report = baker.bake(Edit(direction, Profile.uniform(1.0), norm_preserving=True))
    changed = sum(not torch.equal(p, before[name]) for name, p in model.named_parameters())
    baker.restore()
    differing = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    return {"tensors_edited": report.tensors, "parameters_changed_by_the_bake": changed,
            "parameters_compared": len(before), "bit_exact_after_restore": not differing, "differing": differing[:5]}


@torch.no_grad()
def generation_agreement(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int) -> dict:
    """generate_greedy on all ``texts`` at once against ``model.generate`` on each alone.

    Rows must leave and join mid-answer, and random weights never end an answer, so answers
    are stopped the way a refusal verdict stops them: ``decided`` ends a row once its text reaches
    about half the median length of the lone answers. A random model often answers every prompt
    with one repeated character, so rows would reach one fixed length in step and never let a
    waiting prompt join alone: the length each row needs also depends on its first character.
    """
    ends = _end_tokens(model, tokenizer)
    alone = [_alone(model, tokenizer, text, max_new_tokens, ends) for text in texts]
    length = max(1, int(statistics.median(len(tokenizer.decode(ids, skip_special_tokens=True)) for ids, _ in alone)) // 2)
    spread = max(2, length // 2)

    def decided(text: str) -> bool:
        return bool(text) and len(text) >= length + zlib.crc32(text[0].encode()) % spread

    expected = [_stopped(tokenizer, ids, decided) for ids, _ in alone]
    calls = []
    hook = model.register_forward_pre_hook(lambda _m, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        together = generate_greedy(model, tokenizer, texts, max_new_tokens, batch_size, decided)
    finally:
        hook.remove()
    mismatches = []
    for row, (ours, theirs, (_, logits)) in enumerate(zip(together.token_ids, expected, alone)):
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            top = logits[at].float().topk(2) if at < len(logits) else None
            mismatches.append({"prompt": row, "first_difference_at": at, "lengths": [len(ours), len(theirs)],
                               "alone_top2_logit_gap": round(float(top.values[0] - top.values[1]), 5) if top is not None else None,
                               "batched_took_the_runner_up": bool(top is not None and at < len(ours) and ours[at] == int(top.indices[1]))})
    return {"prompts": len(texts), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "stopped_mid_answer": sum(len(ids) < max_new_tokens for ids in expected),
            "prefill_calls": sum(width > 1 for width in calls), "decoding_steps": sum(width == 1 for width in calls),
            "identical": len(texts) - len(mismatches), "mismatches": mismatches}


def _alone(model, tokenizer, text: str, max_new_tokens: int, ends: list[int]):
    """Greedy token ids and the raw logits of every step, from ``model.generate`` on one prompt."""
    encoded = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=ends,
                            pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
    ids = output.sequences[0, encoded["input_ids"].shape[1]:].tolist()
    return ids, [step[0] for step in output.logits]


def _stopped(tokenizer, ids: list[int], decided) -> list[int]:
    """``ids`` up to and including the first token after which ``decided`` holds for the text."""
    for n in range(1, len(ids) + 1):
        if decided(tokenizer.decode(ids[:n], skip_special_tokens=True)):
            return ids[:n]
    return ids


def _end_tokens(model, tokenizer) -> list[int]:
    """The tokens generate_greedy ends an answer at: the model's and the tokenizer's end of text."""
    configured = model.generation_config.eos_token_id
    ends = set(configured if isinstance(configured, (list, tuple)) else [configured]) | {tokenizer.eos_token_id}
    return sorted(int(token) for token in ends if token is not None)


def _float32_reduced(bench):
    """The benchmark's architecture cut to its first 4 layers (3 linear, 1 full attention), in float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = json.loads(Path(bench.loaded.source).read_text())  # the benchmark model's config file
    values.update(num_hidden_layers=4, layer_types=values["layer_types"][:4])
    torch.manual_seed(1)
    with torch.device(bench.device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**values), dtype=torch.float32).eval()
