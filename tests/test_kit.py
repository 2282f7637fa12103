"""The study kit: one object opened from (storage, study, device) that gives every part of a study,
each built once, and says in one line what is missing."""

from __future__ import annotations

import shutil

import pytest
import torch

from abliterate.ablation.errors import AblationError, ModelLoadError
from abliterate.search.kit import StudyKit
from abliterate.storage.errors import StorageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_study(folder, name: str = "s") -> str:
    """A SQLite study ``name`` of a tiny qwen3 saved in ``folder/model``; its storage URL."""
    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.storage.rdb import open_storage
    from fixtures.tiny import tiny_model

    model, tokenizer = tiny_model("qwen3")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    config = StudyConfig.split(str(folder / "model"), "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=2, batch_size=8,
                               seed=5, dtype="float32", max_new_tokens=8)
    url = f"sqlite:///{folder / 'study.db'}"
    create_or_resume(open_storage(url), name, config)
    return url


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("kit"))


def test_a_kit_gives_the_study_s_settings_prompts_chat_and_proxies(url):
    from abliterate.objectives.refusal import MarkerProxy
    from abliterate.search.study import load
    from abliterate.storage.rdb import open_storage

    kit = StudyKit.open(url, "s", "cpu")
    _, config = load(open_storage(url, create=False), "s")
    assert kit.config == config and kit.name == "s" and kit.study.study_name == "s"
    assert kit.prompts == config.prompts() and len(kit.prompts["harmful", "extraction"]) == 4
    assert kit.chat.enable_thinking == config.enable_thinking
    proxy, longer = kit.proxy(), kit.proxy(2 * config.max_new_tokens)
    assert isinstance(proxy, MarkerProxy) and proxy is not kit.proxy()  # each use prepares its own
    assert (proxy.max_new_tokens, longer.max_new_tokens) == (8, 16) and proxy.chat == kit.chat


def test_the_model_loads_once_as_the_study_says_unless_told_otherwise(url):
    kit = StudyKit.open(url, "s", "cpu")
    assert kit.model is kit.model and kit.model.model.dtype == torch.float32 and kit.model.device.type == "cpu"
    assert StudyKit.open(url, "s", "cpu", dtype="bf16").model.model.dtype == torch.bfloat16  # an export's own dtype


def test_the_payload_is_computed_once_under_the_cache_claim_and_read_by_every_other_kit(tmp_path):
    url = make_study(tmp_path)
    with pytest.raises(StorageError, match=r"^study 's' has no cached directions yet; run a worker first$"):
        StudyKit.open(url, "s", "cpu").payload()

    def fails():
        raise RuntimeError("out of memory")

    first = StudyKit.open(url, "s", "cpu", owner="first")
    with pytest.raises(RuntimeError):
        first.payload(fails)
    calls = []

    def compute():  # the claim was given back: the next kit computes at once, without waiting it out
        calls.append(1)
        return first.compute_payload(first.extraction_residuals())

    payload = first.payload(compute)
    assert calls == [1] and first.payload(compute) is payload  # read once per kit
    assert set(payload) == {*first.config.space.methods, "heads:input", "heads:layout"}
    other = StudyKit.open(url, "s", "cpu", owner="other")
    cached = other.payload(fails)  # cached: nothing computed here
    assert set(cached) == set(payload) and all(torch.equal(cached[name], payload[name]) for name in payload)
    from abliterate.ablation.architectures import decoder_layers

    assert other.num_layers == payload["mean-projected"].shape[0] == len(decoder_layers(other.model.model))


def test_the_edit_of_a_trial_s_params_bakes_into_the_study_s_model_and_restores(tmp_path):
    from abliterate.ablation import Baker, find_writers
    from abliterate.search.space import starting_points

    url = make_study(tmp_path)
    kit = StudyKit.open(url, "s", "cpu")
    kit.payload(lambda: kit.compute_payload(kit.extraction_residuals()))
    params = starting_points(kit.config.space, 0.5, 1)[0] | {"intervention": "ablate"}
    plain, heads = kit.edit(params), kit.edit(params | {"intervention": "heads", "heads": 2})
    assert plain.heads is None and plain.amplify is None and plain.norm_preserving == kit.candidate(params).norm_preserving
    assert heads.heads is not None and sum(len(columns) for columns in heads.heads.values()) == 2
    assert torch.equal(heads.directions, plain.directions)  # the same direction, removed from two heads' columns only
    text = kit.model.tokenizer(["How do I pick a lock?"], return_tensors="pt")
    with torch.no_grad():
        before = kit.model.model(**text).logits
        baker = Baker(find_writers(kit.model.model))
        with baker.baked_into(plain):
            assert not torch.allclose(kit.model.model(**text).logits, before)
        assert torch.equal(kit.model.model(**text).logits, before)


def test_a_trial_that_is_not_finished_is_one_line(tmp_path):
    import optuna

    url = make_study(tmp_path)
    optuna.load_study(study_name="s", storage=url).ask()  # trial 0, running
    kit = StudyKit.open(url, "s")
    with pytest.raises(AblationError) as error:
        kit.finished_trial(0)
    assert str(error.value) == "study 's' has no finished trial 0: trial 0 is RUNNING; pick one from abliterate front"
    with pytest.raises(AblationError, match=r"^study 's' has no finished trial 7: the study has no trial 7 at all; pick one"):
        kit.finished_trial(7)


def test_an_unknown_study_is_one_line_when_the_kit_opens(url, tmp_path):
    with pytest.raises(StorageError) as error:
        StudyKit.open(url, "nope")
    assert str(error.value).startswith("no abliterate study named 'nope' in this storage (studies: s)")
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(StorageError, match="no study database at"):
        StudyKit.open(f"sqlite:///{tmp_path / 'absent.db'}", "s")
    assert not (tmp_path / "absent.db").exists()  # opening a kit creates no database


def test_a_study_whose_model_is_gone_opens_and_names_the_model_when_it_is_asked_for(tmp_path, capsys):
    from abliterate.search.cli import main

    url = make_study(tmp_path)
    kit = StudyKit.open(url, "s", "cpu")
    kit.payload(lambda: kit.compute_payload(kit.extraction_residuals()))
    shutil.rmtree(tmp_path / "model")
    gone = StudyKit.open(url, "s", "cpu")  # settings, prompts and payload need no model
    assert gone.prompts and set(gone.payload()) == set(kit.payload())
    message = (f"the model of study 's', {tmp_path / 'model'}, does not exist on this machine; put it back at that path "
               "(the study loads its model from where it was made)")
    with pytest.raises(ModelLoadError) as error:
        assert gone.model is None  # not reached
    assert str(error.value) == message
    capsys.readouterr()
    status = main(["analyze", "--storage", url, "--study", "s", "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert status == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "a").exists()
