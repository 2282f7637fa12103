"""A self-describing study: the model, prompts, space and objective settings live in the study.

Everything a worker needs is in the study's user attrs under ``abliterate``, so
``abliterate worker --storage URL --study NAME`` needs nothing else, and a worker whose local
settings contradict the study refuses to join it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import optuna
from optuna.exceptions import ExperimentalWarning

from abliterate.ablation.errors import AblationError
from abliterate.ablation.registry import methods
from abliterate.objectives.judges import JudgeSettings
from abliterate.objectives.prompts import check_disjoint, file_digest, file_digests, load_prompts, split_slice
from abliterate.search.settings import DEFAULTS, OBJECTIVES, SCREENS  # the defaults of abliterate search, written once there
from abliterate.search.space import MAX_STARTING_POINTS, SearchSpace
from abliterate.storage.errors import StorageError
from abliterate.storage.leases import Leases
from abliterate.storage.records import CONFIG, STOP

PURPOSES = ("extraction", "evaluation", "confirmation")
SAMPLERS = ("tpe", "nsga2", "gp", "random")


@dataclass(frozen=True)
class StudyConfig:
    """What a study searches, on what, and how trials are scored.

    ``harmful`` and ``harmless`` map each purpose (extraction, evaluation, confirmation) to a
    prompt source spec; the sets must not overlap.
    """

    model: str
    harmful: dict[str, str]
    harmless: dict[str, str]
    dtype: str = DEFAULTS.dtype
    n_trials: int = DEFAULTS.trials
    space: SearchSpace = field(default_factory=SearchSpace)
    kl_cap: float = DEFAULTS.kl_cap
    kl_tokens: int = 1
    proxy: str = DEFAULTS.proxy
    max_new_tokens: int = DEFAULTS.max_new_tokens
    batch_size: int = DEFAULTS.batch_size
    enable_thinking: bool | None = None
    sampler: str = DEFAULTS.sampler
    seed: int | None = DEFAULTS.seed
    starting_points: int = DEFAULTS.starting_points  # designed first trials (search.space.starting_points), before the sampler's own
    measured_starts: bool = DEFAULTS.measured_starts  # the starting points' kernels placed where the model writes refusal (search.trial.writing_kernel)
    judge: str = DEFAULTS.judge  # markers, llm, embed or module:attribute (objectives.judges.JudgeSettings)
    judge_model: str | None = DEFAULTS.judge_model  # llm only: the model that judges; None: the base model itself
    judge_prefilter: bool = DEFAULTS.judge_prefilter  # llm only: markers early in an answer settle it as a refusal
    trust_remote_code: bool = DEFAULTS.trust_remote_code  # workers load the model as the study was created, not by their own flags
    device_map: str | None = DEFAULTS.device_map
    # sha256 of each local prompt file the sets read, by absolute path (objectives.prompts.file_digests),
    # taken when the study is made: whoever loads the sets later refuses a file that changed since.
    prompt_files: dict[str, str] = field(default_factory=dict)
    harmful_categories: str | None = DEFAULTS.harmful_categories  # a column of the harmful source: the cone's categories (else k-means)
    sae: str | None = DEFAULTS.sae  # a folder of per-layer sparse autoencoders: method sae (ablation.sae)
    objectives: str = DEFAULTS.objectives  # or a third: "refusal,kl,over-refusal" or "refusal,kl,capability"
    edgy: str | None = DEFAULTS.edgy  # prompt source of the over-refusal objective
    screen: str = DEFAULTS.screen  # off, record or prune: the generation-free refusal screen (objectives.screen)
    screen_margin: float = DEFAULTS.screen_margin  # prune: how much lower, as a share, a scored trial's screen must be (search.front.screen_dominates)
    # Every process of the study beats and judges heartbeats alike: a worker with a shorter grace
    # period than another's heartbeat interval would fail that worker's live trials.
    heartbeat_interval: int = DEFAULTS.heartbeat  # seconds between a running trial's heartbeats
    grace_period: int = DEFAULTS.grace  # seconds without a heartbeat before a trial counts as crashed

    def __post_init__(self):
        for side, specs in (("harmful", self.harmful), ("harmless", self.harmless)):
            if set(specs) != set(PURPOSES):
                raise AblationError(f"{side} prompts need exactly the sets {', '.join(PURPOSES)}, got {', '.join(specs) or 'none'}")
        if not (isinstance(self.kl_cap, (int, float)) and math.isfinite(self.kl_cap) and self.kl_cap > 0):
            raise AblationError(f"the KL cap must be a positive number, got {self.kl_cap!r} (--kl-cap; e.g. 1.0)")
        if not 0 <= self.starting_points <= MAX_STARTING_POINTS:
            raise AblationError(f"starting points must be 0 to {MAX_STARTING_POINTS}, got {self.starting_points} (--starting-points)")
        if self.measured_starts and not self.starting_points:
            raise AblationError("--measured-starts places the designed first trials, and --starting-points is 0; "
                                "give a count (1 to 6) or drop --measured-starts")
        if self.sampler not in SAMPLERS:
            raise AblationError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.objectives not in OBJECTIVES:
            raise AblationError(f"unknown objectives {self.objectives!r}; use {' or '.join(OBJECTIVES)} (--objectives)")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 0):
            raise AblationError(f"the batch size must be a whole number of at least 1, or auto; got {self.batch_size!r} (--batch-size)")
        if self.screen not in SCREENS:
            raise AblationError(f"unknown screen mode {self.screen!r}; use one of {', '.join(SCREENS)} (--screen)")
        if not (isinstance(self.screen_margin, (int, float)) and 0 <= self.screen_margin <= 1):
            raise AblationError(f"the screen margin must be a number from 0 to 1, got {self.screen_margin!r} (--screen-margin; e.g. 0.03)")
        if self.screen == "prune" and self.third_objective:
            raise AblationError(f"--screen prune compares refusals and KL only, and this study has the {self.third_objective} "
                                "objective; use --screen record")
        if self.over_refusal and not self.edgy:
            raise AblationError("the over-refusal objective needs benign-but-edgy prompts: pass --edgy SRC (e.g. rho-edgy)")
        self.judge_settings()  # a bad judge spec fails here, with its one-line message
        chosen = methods.chosen(self.space.methods)
        if self.harmful_categories is not None and not any(method.uses_categories for method in chosen):
            raise AblationError("--harmful-categories gives the cone its categories, but this space has no cone; "
                                "add cone to --methods or drop --harmful-categories")
        if (self.sae is None) == any(method.needs_sae for method in chosen):
            raise AblationError("the sae method needs --sae DIR (a folder of per-layer SAE files)" if self.sae is None else
                                "--sae gives the sae method its autoencoders, but this space has no sae; add sae to --methods or drop --sae")
        check_heartbeat(self.heartbeat_interval, self.grace_period)
        if self.judge != "markers" and self.proxy != "markers":
            raise AblationError(f"--judge {self.judge} applies to the markers proxy only, not {self.proxy!r}; drop --judge or use --proxy markers")

    def judge_settings(self, device: str = "auto") -> JudgeSettings:
        """How this study's answers are judged; ``device`` is where a separate judge model runs."""
        return JudgeSettings(self.judge, self.judge_model, device, self.dtype, self.judge_prefilter, self.batch_size)

    @classmethod
    def split(cls, model: str, harmful: str, harmless: str, sizes: tuple[int, int, int], **options) -> StudyConfig:
        """One source per side cut into consecutive slices for the three purposes; a source spec
        that ends in a slice (``h.txt[0:120]``) is cut within it. A source with fewer prompts than
        ``sizes`` take is refused, naming the largest split that fits."""
        def cut(side, spec):
            source, window = split_slice(spec.strip())
            available = range(len(load_prompts(source)))[window or slice(None)]
            if len(available) < sum(sizes):
                raise AblationError(f"the {side} source {spec!r} has {len(available)} prompts, fewer than the {sum(sizes)} that "
                                    f"split {','.join(map(str, sizes))} takes; {_fitting(sizes, len(available))}")
            bounds = [available.start + n for n in (0, sizes[0], sizes[0] + sizes[1], sum(sizes))]
            return {p: f"{source}[{bounds[i]}:{bounds[i + 1]}]" for i, p in enumerate(PURPOSES)}
        return cls(model=model, harmful=cut("harmful", harmful), harmless=cut("harmless", harmless),
                   **({"prompt_files": file_digests([harmful, harmless] + ([options["edgy"]] if options.get("edgy") else []))}
                      | options))

    @property
    def over_refusal(self) -> bool:
        """Whether over-refusal on :attr:`edgy` prompts is a third objective."""
        return self.objectives == OBJECTIVES[1]

    @property
    def capability(self) -> bool:
        """Whether the share of capability questions answered wrong is a third objective."""
        return self.objectives == OBJECTIVES[2]

    @property
    def third_objective(self) -> str | None:
        """The third objective's name ("over-refusal", "capability"), or None with two."""
        names = self.objectives.split(",")
        return names[2] if len(names) > 2 else None

    def prompts(self) -> dict[tuple[str, str], list[str]]:
        """Every prompt set, loaded and checked to be pairwise disjoint (the edgy set, when the
        study has one, as ``("edgy", "evaluation")``), after :meth:`check_prompt_files`."""
        self.check_prompt_files()
        loaded = {(side, p): load_prompts(spec) for side, specs in (("harmful", self.harmful), ("harmless", self.harmless))
                  for p, spec in specs.items()}
        if self.edgy:
            loaded["edgy", "evaluation"] = load_prompts(self.edgy)
        check_disjoint(**{f"{side} {purpose}": prompts for (side, purpose), prompts in loaded.items()})
        return loaded

    def check_prompt_files(self) -> None:
        """Refuse, in one line naming the file, a prompt file that is gone or whose content changed
        since the study was made: the study's sets and trials would no longer match."""
        for path, digest in sorted(self.prompt_files.items()):
            try:
                now = file_digest(path)
            except OSError as error:
                raise AblationError(f"prompt file {path}, which the study was made with, cannot be read ({error.strerror}); "
                                    "restore it, or start a new study (another --study name)") from None
            if now != digest:
                raise AblationError(f"prompt file {path} has changed since the study was made (sha256 {now[:12]}, "
                                    f"was {digest[:12]}); restore it, or start a new study (another --study name)")

    def categories(self) -> list[str] | None:
        """The category of each harmful extraction prompt (``harmful_categories``), or None."""
        if self.harmful_categories is None:
            return None
        from abliterate.objectives.categories import load_categories

        return load_categories(self.harmful["extraction"], self.harmful_categories)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudyConfig:
        values = json.loads(text)
        values["space"] = SearchSpace.from_dict(values["space"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def check_heartbeat(interval: int, grace: int) -> None:
    """Refuse a grace period that a live worker's heartbeats could not beat."""
    if not 0 < interval < grace:
        raise AblationError(f"the grace period ({grace} s, --grace) must be longer than the heartbeat interval ({interval} s, "
                            "--heartbeat), or live trials count as crashed; e.g. --heartbeat 60 --grace 600")


def _fitting(sizes: tuple[int, int, int], available: int) -> str:
    """How to split ``available`` prompts in the proportions of ``sizes`` (--split), or that it cannot be."""
    scaled = [n * available // sum(sizes) for n in sizes]
    if min(scaled) < 1:
        return "pass a bigger source"
    return f"pass --split {','.join(map(str, scaled))} (the largest in these proportions that fits) or a bigger source"


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler; TPE is multivariate with a constant liar for parallel workers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if config.sampler == "tpe":
            # The designed starting points take the place of as many random start-up trials.
            startup = max(config.starting_points, min(20, config.n_trials // 5))
            return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=config.seed, n_startup_trials=startup)
        if config.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=config.seed)
        if config.sampler == "gp":
            startup = max(config.starting_points, min(10, config.n_trials // 5))
            return optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=startup)
        return optuna.samplers.RandomSampler(seed=config.seed)


RESUMABLE_CHANGES = ("n_trials", "batch_size", "screen", "screen_margin")


def create_or_resume(storage, name: str, config: StudyConfig) -> tuple[optuna.Study, bool]:
    """The study ``name``: created with ``config``, or resumed when it exists with the same settings.

    Only ``n_trials`` (asking for more trials is how a study is extended), ``batch_size`` (a
    throughput setting; answers differ by floating-point noise at most), ``screen`` and
    ``screen_margin`` (which trials get a refusal pass, never what one measures) may change on resume; workers started
    afterwards use the new values. Safe from any number of processes and
    machines at once: creation (the study and its settings) happens under one lease, so nobody
    sees a study half made.
    """
    with _creating(storage, name):
        existing = _config_of(storage, name)
        if existing is None:
            names = config.objectives.split(",")
            study = optuna.create_study(storage=storage, study_name=name, directions=["minimize"] * len(names),
                                        sampler=make_sampler(config))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.set_metric_names(names)  # the dashboard labels the axes with these
            study.set_user_attr(CONFIG, config.to_json())
            return study, False
        # A changed file is named here. The digests are not compared as settings: the same specs
        # read the same files, and a study made before digests were kept has none.
        existing.check_prompt_files()
        conflicts = _conflicts(existing, config, ignore={*RESUMABLE_CHANGES, "prompt_files"})
        if conflicts:
            raise AblationError(f"study {name!r} exists with other settings ({conflicts}); use another --study name or the study's settings")
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(config))
        if any(getattr(config, setting) != getattr(existing, setting) for setting in RESUMABLE_CHANGES):
            study.set_user_attr(CONFIG, config.to_json())
        return study, True


@contextmanager
def _creating(storage, name: str) -> Iterator[None]:
    """Hold the lease under which study ``name`` is created or changed (a dead holder's lapses)."""
    leases = Leases(storage.engine, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}", ttl=CREATION_LEASE_SECONDS)
    key = f"study:{name}"
    while not leases.acquire(key):
        time.sleep(0.05)
    try:
        yield
    finally:
        leases.release(key)


CREATION_LEASE_SECONDS = 60.0  # creating a study takes milliseconds


def load(storage, name: str) -> tuple[optuna.Study, StudyConfig]:
    """An existing abliterate study and its config; a one-line error when there is none.

    ``storage`` takes the study's heartbeat interval and grace period (whatever it was opened
    with), so that whoever fails stale trials of this study judges them as its workers beat."""
    config = _config_of(storage, name, settle=True)
    if config is None:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StorageError(f"no abliterate study named {name!r} in this storage (studies: {names}); start one with abliterate search")
    storage.heartbeat_interval, storage.grace_period = config.heartbeat_interval, config.grace_period
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(config)), config


def stop_requested(study: optuna.Study) -> dict | None:
    """Why the study was stopped (e.g. an accepted lift), or None while it runs on."""
    return study.user_attrs.get(STOP)


def check_local(config: StudyConfig, **local) -> None:
    """Refuse when settings given on a worker's command line contradict the study's."""
    conflicts = [f"{k}: study has {getattr(config, k)!r}, you gave {v!r}" for k, v in local.items()
                 if v is not None and getattr(config, k) != v]
    if conflicts:
        raise AblationError(f"these options contradict the study: {'; '.join(conflicts)}; drop them, the study knows its settings")


def _config_of(storage, name: str, settle: bool = False) -> StudyConfig | None:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    if CONFIG not in study.user_attrs and settle:
        with _creating(storage, name):  # it may be half made by another process: wait until it is done
            return _config_of(storage, name, settle=False)
    if CONFIG not in study.user_attrs:
        raise StorageError(f"study {name!r} was not made by abliterate (no {CONFIG} settings); use another --study name")
    return StudyConfig.from_json(study.user_attrs[CONFIG])


def _conflicts(old: StudyConfig, new: StudyConfig, ignore: set[str]) -> str:
    before, after = asdict(old), asdict(new)
    return "; ".join(f"{k}: {before[k]!r} vs {after[k]!r}" for k in before if k not in ignore and before[k] != after[k])
