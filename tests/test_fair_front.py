"""bench/fair_front.py end to end on a tiny model built from a config: our real search in a
subprocess, the protocol's candidates, the common evaluation's records, and the report.

No peer is installed here (Heretic and Abliterix need venvs of their own), so the report is
checked against a peer whose record is a copy of ours: a copy must compare as equal in every
bootstrap draw (hypervolume difference 0, KL ratio 1).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from fair_protocol import PROTOCOL, candidates  # noqa: E402

SEARCH_SETS = {  # prompt_files' names; small slices keep the tiny search to seconds
    "harmful_extraction": "advbench[0:8]", "harmless_extraction": "rho-benign[0:8]",
    "harmful_evaluation": "advbench[8:14]", "harmless_evaluation": "rho-benign[8:14]",
    "harmful_heldout": "advbench[14:16]", "edgy_heldout": "rho-edgy[0:2]",
    "harmful_confirmation": "advbench[16:20]", "harmless_confirmation": "rho-benign[14:18]",
}
HELD_OUT = {"harmful": "rho-harmful[0:6]", "harmless": "aplomb-benign[0:5]", "edgy": "rho-edgy[90:94]"}


def _write_prompts(folder: Path) -> None:
    from abliterate.objectives.prompts import load_prompts

    folder.mkdir(parents=True)
    for name, spec in SEARCH_SETS.items():
        (folder / f"{name}.txt").write_text("\n".join(load_prompts(spec)) + "\n")
    for name, spec in HELD_OUT.items():
        (folder / f"heldout-p{PROTOCOL}-{name}.txt").write_text("\n".join(load_prompts(spec)) + "\n")


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/fair_front.py", *args], cwd=REPO, capture_output=True, text=True)


def test_a_run_keeps_per_prompt_records_and_a_copied_peer_compares_as_equal(tmp_path, saved_tiny):
    model = saved_tiny("qwen2")
    work, record = tmp_path / "work", tmp_path / "record"
    _write_prompts(work / "prompts")
    places = ["--work", str(work), "--record", str(record)]
    done = _bench("run", "--model", str(model), "--tools", "ours,ours-tpe", "--budget", "3", "--seeds", "1",
                  "--candidates", "2", "--threads", "1", *places)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    base = json.loads((record / "model" / "base.json").read_text())
    assert base["kl"] == [0.0] * 5  # the base against itself
    assert set(base["refused"]["harmful"]) == {"markers", "embed"} and len(base["answers"]["harmful"]) == 6
    kept = record / "model" / "ours-b3-s1"
    trials = json.loads((kept / "trials.json").read_text())
    assert (trials["tool"], trials["budget"], trials["threads"], len(trials["trials"])) == ("ours", 3, 1, 3)
    assert trials["cpu_seconds"] > 0 and trials["cpu"]  # the CPU's model name: runs compared cleanly share one
    assert {t["total"] for t in trials["trials"]} == {6}  # the search read the prompt files written above
    evaluation = json.loads((kept / "evaluation.json").read_text())
    chosen = [str(t["number"]) for t in candidates(trials["trials"], 2)]
    assert chosen and sorted(evaluation["candidates"]) == sorted(chosen)
    for scored in evaluation["candidates"].values():
        assert len(scored["kl"]) == 5 and len(scored["refused"]["harmful"]["markers"]) == 6
        assert len(scored["answers"]["edgy"]) == 4
    assert not any(Path(t["saved"]).exists() for t in trials["trials"] if t.get("saved"))  # evaluated, then deleted

    # a checkpoint that is gone (another machine) is baked again from the study kept beside the record
    assert (kept / "study.db").exists()
    first = chosen[0]
    (kept / "evaluation.json").write_text(json.dumps({**evaluation, "candidates": {
        n: c for n, c in evaluation["candidates"].items() if n != first}}))
    shutil.rmtree(work / "model" / "ours-b3-s1")
    again = _bench("run", "--model", str(model), "--tools", "ours", "--budget", "3", "--seeds", "1",
                   "--candidates", "2", "--threads", "1", *places)
    assert again.returncode == 0 and f"baking trial {first} again from the kept study" in again.stdout, again.stderr[-3000:]
    assert json.loads((kept / "evaluation.json").read_text())["candidates"][first] == evaluation["candidates"][first]
    # the variant without designed starting trials: its study queued none, ours' began with them
    assert json.loads((record / "model" / "ours-tpe-b3-s1" / "trials.json").read_text())["config"] == {"starting_points": 0}
    assert _starting_points(work / "model" / "ours-b3-s1") == [True] * 3
    assert _starting_points(work / "model" / "ours-tpe-b3-s1") == [False] * 3

    # a judge that joins later reads the kept answers: rejudge gives back exactly the verdicts taken away
    judged = {f: json.loads(f.read_text()) for f in (record / "model" / "base.json", kept / "evaluation.json")}
    for file, content in judged.items():
        stripped = json.loads(json.dumps(content))
        del stripped["judges"]["embed"]
        for entry in [stripped] if "answers" in stripped else stripped["candidates"].values():
            for part in entry["refused"].values():
                del part["embed"]
        file.write_text(json.dumps(stripped))
    again = _bench("rejudge", *places)
    assert again.returncode == 0 and "model: 2 of 3 records given the verdicts" in again.stdout, again.stderr[-2000:]
    assert {f: json.loads(f.read_text()) for f in judged} == judged

    peer = record / "model" / "peer-b3-s1"
    shutil.copytree(kept, peer)
    (peer / "trials.json").write_text(json.dumps({**trials, "tool": "peer"}))
    shown = _bench("report", "--budget", "3", "--draws", "50", *places)
    assert shown.returncode == 0, shown.stderr[-3000:]
    rows = json.loads((record / "report-b3.json").read_text())
    assert [r["judge"] for r in rows] == ["markers", "embed"]
    row = rows[0]
    assert row["seed"] == 1
    difference = row["peers"]["peer"]["hypervolume_difference"]
    assert difference == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    assert row["tools"]["peer"]["kl_at_lowest"] > 0  # an edit moves the tiny model
    assert row["peers"]["peer"]["kl_ratio"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    assert "| model (local) | 1 | markers |" in shown.stdout
    assert (record / "report-b3.md").read_text().strip() == shown.stdout.strip()
    assert "ours-tpe" in row["peers"]  # a variant of ours is compared like a peer, and counted apart from the peers
    assert "markers, local models: our hypervolume at or above the variant's on 1 of 1" in shown.stdout
    assert "markers, local models: our hypervolume at or above the peer's on 1 of 1" in shown.stdout
    assert ("- markers, model, ours-tpe: ours minus ours-tpe in hypervolume, by seed: s1 "
            f"{row['peers']['ours-tpe']['hypervolume_difference']['estimate']:.3f}") in shown.stdout
    assert f"- {trials['cpu']}: model ours s1, model ours-tpe s1, model peer s1" in shown.stdout


def _starting_points(run_dir: Path) -> list[bool]:
    import optuna

    from abliterate.storage.records import TrialRecord

    study = optuna.load_study(study_name="front", storage=f"sqlite:///{run_dir / 'study.db'}")
    ran = [t for t in study.trials if t.state.is_finished()]  # designed points past the budget stay queued
    return [bool(TrialRecord.of(t).starting_point) for t in ran]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    places = ["--work", str(tmp_path / "work"), "--record", str(tmp_path / "record")]
    model = tmp_path / "model"  # passes the folder check; nothing may be loaded or written before the temaq one
    model.mkdir()
    (model / "config.json").write_text("{}")
    for args, message in (
        (("--tools", "ours,nobody"), "unknown tool 'nobody'; pick from ours, ours-tpe, ours-measured, ours-embed, ours-winsorized, ours-median, ours-screen, "
                                              "ours-screen-margin, ours-read, ours-read-only, ours-capability, heretic, abliterix, temaq"),
        (("--tools", "ours", "--candidates", "0"), "--candidates 0: give a positive number of front trials, or 'all'"),
        (("--tools", "ours,heretic", "--dtype", "fp32", "--heretic-python", sys.executable),
         "--dtype fp32 runs variants of ours only, and heretic searches in its own dtype"),
        (("--tools", "ours", "--model", str(tmp_path / "missing")), f"no model at {tmp_path / 'missing'}"),
        (("--tools", "temaq,ours", "--temaq-python", sys.executable, "--model", str(model)),
         "temaq gets the CPU seconds of our search at the same seed, and seed 1 has none"),
    ):
        done = _bench("run", *args, *places)
        assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_records_of_one_model_keep_one_dtype(tmp_path):
    """A record from before --dtype was bf16; an fp32 run may not add to it (its base is another)."""
    import pytest
    from fair_front import _same_rules

    rules = {"protocol": PROTOCOL, "held_out": {}, "judges": {"markers": "x"}}
    (tmp_path / "base.json").write_text(json.dumps(rules))
    _same_rules(tmp_path / "base.json", {**rules, "dtype": "bf16"})
    with pytest.raises(SystemExit, match="was made in bf16, this run in fp32; run with --dtype bf16"):
        _same_rules(tmp_path / "base.json", {**rules, "dtype": "fp32"})
