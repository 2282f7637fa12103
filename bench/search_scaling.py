"""Trials per hour with 1 and 2 workers, and the per-trial overhead outside the objective.

    python bench/search_scaling.py [--trials 40] [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test]

Runs the demo study (the shipped refusing model and its prompt sets, search only) from scratch
with one worker, then with two, on SQLite and (if given) PostgreSQL, side by side in one run. Overhead
per trial is each trial's wall time in the storage (start to complete) minus the time its
objective measured: database round trips plus the sampler.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import optuna
import sqlalchemy

from abliterate.storage.records import TrialRecord


def run(storage: str, workers: int, trials: int) -> tuple[float, float, float]:
    """(trials per hour over the whole command, trials per hour once trials run, median overhead
    seconds per trial) of one fresh demo study.

    The second rate counts from the first trial's start to the last one's completion, so it
    leaves out each worker's fixed start (imports, model load, base log-probs, directions).
    """
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "abliterate", "demo", "--storage", storage, "--trials", str(trials),
                    "--workers", str(workers), "--no-promote"], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    study = optuna.load_study(study_name="demo", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    overhead = [(t.datetime_complete - t.datetime_start).total_seconds() - TrialRecord.of(t).seconds_total for t in done]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done) / elapsed * 3600, len(done) / span * 3600, statistics.median(overhead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="admin URL of a PostgreSQL server to create a scratch database on")
    args = parser.parse_args()
    backends = {"sqlite": lambda: f"sqlite:///{tempfile.mkdtemp()}/bench.db"}
    if args.postgres:
        backends["postgresql"] = lambda: _scratch_database(args.postgres)
    print(f"demo study, {args.trials} trials from scratch each (includes model load and direction capture per run)")
    for name, make in backends.items():
        rates, steady = {}, {}
        for workers in (1, 2):
            rates[workers], steady[workers], overhead = run(make(), workers, args.trials)
            print(f"{name:>10}, {workers} worker{'s' if workers > 1 else ' '}: {rates[workers]:7.0f} trials/hour whole command, "
                  f"{steady[workers]:7.0f} once trials run, overhead {overhead * 1000:5.0f} ms/trial")
        print(f"{name:>10}: 2 workers / 1 worker = {rates[2] / rates[1]:.2f}x whole command, {steady[2] / steady[1]:.2f}x once trials run")


def _scratch_database(admin_url: str) -> str:
    name = f"abl_bench_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


if __name__ == "__main__":
    main()
