"""``abliterate demo``: the main job on the embedded default.

A short study on the project's own small refusing model: SQLite in the current folder, two
local workers, the space's default ranges, a couple of minutes on a CPU. It then promotes the
feasible Pareto front with the local agent suite (confirmation, checkpoint, sweep, Fisher gate)
and ends with the promotions and the command that opens the dashboard. Running it again resumes the
same study, so a second run adds nothing (raise --trials to extend it).

Where a Docker engine answers (and ``abliterate[agent]`` is installed), the demo then runs the
whole path in containers: a short study ``demo-agent`` on the agent refuser, its front confirmed,
exported, each checkpoint served as the agent of the shipped terminal tasks in fresh containers
against the base model's sweep, and the gate. Without one it says why in one line.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from abliterate.objectives.refuser import prompt_path, refuser_path
from abliterate.search.settings import DEFAULTS
from abliterate.search.space import SearchSpace
from abliterate.search.study import PURPOSES, StudyConfig

DEMO_STORAGE = "sqlite:///abliterate-demo.db"
DEMO_STUDY = "demo"
DEMO_AGENT_STUDY = "demo-agent"
DEMO_AGENT_TRIALS = 8  # the container part's study: enough for a front on the 4-layer agent refuser
DEMO_CHECKPOINTS = "abliterate-demo-checkpoints"


# The refuser's refusals fall from all to none as the peak weight goes from 0.5 to 0.8 (measured
# with the first starting point: 0.50 -> 96 % refused, 0.65 -> 54 %, 0.75 -> 4 %, 0.80 -> 0 %).
# The default range starts at 0.8, where every trial removes every refusal and the front is one
# point; starting lower lets the demo's front show the trade-off the tool searches.
DEMO_SPACE = SearchSpace(peak_weight=(0.3, 1.5))
# Promote only candidates that remove at least half the base model's refusals on the confirmation
# prompts: the others are dropped after confirmation, before the agent sweep (about a minute each).
DEMO_MARGIN = 0.5


def demo_config(trials: int, heartbeat: int = DEFAULTS.heartbeat, grace: int = DEFAULTS.grace) -> StudyConfig:
    """The embedded default: the shipped refuser and its held-out prompt sets."""
    prompts = {kind: {purpose: str(prompt_path(kind, purpose)) for purpose in PURPOSES} for kind in ("harmful", "harmless")}
    return StudyConfig(model=str(refuser_path()), harmful=prompts["harmful"], harmless=prompts["harmless"], dtype="fp32",
                       n_trials=trials, space=DEMO_SPACE, kl_cap=0.5, max_new_tokens=32, batch_size=32, seed=0,
                       heartbeat_interval=heartbeat, grace_period=grace)


def run_demo(storage: str, trials: int, workers: int, heartbeat: int = DEFAULTS.heartbeat, grace: int = DEFAULTS.grace,
             say: Callable[[str], None] = print) -> tuple[int, optuna.Study]:
    """The demo's study, created or resumed in ``storage`` and run by ``workers`` CPU workers
    (:func:`abliterate.search.run.run_study`): its exit status and the study."""
    from abliterate.search.run import run_study

    return run_study(storage, DEMO_STUDY, demo_config(trials, heartbeat, grace), ["cpu"] * workers, say=say)


def promote_demo(storage: str) -> None:
    """Promote the demo study's front once: confirmation, checkpoint, the local agent suite
    against the base model, Fisher gate (:class:`abliterate.search.promoter.Promoter`)."""
    from abliterate.objectives.sweep.local import LocalRunner
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.storage.rdb import open_storage

    settings = PromotionSettings(attempts=5, margin=DEMO_MARGIN, checkpoints=DEMO_CHECKPOINTS, device="cpu")
    Promoter(open_storage(storage), DEMO_STUDY, LocalRunner(device="cpu"), settings).run_once()


def containers_unavailable() -> str | None:
    """Why the demo's container part cannot run here (one line naming the fix), or None."""
    import importlib.util

    from abliterate.ablation.errors import AblationError
    from abliterate.objectives.sweep.engine import DockerEngine
    from abliterate.objectives.sweep.task_folder import BASE_IMAGE

    engine = DockerEngine()
    try:
        engine.check()
    except AblationError as error:
        return str(error)
    if not engine.has_image(BASE_IMAGE):
        return f"the shipped tasks' base image {BASE_IMAGE} is not here; bash .ci/docker builds it"
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("fastapi") is None:
        return "serving a checkpoint to the agent needs transformers serve: pip install 'abliterate[agent]'"
    return None


def run_container_demo(storage: str, say: Callable[[str], None] = print) -> None:
    """The whole path in containers on the agent refuser (see the module docstring)."""
    import dataclasses

    from abliterate.objectives.refuser import agent_refuser_path
    from abliterate.objectives.sweep.container import ChatAgent, ContainerRunner
    from abliterate.objectives.sweep.serve import TransformersServer
    from abliterate.objectives.sweep.task_folder import shipped_tasks
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.search.run import run_study
    from abliterate.storage.rdb import open_storage

    config = dataclasses.replace(demo_config(DEMO_AGENT_TRIALS), model=str(agent_refuser_path()))
    run_study(storage, DEMO_AGENT_STUDY, config, ["cpu"], say=say)
    runner = ContainerRunner(shipped_tasks(), ChatAgent(server=TransformersServer(device="cpu"), turns=2, max_tokens=60))
    settings = PromotionSettings(attempts=3, margin=DEMO_MARGIN, checkpoints=DEMO_CHECKPOINTS, device="cpu")
    Promoter(open_storage(storage), DEMO_AGENT_STUDY, runner, settings, log=say).run_once()
