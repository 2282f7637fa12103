"""The built-in direction methods (see :mod:`ablation.registry` for the contract).

* ``mean``, ``mean-projected``, ``probe``, ``winsorized``, ``median``: [L, H] unit directions
  (:mod:`ablation.directions`);
* ``pca``: [L, K, H] the first K principal components (K: the top of the space's component range + 1);
* ``cone``: [L, K, H] orthonormal bases of the refusal cone, strongest category first (K: the
  top of the space's rank range), so a trial of rank k removes ``[:, :k]``;
* ``sae``: [L, M, H] orthonormal bases of the decoder rows of each layer's M most harmful SAE
  features, strongest first (M: the top of the space's feature range; zero rows where no SAE).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from abliterate.ablation.errors import AblationError
from abliterate.ablation.registry import DirectionMethod, PayloadContext, methods

if TYPE_CHECKING:
    import torch

    from abliterate.ablation.candidate import Candidate


class _Estimator(DirectionMethod):
    """One unit direction per layer, by an estimator of :func:`ablation.directions.by_method`."""

    def __init__(self, name: str):
        self.name = name

    def compute(self, context: PayloadContext) -> torch.Tensor:
        from abliterate.ablation.directions import by_method

        return by_method(self.name, *context.residuals)[0]


class PrincipalComponents(DirectionMethod):
    """Principal components of the paired differences; a trial takes one (``pca_component``)."""

    name = "pca"

    def suggest(self, trial, space) -> None:
        trial.suggest_int("pca_component", *space.pca_component)

    def start(self, space) -> dict:
        return {"pca_component": space.pca_component[0]}

    def key(self, space) -> str:
        return f"pca{space.pca_component[1] + 1}"

    def settings(self, params: Mapping[str, Any]) -> dict:
        return {"component": int(params.get("pca_component", 0))}

    def compute(self, context: PayloadContext) -> torch.Tensor:
        from abliterate.ablation.directions import principal_components

        harmful, harmless = context.residuals
        if context.space is None:
            return principal_components(harmful, harmless, k=1)[0]
        count = min(context.space.pca_component[1] + 1, harmful.shape[0], harmless.shape[0])
        return principal_components(harmful, harmless, k=count).transpose(0, 1).contiguous()

    def summary(self, candidate: Candidate) -> dict:
        return {"pca_component": candidate.component}

    def describe(self, edit: Mapping[str, Any]) -> str:
        return super().describe({**edit, "method": f"{edit['method']} (principal component {edit['pca_component']})"})


class _Subspace(DirectionMethod):
    """Orthonormal bases per layer, of which a trial removes the first ``rank`` rows together."""

    subspace, measurable = True, False
    param = ""
    start_at = 0  # the starting trials take the bottom (0) or the top (1) of the space's range

    def suggest(self, trial, space) -> None:
        trial.suggest_int(self.param, *getattr(space, self.param))

    def start(self, space) -> dict:
        return {self.param: getattr(space, self.param)[self.start_at]}

    def key(self, space) -> str:
        return f"{self.name}{getattr(space, self.param)[1]}"

    def settings(self, params: Mapping[str, Any]) -> dict:
        return {"rank": int(params.get(self.param, 1))}

    def directions(self, candidate: Candidate, stored: torch.Tensor) -> torch.Tensor:
        """The first ``rank`` rows of each layer's basis [L, k, H]; global scope: the basis of the
        layer nearest the direction index that has one, at every layer."""
        bases = stored[:, : max(1, candidate.rank)]
        if candidate.scope == "global":
            # The nearest layer that has a basis (an SAE may cover only some layers).
            present = [layer for layer in range(bases.shape[0]) if bool(bases[layer].any())] or [0]
            layer = min(present, key=lambda index: (abs(index - candidate.direction_index), index))
            bases = bases[layer].expand(bases.shape[0], -1, -1).contiguous()
        return bases

    def summary(self, candidate: Candidate) -> dict:
        return {self.param: candidate.rank}

    def removed(self, edit: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def describe(self, edit: Mapping[str, Any]) -> str:
        method = f"{edit['method']} ({self.removed(edit)} removed as one subspace)"
        if edit["scope"] == "global":
            return f"{method}, the cone of layer {round(edit['direction_layer'])} at every layer"
        return f"{method}, each layer's own direction"


class Cone(_Subspace):
    """The refusal cone: one direction per category of harmful request (:mod:`ablation.cone`)."""

    name, param, start_at, uses_categories = "cone", "cone_rank", 1, True

    def compute(self, context: PayloadContext) -> torch.Tensor:
        from abliterate.ablation.cone import WEAK_SILHOUETTE, cone_stack

        harmful, harmless = context.residuals
        rank = context.space.cone_rank[1] if context.space is not None else 4
        labels = context.labels
        bases, results = cone_stack(harmful, harmless, min(rank, harmful.shape[0]), labels)
        silhouettes = [result.silhouette for result in results]
        weak = [layer for layer, result in enumerate(results) if result.weak]
        how = f"labelled ({', '.join(results[0].categories)})" if labels is not None else "k-means"
        k = bases.shape[1]
        cosines = [float((r.pairwise_cosines().sum() - k) / (k * (k - 1))) if k > 1 else 1.0 for r in results]
        context.log(f"cone: {k} {how} category directions per layer; mean pairwise cosine "
                    + ", ".join(f"{c:.2f}" for c in cosines) + "; silhouette "
                    + ", ".join(f"{s:.2f}" for s in silhouettes)
                    + (f" (weak clusters, below {WEAK_SILHOUETTE}, at layers {', '.join(map(str, weak))}: the cone there is "
                       "a cut of one cloud rather than separate categories)" if weak and labels is None else
                       f" (weak at layers {', '.join(map(str, weak))}: these categories overlap there)" if weak else ""))
        return bases.contiguous()

    def removed(self, edit: Mapping[str, Any]) -> str:
        return f"{edit['cone_rank']} category directions"


class SparseAutoencoder(_Subspace):
    """The decoder rows of the most harmful features of the study's own SAEs (:mod:`ablation.sae`)."""

    name, param, needs_sae = "sae", "sae_features", True

    def compute(self, context: PayloadContext) -> torch.Tensor:
        from abliterate.ablation.sae import load_saes, sae_directions

        if context.sae is None:
            raise AblationError("the sae method needs the study's SAE folder (--sae DIR)")
        harmful, harmless = context.residuals
        saes = load_saes(context.sae, harmful.shape[2])
        context.log(f"sae: SAEs at layers {', '.join(map(str, sorted(saes)))}")
        return sae_directions(saes, harmful, harmless, context.space.sae_features[1] if context.space is not None else 8)

    def removed(self, edit: Mapping[str, Any]) -> str:
        return f"the decoder rows of the {edit['sae_features']} most harmful SAE features"


for _method in (_Estimator("mean"), _Estimator("mean-projected"), PrincipalComponents(), _Estimator("probe"),
                _Estimator("winsorized"), _Estimator("median"), Cone(), SparseAutoencoder()):
    methods.register(_method)
