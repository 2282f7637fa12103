import uuid
from importlib import metadata

import pytest
import sqlalchemy
import transformers

transformers.logging.set_verbosity_error()


@pytest.fixture
def tiny():
    """tiny(model_type) -> (model, tokenizer), a fresh random model per call."""
    from ablation.tiny import tiny_model

    return tiny_model


ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"abl_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def no_registry_packages(monkeypatch):
    """No installed distribution can be found: presets must work after a plain install."""
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: as fast for the tiny models here, and many times faster when the CPU is
    shared (more threads than free cores make every matmul wait for the slowest one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def refuser():
    """The shipped refusing model, loaded once per module (float32, CPU)."""
    from ablation import load_model
    from objectives.refuser import refuser_path

    return load_model(str(refuser_path()), dtype="float32", device="cpu")
