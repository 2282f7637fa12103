"""The base model's refusals on a study's evaluation prompts: what the front is read against.

The worker that computes a study's directions measures them once (one refusal pass on the
unedited model, :func:`measure`) and keeps them in the study's user attr ``abliterate_baseline``,
which ``search`` and ``front`` print beside the front, ``front --json`` gives each row as
``base``, and the dashboard shows among the study's user attrs. Importing this module imports no
torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from abliterate.storage.records import BASELINE


def measure(loaded, proxy, harmful: Sequence[str], edgy: Sequence[str] | None = None, chat=None, max_new_tokens: int = 48,
            batch_size: int = 16, capability: bool = False) -> dict:
    """The unedited ``loaded`` model scored as a trial is: by the study's ``proxy`` on its
    ``harmful`` evaluation prompts, with ``edgy`` its over-refusal by refusal markers, and with
    ``capability`` its accuracy on the capability questions. Returns ``refusal`` (the objective),
    ``refusal_rate``, ``degenerate_rate``, ``over_refusal``, ``capability``, the number of
    ``prompts`` and the ``seconds`` the passes took."""
    from abliterate.objectives.refusal import ChatFormat, MarkerProxy

    start = time.perf_counter()
    proxy.use_base(loaded)  # a model judge that is the base model judges these answers too
    proxy.prepare(loaded, harmful)
    score = proxy.score(loaded, harmful)
    base = {"refusal": score.value, "refusal_rate": score.rate("refusal"), "degenerate_rate": score.rate("degenerate"),
            "prompts": score.total}
    if edgy:
        markers = MarkerProxy(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat or ChatFormat())
        base["over_refusal"] = markers.score(loaded, edgy).rate("refusal")
    if capability:
        from abliterate.objectives.capability import ask, load_questions

        base["capability"] = ask(loaded, load_questions(), chat or ChatFormat(), batch_size).accuracy
    return base | {"seconds": round(time.perf_counter() - start, 3)}


def baseline_of(study) -> dict | None:
    """What :func:`measure` found for ``study``; None for a study made before it was measured, or
    whose directions are not computed yet."""
    return study.user_attrs.get(BASELINE)


def baseline_line(base: dict | None) -> str:
    """The base model's figures in one line, or how to measure them when the study has none."""
    if base is None:
        return ("base model: not measured in this study (made before that, or no worker has computed its directions yet); "
                "abliterate evaluate --model BASE --base BASE --storage URL --study NAME --prompt-set evaluation measures it")
    over = f", over-refusal {base['over_refusal']:.0%}" if base.get("over_refusal") is not None else ""
    over += f", capability {base['capability']:.0%}" if base.get("capability") is not None else ""
    return (f"base model (unedited) on the {base['prompts']} evaluation prompts: refusal {base['refusal']:.3f}, "
            f"refused {base['refusal_rate']:.0%}, degenerate {base['degenerate_rate']:.0%}{over}")
