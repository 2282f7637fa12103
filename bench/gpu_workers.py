"""Trials per hour with one and with two workers on one device, sharing a SQLite study (bench/gpu.py).

Each study is made and worked through the real commands (``abliterate search --workers 0``, then
``abliterate worker`` processes), on the benchmark model saved as a folder, with the benchmark's
prompts and answer length, and the KL cap out of reach so every trial runs its refusal pass.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker_scaling(bench, deadline: float) -> dict:
    plan = bench.plan
    out = {"save_model_s": None}
    model = bench.saved_model()
    out["save_model_s"] = bench.saved["seconds"]
    files = bench.prompt_files()
    batch_size = plan.batch_sizes[len(plan.batch_sizes) // 2]
    out["batch_size"] = batch_size
    runs = ((1, plan.worker_trials[0], 0.4), (2, plan.worker_trials[1], 1.0))  # shares of the time still left
    for workers, trials, share in runs:
        now = time.time()
        until = now + max(0.0, deadline - now) * share
        out[f"{workers}_worker{'s' if workers > 1 else ''}"] = run_study(bench, model, files, workers, trials, batch_size, until)
    one, two = out["1_worker"].get("trials_per_hour"), out["2_workers"].get("trials_per_hour")
    out["two_over_one"] = round(two / one, 2) if one and two else None
    return out


def run_study(bench, model: Path, files: dict[str, Path], workers: int, trials: int, batch_size: int, until: float) -> dict:
    """A fresh study worked by ``workers`` processes until it has ``trials`` finished trials or
    ``until`` comes (then they are stopped); its trial timestamps give the rates."""
    plan = bench.plan
    storage = f"sqlite:///{bench.workdir / f'workers-{workers}.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "PYTHONUNBUFFERED": "1"}
    dtype = "bf16" if bench.device.startswith("cuda") else "fp32"
    create = [sys.executable, "-m", "abliterate", "search", "--model", str(model), "--dtype", dtype, "--workers", "0",
              "--harmful", str(files["harmful"]), "--harmless", str(files["harmless"]),
              "--split", f"{plan.extraction},{plan.evaluation},1", "--storage", storage, "--study", "bench",
              "--trials", str(trials), "--kl-cap", "1e9", "--max-new-tokens", str(plan.new_tokens),
              "--batch-size", str(batch_size), "--seed", "0", "--no-thinking"]
    made = subprocess.run(create, env=env, capture_output=True, text=True)
    if made.returncode:
        return {"error": f"creating the study failed: {_last_line(made.stderr)}"}
    command = [sys.executable, "-m", "abliterate", "worker", "--storage", storage, "--study", "bench", "--device", bench.device]
    if bench.device == "cpu":  # workers sharing the cores each get their share, as `abliterate search` does
        command += ["--threads", str(max(1, (os.cpu_count() or 1) // workers))]
    logs = [open(bench.workdir / f"workers-{workers}-{i}.log", "w") for i in range(workers)]
    launched = time.time()
    processes = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    stopped = False
    while any(p.poll() is None for p in processes):
        if time.time() >= until:
            stopped = True
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait()
            break
        time.sleep(0.5)
    elapsed = time.time() - launched
    for log in logs:
        log.close()
    out = _rates(storage, launched, elapsed)
    out |= {"workers": workers, "trials_asked": trials, "stopped_at_the_deadline": stopped,
            "exit_codes": [p.returncode for p in processes]}
    failed = [i for i, p in enumerate(processes) if p.returncode not in (0, None) and not stopped]
    if failed:
        out["error"] = _last_line((bench.workdir / f"workers-{workers}-{failed[0]}.log").read_text())
    return out


def _rates(storage: str, launched: float, elapsed: float) -> dict:
    """Trials per hour once trials run (first start to last completion) and over the whole run."""
    import optuna

    from abliterate.storage.records import TrialRecord

    study = optuna.load_study(study_name="bench", storage=storage)
    # a pruned trial ran until it could no longer reach the front, and counts as finished
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    out = {"completed": len(done), "pruned": sum(t.state.name == "PRUNED" for t in done), "wall_s": round(elapsed, 1)}
    if not done:
        return out
    first = min(t.datetime_start for t in done).timestamp()
    span = max(t.datetime_complete for t in done).timestamp() - first
    out |= {"start_to_first_trial_s": round(first - launched, 1),
            "trials_per_hour": round(len(done) / span * 3600, 1) if span > 0 else None,
            "trials_per_hour_whole_run": round(len(done) / elapsed * 3600, 1),
            "median_trial_s": round(statistics.median(TrialRecord.of(t).seconds_total or 0.0 for t in done), 2)}
    return out


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
