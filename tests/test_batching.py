"""--batch-size auto: the peak memory of a row, the rows that fit, and a worker that chooses and says so."""

import argparse
from types import SimpleNamespace

import pytest

from abliterate.objectives.batching import fitting_batch, row_bytes
from abliterate.search.values import AUTO_BATCH, batch_size


def test_a_rows_peak_is_its_cache_its_widest_activation_and_its_logits():
    config = SimpleNamespace(num_attention_heads=4, hidden_size=64, num_key_value_heads=2, head_dim=16, num_hidden_layers=3,
                             intermediate_size=96, vocab_size=1000)
    cache = 2 * 3 * 2 * 16 * 2 * 10  # keys and values, 3 layers, 2 heads of 16, bf16, 10 tokens
    activations = 3 * 10 * 256 * 2  # the widest is 4 x hidden (256) over the MLP's 96
    logits = 2 * 1 * 1000 * 4
    assert row_bytes(config, tokens=10, kept_positions=1, dtype_bytes=2) == cache + activations + logits
    moe = SimpleNamespace(**vars(config), moe_intermediate_size=200, num_experts_per_tok=2)
    assert row_bytes(moe, 10, 1, 2) == cache + 3 * 10 * 400 * 2 + logits  # two routed experts of 200


def test_the_batch_is_what_fits_in_half_the_free_memory_within_the_largest_set():
    assert fitting_batch(free_bytes=1000, per_row=100, rows=64) == 5
    assert fitting_batch(free_bytes=10**12, per_row=100, rows=64) == 64
    assert fitting_batch(free_bytes=10, per_row=100, rows=64) == 1  # one row, whatever memory says


def test_the_flag_takes_auto_or_a_count():
    assert batch_size("auto") == batch_size("AUTO") == AUTO_BATCH
    assert batch_size("32") == 32
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        batch_size("0")


def test_a_worker_of_an_auto_study_chooses_its_batch_and_says_so(tmp_path, saved_tiny):
    from abliterate.search.study import StudyConfig, create_or_resume, load
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    config = StudyConfig.split(str(saved_tiny("qwen3")), "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=1, batch_size=AUTO_BATCH,
                               max_new_tokens=4, starting_points=1)
    create_or_resume(open_storage(url), "s", config)
    said = []
    assert run_worker(url, "s", device="cpu", log=said.append) == 1
    chosen = [line for line in said if "(auto):" in line]
    # a tiny model in gigabytes of memory: every prompt of the largest set (6) in one batch
    assert len(chosen) == 1 and "batch size 6 (auto)" in chosen[0] and "every prompt of the largest set" in chosen[0]
    assert load(open_storage(url), "s")[1].batch_size == AUTO_BATCH  # the study keeps auto: each worker chooses its own


def test_a_negative_batch_size_is_one_line():
    from abliterate.ablation.errors import AblationError
    from abliterate.search.study import StudyConfig

    with pytest.raises(AblationError, match=r"at least 1, or auto; got -2 \(--batch-size\)"):
        StudyConfig.split("m", "demo-harmful", "demo-harmless", (4, 6, 6), batch_size=-2)
