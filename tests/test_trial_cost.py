"""bench/trial_cost.py's arithmetic: the screen's agreement with the judged count, the screen
margin chosen from it, and the table of a record (the run itself is a benchmark: bench/RESULTS.md)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from trial_cost import MARGINS, agreement, margin_table, margins, table  # noqa: E402


def floor(number, screen, kl, refusal, first=3):
    seconds = {"wall": 1.0, "cpu": 1.0}
    return {"number": number, "first_layer": first, "layers": 8, "kl": seconds, "screen": seconds, "kl_full": {"wall": 2.0, "cpu": 2.0},
            "screen_value": screen, "kl_value": kl, "refusal": refusal}


def test_agreement_counts_the_screens_false_dominance_claims():
    floors = [floor(0, 0.1, 0.01, 0.2), floor(1, 0.2, 0.02, 0.1), floor(2, 0.3, 0.03, 0.5)]
    # claims: 0 over 1 (judged 0.2 > 0.1: false), 0 over 2, 1 over 2 (both right)
    result = agreement(floors)
    assert result["dominance_claims"] == 3 and result["false_dominance"] == pytest.approx(1 / 3)
    assert result["spearman"] == pytest.approx(0.5)
    assert agreement(floors[:1])["spearman"] is None and agreement(floors[:1])["false_dominance"] is None


def test_the_table_of_a_record_gives_the_trial_against_its_floor():
    trials = [{"number": n, "feasible": True, "pruned": n == 1, "screen": 0.1, "refusal": None,
               "seconds": {"total": 4.0 + n, "cpu": 4.0 + n, "kl": 1.0}} for n in range(3)]
    record = {"model": "m", "screen": "record", "date": "2026-12-07", "machine": "cpu", "threads": 1, "code": "abc",
              "command": "python bench/trial_cost.py run", "trials": trials, "search": {"cpu_seconds": 30.0},
              "floors": [floor(0, 0.1, 0.01, 0.2), floor(1, 0.2, 0.02, 0.1), floor(2, 0.3, 0.03, 0.5)],
              "heretic": {"trials": 3, "wall_seconds": 300.0, "cpu_seconds": 300.0, "median_trial_seconds": 90.0}}
    text = table(record)
    assert "| median wall s per trial (feasible) | 5.00 | 2.00 | 90.00 |" in text
    assert "| whole search, CPU s per trial | 10.00 | | 100.00 |" in text
    assert "median trial over its floor: 2.5x" in text and "ours over Heretic's CPU per trial (whole searches): 0.100" in text
    assert "3 trials, 3 feasible, 1 pruned" in text


def test_the_margin_is_the_smallest_without_a_wrong_ruling():
    # trial 0 rules out 1 at margins below 4 % (wrongly: 1 refuses less) and 2 at any margin (rightly)
    floors = [floor(0, 0.50, 0.01, 0.2), floor(1, 0.52, 0.02, 0.1), floor(2, 0.80, 0.03, 0.5)]
    result = margins(floors)
    by = {row["margin"]: row for row in result["ladder"]}
    assert [row["margin"] for row in result["ladder"]] == list(MARGINS)
    assert (by[0.0]["rulings"], by[0.0]["wrong"], by[0.0]["wrong_pairs"]) == (3, 1, [[0, 1]])
    assert (by[0.03]["rulings"], by[0.03]["wrong"], by[0.03]["trials_ruled_out"]) == (3, 1, 2)
    assert (by[0.05]["rulings"], by[0.05]["wrong"], by[0.05]["trials_ruled_out"]) == (2, 0, 1)
    assert result["chosen"] == 0.05
    text = margin_table({"model": "m", "source": "r.json", "date": "2026-12-07", "code": "abc", "command": "c", **result})
    assert "| 0.05 | 2 | 0 | 1 of 3 |" in text and "Chosen: 0.05" in text
    always_wrong = margins([floor(0, 0.5, 0.01, 0.2), floor(1, 0.9, 0.02, 0.1)])  # 80 % apart, and wrong
    assert always_wrong["chosen"] is None
    assert "No margin of the ladder" in margin_table({"model": "m", "source": "r", "date": "d", "code": "c", "command": "c", **always_wrong})
