"""The compute-once artifact cache, with real worker processes on a real PostgreSQL."""

import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from abliterate.storage.cache import COMPUTING, ArtifactCache
from abliterate.storage.errors import StorageError
from abliterate.storage.rdb import open_storage
from abliterate.storage.tables import CachedArtifact

WORKER = textwrap.dedent("""
    import sys, time
    from abliterate.storage.cache import ArtifactCache
    from abliterate.storage.rdb import open_storage
    url, owner, log = sys.argv[1:4]
    def compute():
        with open(log, "a") as f:
            f.write(owner + "\\n")
        time.sleep(2)
        return b"directions from " + owner.encode()
    cache = ArtifactCache(open_storage(url).engine, "study", owner, stale_after=30, poll=0.2)
    print(cache.get_or_compute("directions", compute, timeout=3600).decode(), flush=True)
""")


def test_concurrent_workers_compute_once(postgres_url, tmp_path):
    open_storage(postgres_url)  # schema first, so the workers race only on the claim
    script, log = tmp_path / "worker.py", tmp_path / "computed.log"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    workers = [subprocess.Popen([sys.executable, str(script), postgres_url, f"w{i}", str(log)], stdout=subprocess.PIPE,
                                text=True, env=env) for i in range(3)]
    outputs = {w.communicate()[0].strip() for w in workers}
    assert all(w.returncode == 0 for w in workers)
    computed = log.read_text().split()
    assert len(computed) == 1 and outputs == {f"directions from {computed[0]}"}


def test_stale_claim_is_taken_over_and_fresh_one_waited_for(tmp_path):
    engine = open_storage(f"sqlite:///{tmp_path / 's.db'}").engine
    with Session(engine) as session:
        session.add(CachedArtifact(study="study", key="dead", status=COMPUTING, owner="crashed",
                                   updated_at=datetime.now(timezone.utc) - timedelta(hours=1)))
        session.add(CachedArtifact(study="study", key="busy", status=COMPUTING, owner="alive",
                                   updated_at=datetime.now(timezone.utc)))
        session.commit()
    cache = ArtifactCache(engine, "study", "me", stale_after=60, poll=0.05)
    assert cache.get_or_compute("dead", lambda: b"redone") == b"redone"
    assert cache.get("dead") == b"redone"
    with pytest.raises(StorageError, match="another worker is still computing"):
        cache.get_or_compute("busy", lambda: b"never", timeout=0.3)


def test_failed_compute_releases_claim_and_checksum_guards_payload(tmp_path):
    engine = open_storage(f"sqlite:///{tmp_path / 's.db'}").engine
    cache = ArtifactCache(engine, "study", "me", poll=0.05)

    def broken():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("k", broken)
    assert cache.get_or_compute("k", lambda: b"ok", timeout=1) == b"ok"
    with Session(engine) as session:
        session.query(CachedArtifact).filter_by(key="k").update({"payload": b"tampered"})
        session.commit()
    with pytest.raises(StorageError, match="checksum"):
        cache.get("k")
