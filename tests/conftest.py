import functools

import pytest
import transformers

transformers.logging.set_verbosity_error()


@functools.cache
def _tiny(model_type: str):
    from ablation.tiny import tiny_model

    return tiny_model(model_type)


@pytest.fixture
def tiny():
    """tiny(model_type) -> (model, tokenizer), a fresh random model per call."""
    from ablation.tiny import tiny_model

    return tiny_model
