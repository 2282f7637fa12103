"""The tensors a study's edits are made of, computed once per study and cached with it, and for
one candidate, the arguments of its bake.

The payload is a flat {name: tensor} map, every tensor with the layer count first:

* ``mean``, ``mean-projected``, ``probe``: [L, H] unit directions (ablation.directions);
* ``pca``: [L, K, H] the first K principal components (K: the top of the space's component range + 1);
* ``cone``: [L, K, H] orthonormal bases of the refusal cone, strongest category first (K: the
  top of the space's rank range), so a trial of rank k removes ``[:, :k]``;
* ``sae``: [L, M, H] orthonormal bases of the decoder rows of each layer's M most harmful SAE
  features, strongest first (M: the top of the space's feature range; zero rows where no SAE);
* ``compliance``: [L, H] the unit compliance direction (intervention ``amplify``);
* ``heads:input`` [L, I] and ``heads:layout`` [L, 2]: the mean attention-output input, harmful
  minus harmless, and each layer's (heads, head_dim) (intervention ``heads``);
* ``calibration:<method>`` [L]: each layer's refusal strength on the harmful prompts along the
  method's own direction of that layer (calibrated profiles; see :func:`profile_for`).

A study that uses only the single-direction methods with plain ablation has exactly the payload
and cache key it always had, so existing studies resume and re-bake unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from abliterate.ablation.bake import Amplification
from abliterate.ablation.cone import WEAK_SILHOUETTE, cone_stack
from abliterate.ablation.directions import by_method, interpolate, principal_components
from abliterate.ablation.errors import AblationError
from abliterate.objectives.refusal import ChatFormat
from abliterate.search.space import Candidate, SearchSpace

# Below this many prompts on either side (complied, refused) the compliance direction is the
# negated refusal direction instead: a mean of two residuals is mostly noise.
MIN_CLASS = 3
# |cos(r, c)| above this: amplifying c may put back much of what removing r took out.
ALIGNED = 0.5


def directions_key(space: SearchSpace | Sequence[str]) -> str:
    """The study cache key under which the payload of ``space`` (or of ``methods``) is stored."""
    if not isinstance(space, SearchSpace):
        return f"directions:{','.join(sorted(space))}"
    key = f"directions:{','.join(sorted(space.methods))}"
    extras = []
    if "pca" in space.methods:
        extras.append(f"pca{space.pca_component[1] + 1}")
    if "cone" in space.methods:
        extras.append(f"cone{space.cone_rank[1]}")
    if "sae" in space.methods:
        extras.append(f"sae{space.sae_features[1]}")
    extras += [name for name in sorted(space.interventions) if name != "ablate"]
    if space.calibration:
        extras.append("calibrated")
    return key + (f"|{'|'.join(extras)}" if extras else "")


def method_tensor(method: str, harmful: torch.Tensor, harmless: torch.Tensor, space: SearchSpace | None = None,
                  log: Callable[[str], None] = lambda line: None, labels: Sequence[str] | None = None,
                  sae: str | None = None) -> torch.Tensor:
    """The payload tensor of one direction method from residuals [N, L, H] (see the module docstring);
    ``labels``: the category of each harmful prompt, which the cone then follows instead of k-means;
    ``sae``: the folder of the study's SAEs (method ``sae``)."""
    if method == "sae":
        from abliterate.ablation.sae import load_saes, sae_directions

        if sae is None:
            raise AblationError("the sae method needs the study's SAE folder (--sae DIR)")
        saes = load_saes(sae, harmful.shape[2])
        log(f"sae: SAEs at layers {', '.join(map(str, sorted(saes)))}")
        return sae_directions(saes, harmful, harmless, space.sae_features[1] if space is not None else 8)
    if method == "pca" and space is not None:
        count = min(space.pca_component[1] + 1, harmful.shape[0], harmless.shape[0])
        return principal_components(harmful, harmless, k=count).transpose(0, 1).contiguous()
    if method == "cone":
        rank = space.cone_rank[1] if space is not None else 4
        bases, results = cone_stack(harmful, harmless, min(rank, harmful.shape[0]), labels)
        silhouettes = [result.silhouette for result in results]
        weak = [layer for layer, result in enumerate(results) if result.weak]
        how = f"labelled ({', '.join(results[0].categories)})" if labels is not None else "k-means"
        k = bases.shape[1]
        cosines = [float((r.pairwise_cosines().sum() - k) / (k * (k - 1))) if k > 1 else 1.0 for r in results]
        log(f"cone: {k} {how} category directions per layer; mean pairwise cosine "
            + ", ".join(f"{c:.2f}" for c in cosines) + "; silhouette "
            + ", ".join(f"{s:.2f}" for s in silhouettes)
            + (f" (weak clusters, below {WEAK_SILHOUETTE}, at layers {', '.join(map(str, weak))}: the cone there is "
               "a cut of one cloud rather than separate categories)" if weak and labels is None else
               f" (weak at layers {', '.join(map(str, weak))}: these categories overlap there)" if weak else ""))
        return bases.contiguous()
    return by_method(method, harmful, harmless)[0]


