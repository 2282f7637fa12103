"""The study kit: everything one study's processes need, opened once from (storage, study, device).

A worker, the promoter, ``abliterate export`` and the analyses (analyze, dose, controls) all
work on one study with the same parts: its settings (:class:`search.study.StudyConfig`), its
prompt sets, its model loaded as the study says, the chat format, a refusal proxy, the payload
its edits are made of (cached once per study, see :mod:`ablation.resolve`) and, for a trial's
params, the edit they bake. :class:`StudyKit` gives each, built on first use and then kept, and
is the one place their errors are raised, each one line naming the problem and the fix:

* an unknown study: :class:`storage.errors.StorageError` (``no abliterate study named ...``),
  when the kit is opened;
* a study model that is not where the study was made: :class:`ablation.errors.ModelLoadError`,
  when the model is first asked for;
* no payload cached yet: :class:`storage.errors.StorageError` (``... has no cached directions
  yet; run a worker first``), when the payload is read and not computed;
* a trial that is not a finished one of the study: :class:`ablation.errors.AblationError`.

Opening a kit reads the study's settings only: torch, transformers and the prompt sources are
loaded when a part that needs them is first asked for, so bad input is told at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from abliterate.ablation.errors import AblationError, ModelLoadError
from abliterate.search.study import load
from abliterate.search.values import AUTO_BATCH
from abliterate.storage.errors import StorageError

if TYPE_CHECKING:
    import torch
    from optuna.trial import FrozenTrial

    from abliterate.ablation.bake import Edit
    from abliterate.ablation.candidate import Candidate
    from abliterate.ablation.loading import LoadedModel
    from abliterate.objectives.batching import BatchChoice
    from abliterate.objectives.refusal import ChatFormat, RefusalProxy
    from abliterate.storage.cache import ArtifactCache


class StudyKit:
    """One study's parts for one process: see the module docstring.

    ``device``: where the model (and, unless ``judge_device`` says otherwise, a separate judge
    model) runs. ``dtype``: the dtype the model is loaded in, default the study's own (an export
    loads the checkpoint's ``stored`` one). ``owner``: the name this process holds the payload's
    cache claim under while it computes it (a launcher gives back the claims of a dead worker by
    its owner name). The kit is not thread-safe; the study's processes each open their own.
    """

    def __init__(self, storage, name: str, device: str = "auto", *, dtype: str | None = None, owner: str = "kit",
                 judge_device: str | None = None):
        self.storage, self.name, self.device, self.owner = storage, name, device, owner
        self.study, self.config = load(storage, name)  # the unknown study's one line
        self.dtype = dtype or self.config.dtype
        self.judge_device = judge_device or device
        self._payload: dict[str, torch.Tensor] | None = None
        self.batch_choice: BatchChoice | None = None  # what --batch-size auto chose here, once the model is loaded

    @classmethod
    def open(cls, storage_url: str | None, name: str, device: str = "auto", **options) -> StudyKit:
        """The kit of an existing study at ``storage_url`` (no database is created: a missing one,
        or a missing study, is a one-line error); ``options`` as for the constructor."""
        from abliterate.storage.rdb import open_storage

        return cls(open_storage(storage_url, create=False), name, device, **options)

    # ---- settings and prompts ----------------------------------------------------------------

    @cached_property
    def prompts(self) -> dict[tuple[str, str], list[str]]:
        """Every prompt set of the study by (side, purpose), checked (:meth:`StudyConfig.prompts`)."""
        return self.config.prompts()

    @cached_property
    def chat(self) -> ChatFormat:
        """The chat format every prompt of the study is put in."""
        from abliterate.objectives.refusal import ChatFormat

        return ChatFormat(enable_thinking=self.config.enable_thinking)

    # ---- the model -----------------------------------------------------------------------------

    @cached_property
    def model(self) -> LoadedModel:
        """The study's model, loaded once as the study was made (dtype, device map, remote code)."""
        self._check_model_present()
        from abliterate.ablation.loading import load_model

        config = self.config
        loaded = load_model(config.model, self.dtype, self.device, config.device_map, config.trust_remote_code)
        if config.batch_size == AUTO_BATCH:
            self.batch_choice = self._choose_batch(loaded)
            self.config = replace(config, batch_size=self.batch_choice.size)
        return loaded

    def _choose_batch(self, loaded: LoadedModel) -> BatchChoice:
        """``--batch-size auto`` on this process's device: the longest prompt of any set in its
        chat format, the study's answer length and KL tokens, the largest set."""
        from abliterate.objectives.batching import choose_batch

        sets = list(self.prompts.values())
        longest = max(len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
                      for prompts in sets for text in self.chat.apply(loaded, prompts))
        return choose_batch(loaded, longest, self.config.max_new_tokens, self.config.kl_tokens, max(map(len, sets)))

    def _check_model_present(self) -> None:
        """A local model that is gone is named with its study: the study loads it from where it was
        made, so the fix is to put it back there (a hub id is left to the loader's own errors)."""
        from abliterate.ablation.locate import local_model

        try:
            local_model(self.config.model)
        except ModelLoadError as error:
            if Path(self.config.model).expanduser().exists():
                raise  # there, but not a model: the loader's words say what is wrong with it
            raise ModelLoadError(f"the model of study {self.name!r}, {self.config.model}, does not exist on this machine; "
                                 "put it back at that path (the study loads its model from where it was made)") from error

    def proxy(self, max_new_tokens: int | None = None) -> RefusalProxy:
        """A new refusal proxy of the study (its judge on ``judge_device``); ``max_new_tokens``:
        longer answers than the study's (the promoter's confirmation). A proxy keeps what it
        prepared for its prompts, so each use (trials, confirmation) takes its own."""
        from abliterate.objectives.refusal import make_proxy

        config = self.config
        return make_proxy(config.proxy, max_new_tokens or config.max_new_tokens, config.batch_size, self.chat,
                          config.judge_settings(self.judge_device).build())

    # ---- the payload the edits are made of -----------------------------------------------------

    @property
    def payload_key(self) -> str:
        """The key of the study's payload in its cache (:func:`ablation.resolve.payload_key`)."""
        from abliterate.ablation.resolve import payload_key

        return payload_key(self.config.space)

    def cache(self) -> ArtifactCache:
        """The study's compute-once cache, claims held as ``owner``; a claim goes stale after the
        study's grace period without a heartbeat."""
        from abliterate.storage.cache import ArtifactCache

        return ArtifactCache(self.storage.engine, self.name, self.owner, stale_after=self.config.grace_period)

    def payload(self, compute: Callable[[], dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """The study's payload ({name: tensor}, see :mod:`ablation.resolve`), read once per kit.

        Without ``compute``, it must be cached already (a StorageError says to run a worker first).
        With it, a study that has none yet gets it from ``compute``, run here under the cache's
        claim: one process of the study computes, the others wait for its result; a computation
        that fails or is interrupted gives the claim back (:class:`storage.cache.ArtifactCache`).
        """
        if self._payload is None:
            from abliterate.search.trial import directions_from_bytes, directions_to_bytes

            if compute is None:
                stored = self.cache().get(self.payload_key)
                if stored is None:
                    raise StorageError(f"study {self.name!r} has no cached directions yet; run a worker first")
            else:
                stored = self.cache().get_or_compute(self.payload_key, lambda: directions_to_bytes(compute()))
            self._payload = directions_from_bytes(stored)
        return self._payload

    def extraction_residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals [N, L, H] of the study's harmful and harmless extraction prompts on its model."""
        from abliterate.search.trial import capture_extraction

        harmful, harmless = self.prompts["harmful", "extraction"], self.prompts["harmless", "extraction"]
        return capture_extraction(self.model, harmful, harmless, self.chat, self.config.batch_size)

    def compute_payload(self, residuals: tuple[torch.Tensor, torch.Tensor], proxy: RefusalProxy | None = None,
                        log: Callable[[str], None] = lambda line: None) -> dict[str, torch.Tensor]:
        """The payload of the study's space from its extraction ``residuals`` (what
        :meth:`payload` caches); ``proxy`` labels the base model's answers (intervention amplify)."""
        from abliterate.objectives.payload import compute_payload

        config = self.config
        return compute_payload(self.model, self.prompts["harmful", "extraction"], self.prompts["harmless", "extraction"],
                               residuals, config.space, proxy, self.chat, config.batch_size, log, config.categories(),
                               config.sae)

    @property
    def num_layers(self) -> int:
        """The model's decoder layers, as the payload has them (every tensor's first dimension)."""
        return next(iter(self.payload().values())).shape[0]

    # ---- trials and their edits ----------------------------------------------------------------

    def finished_trial(self, number: int) -> FrozenTrial:
        """The study's finished trial ``number``; otherwise a one-line error saying what it is."""
        for trial in self.study.get_trials(deepcopy=False):
            if trial.number == number:
                if trial.state.name == "COMPLETE":
                    return trial
                why = f"trial {number} is {trial.state.name}"
                break
        else:
            why = f"the study has no trial {number} at all"
        raise AblationError(f"study {self.name!r} has no finished trial {number}: {why}; pick one from abliterate front")

    def candidate(self, params: dict) -> Candidate:
        """The candidate a trial's ``params`` describe, on the study's model."""
        from abliterate.ablation.candidate import candidate_from_params

        return candidate_from_params(params, self.num_layers)

    def edit(self, params: dict) -> Edit:
        """What ``params`` bake into the study's model, resolved from the study's payload
        (:func:`ablation.resolve.resolve`); the heads' columns (intervention heads) are chosen on
        the model as it is now, so ask before baking anything into it."""
        from abliterate.ablation import find_writers
        from abliterate.ablation.resolve import resolve

        return resolve(self.candidate(params), self.payload(), find_writers(self.model.model))
