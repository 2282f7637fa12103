import glob
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from importlib import metadata
from pathlib import Path

import pytest
import sqlalchemy
import transformers

transformers.logging.set_verbosity_error()


# A shell that starts the suite in the background (``pytest &``) hands it SIGINT ignored, and
# every process a test starts inherits that: Python then installs no Ctrl-C handler, and a test
# that interrupts a command waits forever. The suite restores it, whatever started it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def tiny():
    """tiny(model_type) -> (model, tokenizer), a fresh random model per call."""
    from fixtures.tiny import tiny_model

    return tiny_model


@pytest.fixture
def saved_tiny(tmp_path, tiny):
    """saved_tiny(model_type) -> the folder tmp_path/model holding a fresh tiny model and its tokenizer."""
    def save(model_type: str):
        model, tokenizer = tiny(model_type)
        model.save_pretrained(tmp_path / "model")
        tokenizer.save_pretrained(tmp_path / "model")
        return tmp_path / "model"
    return save


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


class Cluster:
    """A PostgreSQL server of one test's own (trust authentication, database ``test``), which the
    test may stop and start at will. It runs as the user postgres, in a folder that user owns."""

    def __init__(self, bin_dir: Path, folder: Path, port: int):
        self.bin_dir, self.folder, self.port = bin_dir, folder, port
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin_dir / program), *args], check=True,
                       capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-w", *args)

    def start(self) -> None:
        self._ctl("-l", str(self.folder / "log"), "-o", f"-p {self.port} -k {self.folder} -h 127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        """Stop the server (mode fast: open connections are cut, as in a restart)."""
        self._ctl("-m", "fast", "stop")


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own on a free port, to restart under running workers:
    the machine's server serves other tests at the same time and is never restarted."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's server programs (/usr/lib/postgresql/*/bin) and runuser")
    folder = Path(tempfile.mkdtemp(prefix="abl-pg-"))
    shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = Cluster(Path(bins[-1]).parent, folder, port)
    try:
        cluster._run("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        cluster.start()
        cluster._run("createdb", "-h", "127.0.0.1", "-p", str(port), "test")
        yield cluster
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(cluster.bin_dir / "pg_ctl"), "-D", str(folder / "data"),
                        "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


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
    from abliterate.ablation import load_model
    from abliterate.objectives.refuser import refuser_path

    return load_model(str(refuser_path()), dtype="float32", device="cpu")