def compliance_direction(harmful: torch.Tensor, refused: Sequence[bool], fallback: torch.Tensor) -> tuple[torch.Tensor, str]:
    """[L, H] unit ``mean(complied) - mean(refused)`` over the harmful residuals [N, L, H] labelled
    by the base model's answers; ``-fallback`` (the refusal direction) when a side has fewer than
    three prompts. Also says which it is."""
    refused = torch.tensor([bool(r) for r in refused])
    if refused.shape[0] != harmful.shape[0]:
        raise AblationError(f"got {refused.shape[0]} refusal labels for {harmful.shape[0]} harmful prompts")
    complied = int((~refused).sum())
    if min(complied, int(refused.sum())) < MIN_CLASS:
        # W + b c c^T W does not see the sign of c: along -r it scales back up what the removal
        # left along r, the same as a smaller removal weight. Said plainly, so nobody reads more into it.
        return -fallback.float(), (f"the base model {'complied with' if complied < MIN_CLASS else 'refused'} "
                                   f"{min(complied, len(refused) - complied)} of {len(refused)} harmful prompts, fewer than "
                                   f"{MIN_CLASS}: using the negated refusal direction (amplifying it only scales what the "
                                   "removal leaves along r, like a smaller removal weight)")
    difference = harmful[~refused].float().mean(dim=0) - harmful[refused].float().mean(dim=0)
    return torch.nn.functional.normalize(difference, dim=-1), f"from {complied} complied and {int(refused.sum())} refused prompts"


def alignment_report(refusal: torch.Tensor, compliance: torch.Tensor) -> tuple[str, bool]:
    """cos(r, c) per layer as one line, and whether any layer is over :data:`ALIGNED` in size."""
    cosines = torch.nn.functional.cosine_similarity(refusal.float(), compliance.float(), dim=-1)
    line = "cos(refusal, compliance) per layer: " + ", ".join(f"{float(c):+.2f}" for c in cosines)
    aligned = bool((cosines.abs() > ALIGNED).any())
    if aligned:
        line += f" (|cos| > {ALIGNED} somewhere: amplifying compliance may undo part of the removal there)"
    return line, aligned


