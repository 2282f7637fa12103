"""What is done to the model: load it, find the matrices that write and read its residual stream, capture residuals, compute
refusal directions, bake an edit in place, restore it bit-exactly, export a checkpoint (and,
for analyses, steer the residual stream at inference).

A trial's edit takes one road: its params become a :class:`Candidate` (``candidate``), which
:func:`resolve` turns, with the study's payload, into one :class:`Edit` (``resolve``) that
:meth:`Baker.bake` applies (``bake``). Direction methods and interventions are registered
implementations of one small contract each (``registry``; the built-ins in ``methods`` and
``interventions``).

Knows nothing of Optuna or databases. The names below are imported on first use, so that
``ablation.errors`` (or the CLI's ``--help``) does not pull in torch and transformers.
"""

import importlib

_EXPORTS = {
    "ATTN": "architectures", "MLP": "architectures", "Writer": "architectures", "find_writers": "architectures", "find_readers": "readers",
    "Baker": "bake", "BakeReport": "bake", "Edit": "bake", "Amplification": "bake",
    "Candidate": "candidate", "candidate_from_params": "candidate",
    "resolve": "resolve", "edit_for_params": "resolve",
    "AblationError": "errors", "ModelLoadError": "errors", "UnsupportedLayout": "errors",
    "export_checkpoint": "export",
    "LoadedModel": "loading", "load_model": "loading",
    "Kernel": "profile", "Profile": "profile",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'abliterate.ablation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"abliterate.ablation.{_EXPORTS[name]}"), name)
