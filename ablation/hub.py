"""Whether a model name that is not a local path can come from the Hugging Face hub, told at once.

Left to itself, a load of a name the hub cannot provide retries for about half a minute and logs
every retry when the hub is unreachable. :func:`hub_options` answers first, from the hub's cache
and one request without retries: the name loads from the hub, loads from the cache only, or is
refused in one line.
"""

from __future__ import annotations

from abliterate.ablation.errors import ModelLoadError, first_line

PROBE_SECONDS = 5.0  # one request to the hub's address; an answer of any kind means it is reachable


def hub_options(name: str, timeout: float = PROBE_SECONDS) -> dict:
    """The ``from_pretrained`` options that load hub model ``name``: none when the hub is reachable,
    ``local_files_only`` when it is not (or ``HF_HUB_OFFLINE`` is set) but the cache holds the model.

    Raises ``ModelLoadError`` (one line) when it is neither reachable nor cached.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    why: str | None
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    else:
        why = _unreachable(constants.ENDPOINT, timeout)
        if why is None:
            return {}
    if cached:
        return {"local_files_only": True}
    raise ModelLoadError(f"{name} is neither a local path nor a model available offline ({why} and the hub cache has "
                         "no copy); pass a model folder or a .gguf file, or download it where the hub is reachable")


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached, or None when it answers."""
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - refused, timed out, no DNS, TLS, proxy: all mean "not reachable from here"
        return f"the hub at {endpoint} is unreachable: {first_line(error, 120)}"
    return None