def direction_for(candidate: Candidate, directions: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a candidate removes: one direction [H] (global scope) or one per layer [L, H], or, for
    the cone, an orthonormal basis per layer [L, k, H] (global scope: the basis of the layer
    nearest the direction index, at every layer)."""
    stored = directions[candidate.method]
    if candidate.method in ("cone", "sae"):
        bases = stored[:, : max(1, candidate.rank)]
        if candidate.scope == "global":
            # The nearest layer that has a basis (an SAE may cover only some layers).
            present = [layer for layer in range(bases.shape[0]) if bool(bases[layer].any())] or [0]
            layer = min(present, key=lambda index: (abs(index - candidate.direction_index), index))
            bases = bases[layer].expand(bases.shape[0], -1, -1).contiguous()
        return bases
    per_layer = stored[:, min(candidate.component, stored.shape[1] - 1)] if stored.dim() == 3 else stored
    return interpolate(per_layer, candidate.direction_index) if candidate.scope == "global" else per_layer


def _along(candidate: Candidate, per_layer: torch.Tensor) -> torch.Tensor:
    return interpolate(per_layer, candidate.direction_index) if candidate.scope == "global" else per_layer


def bake_arguments(candidate: Candidate, directions: dict[str, torch.Tensor], model, writers) -> dict:
    """The keyword arguments of :meth:`ablation.bake.Baker.bake` for ``candidate`` beyond the
    direction and profile: the amplification, or the heads' columns (taken on the unedited model)."""
    if candidate.intervention == "amplify":
        return {"amplify": Amplification(_along(candidate, _needs(directions, "compliance", candidate)), candidate.amplify_strength)}
    if candidate.intervention == "heads":
        from abliterate.ablation.heads import head_scores, top_heads

        inputs, layout = _needs(directions, "heads:input", candidate), _needs(directions, "heads:layout", candidate)
        layout = [tuple(int(v) for v in row) for row in layout]
        removed = direction_for(candidate, directions)
        r = removed[..., 0, :] if removed.dim() == 3 else removed  # the cone is scored by its strongest direction
        return {"heads": top_heads(head_scores(writers, layout, inputs, r), layout, candidate.heads)}
    return {}


# A calibrated layer weight is the kernel's times the layer's strength over the target, held in here.
CALIBRATION_CLAMP = (0.5, 2.0)


def refusal_strength(harmful: torch.Tensor, harmless: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[L] per layer, the median projection of the harmful residuals [N, L, H], less the harmless
    mean, on that layer's direction ([L, H], or the first of [L, k, H]), relative to the layer's
    mean harmful residual norm: how much refusal the layer's stream carries."""
    per_layer = directions[:, 0] if directions.dim() == 3 else directions
    shifted = harmful.float() - harmless.float().mean(dim=0)
    projections = torch.einsum("nlh,lh->nl", shifted, per_layer.float())
    return projections.median(dim=0).values / harmful.float().norm(dim=-1).mean(dim=0).clamp_min(1e-12)


def profile_for(candidate: Candidate, directions: dict[str, torch.Tensor]):
    """The candidate's profile, calibrated when it asks for it: each layer's weight times
    ``clamp(s_l / T, 0.5, 2)``, with s_l the layer's refusal strength (:func:`refusal_strength`)
    and T the candidate's target percentile of s over the layers. A low target strengthens most
    layers, a high one weakens most; layers where refusal is strongest are always edited hardest."""
    if not candidate.calibration:
        return candidate.profile
    from dataclasses import replace

    strength = _needs(directions, f"calibration:{candidate.method}", candidate).double()
    target = float(torch.quantile(strength, candidate.calibration / 100.0))
    factors = (strength / target if target > 0 else torch.ones_like(strength)).clamp(*CALIBRATION_CLAMP)
    return replace(candidate.profile, layer_scale=tuple(float(f) for f in factors))


def used_tensors(candidate: Candidate, directions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every payload tensor the candidate's bake reads (what an export keeps beside the weights)."""
    names = [candidate.method] + {"amplify": ["compliance"], "heads": ["heads:input", "heads:layout"]}.get(candidate.intervention, [])
    names += [f"calibration:{candidate.method}"] if candidate.calibration else []
    return {name: _needs(directions, name, candidate).contiguous() for name in names}


def _needs(directions: dict[str, torch.Tensor], name: str, candidate: Candidate) -> torch.Tensor:
    if name not in directions:
        raise AblationError(f"the study's cached directions hold no {name!r}, which {candidate.intervention} needs; "
                            "they were computed for another space")
    return directions[name]


def compute_payload(loaded, harmful: Sequence[str], harmless: Sequence[str], residuals: tuple[torch.Tensor, torch.Tensor],
                    space: SearchSpace, proxy=None, chat: ChatFormat = ChatFormat(), batch_size: int = 16,
                    log: Callable[[str], None] = lambda line: None, labels: Sequence[str] | None = None,
                    sae: str | None = None) -> dict[str, torch.Tensor]:
    """Everything the trials of ``space`` bake from, on the extraction prompts (raw ``harmful`` and
    ``harmless``, whose residuals [N, L, H] are ``residuals``). ``proxy`` (prepared or not) labels
    the base model's answers for the compliance direction; needed only with ``amplify``. ``labels``:
    the category of each harmful prompt, for the cone; ``sae``: the study's SAE folder."""
    payload = {method: method_tensor(method, *residuals, space, log, labels, sae) for method in sorted(space.methods)}
    if space.calibration:
        for method in sorted(space.methods):
            payload[f"calibration:{method}"] = refusal_strength(*residuals, payload[method])
            log(f"refusal strength per layer along {method}: " + ", ".join(f"{float(s):.3f}" for s in payload[f"calibration:{method}"]))
    if "amplify" in space.interventions:
        if proxy is None:
            raise AblationError("the amplify intervention needs the study's refusal proxy to label the base model's answers")
        proxy.use_base(loaded)
        proxy.prepare(loaded, harmful)
        refusal = by_method("mean", *residuals)[0]
        payload["compliance"], how = compliance_direction(residuals[0], proxy.refusals(loaded, harmful), refusal)
        line, _ = alignment_report(refusal, payload["compliance"])
        log(f"compliance direction {how}; {line}")
    if "heads" in space.interventions:
        from abliterate.ablation.architectures import find_writers
        from abliterate.ablation.heads import capture_attention_inputs, head_layout, mean_input_difference

        writers = find_writers(loaded.model)
        captured = [capture_attention_inputs(loaded.model, loaded.tokenizer, writers, chat.apply(loaded, prompts), batch_size)
                    for prompts in (harmful, harmless)]
        payload["heads:input"] = mean_input_difference(*captured)
        payload["heads:layout"] = torch.tensor(head_layout(loaded.model, writers), dtype=torch.int64)
    return payload
