"""The built-in interventions (see :mod:`ablation.registry` for the contract).

* ``ablate``: remove the direction from every writer the profile weights;
* ``amplify``: remove it, then amplify the compliance direction c ([L, H] payload ``compliance``:
  ``mean(complied) - mean(refused)`` over the harmful residuals, labelled by the base model's answers);
* ``heads``: remove it from the attention heads that carry the most refusal only (payload
  ``heads:input`` [L, I], the mean attention-output input harmful minus harmless, and
  ``heads:layout`` [L, 2], each layer's (heads, head_dim)); MLP writers as ``ablate`` does;
* ``read``: remove it from every writer as ``ablate`` does, and also where layers read the
  residual stream (:mod:`ablation.readers`), weighted by a kernel of its own (``read_peak``,
  ``read_peak_weight``, ``read_falloff``; a tent falling to zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from abliterate.ablation.errors import AblationError
from abliterate.ablation.registry import Intervention, PayloadContext, interventions

if TYPE_CHECKING:
    import torch

    from abliterate.ablation.architectures import Writer
    from abliterate.ablation.bake import Edit
    from abliterate.ablation.candidate import Candidate

# Below this many prompts on either side (complied, refused) the compliance direction is the
# negated refusal direction instead: a mean of two residuals is mostly noise.
MIN_CLASS = 3
# |cos(r, c)| above this: amplifying c may put back much of what removing r took out.
ALIGNED = 0.5


def needed(payload: Mapping[str, torch.Tensor], name: str, candidate: Candidate) -> torch.Tensor:
    """``payload[name]``, or a one-line error saying the payload was computed for another space."""
    if name not in payload:
        raise AblationError(f"the study's cached directions hold no {name!r}, which {candidate.intervention} needs; "
                            "they were computed for another space")
    return payload[name]


class Ablate(Intervention):
    """The direction removed from every writer: the removal itself, nothing added."""

    name = "ablate"

    def key(self, space) -> None:
        return None

    def describe(self, edit: Mapping[str, Any]) -> str:
        return "ablate (W ← W − w·r·rᵀ·W on every matrix that writes into the residual stream)"


class Amplify(Intervention):
    """Remove the direction, then amplify the compliance direction by b (``amplify_strength``)."""

    name, needs, needs_judge, measurable = "amplify", ("compliance",), True, False

    def suggest(self, trial, space) -> None:
        trial.suggest_float("amplify_strength", *space.amplify_strength)

    def start(self, space) -> dict:
        return {"amplify_strength": space.amplify_strength[0]}

    def payload(self, context: PayloadContext) -> dict[str, torch.Tensor]:
        from abliterate.ablation.directions import by_method

        if context.refusals is None:
            raise AblationError("the amplify intervention needs the study's refusal proxy to label the base model's answers")
        labels = context.refusals()
        refusal = by_method("mean", *context.residuals)[0]
        compliance, how = compliance_direction(context.residuals[0], labels, refusal)
        line, _ = alignment_report(refusal, compliance)
        context.log(f"compliance direction {how}; {line}")
        return {"compliance": compliance}

    def settings(self, params: Mapping[str, Any]) -> dict:
        return {"amplify_strength": float(params.get("amplify_strength", 0.0))}

    def edit(self, candidate: Candidate, payload: Mapping[str, torch.Tensor], writers: Sequence[Writer], removal: Edit) -> Edit:
        from abliterate.ablation.bake import Amplification

        compliance = candidate.along(needed(payload, "compliance", candidate))
        return replace(removal, amplify=Amplification(compliance, candidate.amplify_strength))

    def summary(self, candidate: Candidate) -> dict:
        return {"amplify_strength": candidate.amplify_strength}

    def describe(self, edit: Mapping[str, Any]) -> str:
        return f"ablate, then amplify the compliance direction c (W ← W + b·c·cᵀ·W, b = {edit.get('amplify_strength', 0):.3f})"


class Heads(Intervention):
    """Remove the direction from the ``heads`` attention heads that carry the most refusal only
    (chosen on the unedited model by the removed direction; a subspace by its strongest row)."""

    name, needs = "heads", ("heads:input", "heads:layout")

    def suggest(self, trial, space) -> None:
        trial.suggest_int("heads", *space.heads)

    def start(self, space) -> dict:
        return {"heads": space.heads[1]}

    def payload(self, context: PayloadContext) -> dict[str, torch.Tensor]:
        import torch

        from abliterate.ablation.architectures import find_writers
        from abliterate.ablation.heads import capture_attention_inputs, head_layout, mean_input_difference

        loaded, format_prompts = context.loaded, context.format
        if loaded is None or format_prompts is None:
            raise AblationError("the heads intervention needs the loaded model and its chat format to capture attention inputs")
        writers = find_writers(loaded.model)
        captured = [capture_attention_inputs(loaded.model, loaded.tokenizer, writers, format_prompts(prompts), context.batch_size)
                    for prompts in (context.harmful, context.harmless)]
        return {"heads:input": mean_input_difference(*captured),
                "heads:layout": torch.tensor(head_layout(loaded.model, writers), dtype=torch.int64)}

    def settings(self, params: Mapping[str, Any]) -> dict:
        return {"heads": int(params.get("heads", 0))}

    def edit(self, candidate: Candidate, payload: Mapping[str, torch.Tensor], writers: Sequence[Writer], removal: Edit) -> Edit:
        from abliterate.ablation.heads import head_scores, top_heads

        inputs = needed(payload, "heads:input", candidate)
        layout = [(int(row[0]), int(row[1])) for row in needed(payload, "heads:layout", candidate)]
        removed = removal.directions
        r = removed[..., 0, :] if removed.dim() == 3 else removed  # a subspace is scored by its strongest direction
        return replace(removal, heads=top_heads(head_scores(writers, layout, inputs, r), layout, candidate.heads))

    def summary(self, candidate: Candidate) -> dict:
        return {"heads": candidate.heads}

    def describe(self, edit: Mapping[str, Any]) -> str:
        return f"ablate from the {edit.get('heads')} attention heads that carry the most refusal (their o_proj columns only)"


class Read(Intervention):
    """Remove the direction from the writers, and from the readers with a kernel of its own."""

    name = "read"
    PARAMS = ("read_peak", "read_peak_weight", "read_falloff")

    def suggest(self, trial, space) -> None:
        for param in self.PARAMS:
            trial.suggest_float(param, *getattr(space, param))

    def start(self, space) -> dict:
        # The middle of each range: a designed first trial that reads as well as writes.
        return {param: sum(getattr(space, param)) / 2 for param in self.PARAMS}

    def key(self, space) -> None:
        return None  # no payload of its own

    def settings(self, params: Mapping[str, Any]) -> dict:
        return {"options": {param: float(params.get(param, 0.0)) for param in self.PARAMS}}

    def edit(self, candidate: Candidate, payload: Mapping[str, torch.Tensor], writers: Sequence[Writer], removal: Edit) -> Edit:
        from abliterate.ablation.profile import Kernel
        from abliterate.ablation.readers import READ_GROUPS

        depth = max(writer.layer for writer in writers)
        options = candidate.options
        kernel = Kernel(peak=options["read_peak"] * depth, peak_weight=options["read_peak_weight"],
                        falloff=max(options["read_falloff"] * depth, 0.5))
        kernels = {**removal.profile.kernels, **dict.fromkeys(READ_GROUPS, kernel)}
        return replace(removal, profile=replace(removal.profile, kernels=kernels))

    def summary(self, candidate: Candidate) -> dict:
        return {param: candidate.options[param] for param in self.PARAMS}

    def describe(self, edit: Mapping[str, Any]) -> str:
        return (f"ablate, and remove the direction where layers read the residual stream (W ← W − w·W·u·uᵀ on q/k/v and "
                f"gate/up inputs; read kernel peak {edit.get('read_peak', 0):.2f} of depth, weight "
                f"{edit.get('read_peak_weight', 0):.2f}, falloff {edit.get('read_falloff', 0):.2f})")


def compliance_direction(harmful: torch.Tensor, refused: Sequence[bool], fallback: torch.Tensor) -> tuple[torch.Tensor, str]:
    """[L, H] unit ``mean(complied) - mean(refused)`` over the harmful residuals [N, L, H] labelled
    by the base model's answers; ``-fallback`` (the refusal direction) when a side has fewer than
    three prompts. Also says which it is."""
    import torch

    labels = torch.tensor([bool(r) for r in refused])
    if labels.shape[0] != harmful.shape[0]:
        raise AblationError(f"got {labels.shape[0]} refusal labels for {harmful.shape[0]} harmful prompts")
    complied = int((~labels).sum())
    if min(complied, int(labels.sum())) < MIN_CLASS:
        # W + b c c^T W does not see the sign of c: along -r it scales back up what the removal
        # left along r, the same as a smaller removal weight. Said plainly, so nobody reads more into it.
        return -fallback.float(), (f"the base model {'complied with' if complied < MIN_CLASS else 'refused'} "
                                   f"{min(complied, len(labels) - complied)} of {len(labels)} harmful prompts, fewer than "
                                   f"{MIN_CLASS}: using the negated refusal direction (amplifying it only scales what the "
                                   "removal leaves along r, like a smaller removal weight)")
    difference = harmful[~labels].float().mean(dim=0) - harmful[labels].float().mean(dim=0)
    return torch.nn.functional.normalize(difference, dim=-1), f"from {complied} complied and {int(labels.sum())} refused prompts"


def alignment_report(refusal: torch.Tensor, compliance: torch.Tensor) -> tuple[str, bool]:
    """cos(r, c) per layer as one line, and whether any layer is over :data:`ALIGNED` in size."""
    import torch

    cosines = torch.nn.functional.cosine_similarity(refusal.float(), compliance.float(), dim=-1)
    line = "cos(refusal, compliance) per layer: " + ", ".join(f"{float(c):+.2f}" for c in cosines)
    aligned = bool((cosines.abs() > ALIGNED).any())
    if aligned:
        line += f" (|cos| > {ALIGNED} somewhere: amplifying compliance may undo part of the removal there)"
    return line, aligned


for _intervention in (Ablate(), Amplify(), Heads(), Read()):
    interventions.register(_intervention)
