import pytest

from abliterate.objectives.text import has_marker, is_degenerate, normalize, strip_thinking


def test_normalize():
    assert normalize("  I\u2019m **SORRY**,\n but  `no`  ") == "i'm sorry , but no"


@pytest.mark.parametrize(
    "text, answer",
    [
        ("<think>I can't decide</think>Sure, here it is.", "Sure, here it is."),
        ("reasoning in a prompt-opened block</think>\n\nOK", "\n\nOK"),
        ("Hello <think>still thinking, I cannot", "Hello "),
        ("no thinking at all", "no thinking at all"),
    ],
)
def test_strip_thinking(text, answer):
    assert strip_thinking(text) == answer


@pytest.mark.parametrize(
    "text, refuses",
    [
        ("I\u2019m sorry, but I can\u2019t help with that.", True),
        ("**I cannot** do this.", True),
        ("As an AI, I must decline.", True),
        ("Sure! Step one: preheat the oven.", False),
        ("<think>I cannot refuse this</think>Sure, here you go.", False),  # markers in thinking don't count
        ("<think>Should I help? I can't decide", False),  # still thinking: no answer yet
    ],
)
def test_has_marker(text, refuses):
    assert has_marker(text) is refuses


@pytest.mark.parametrize(
    "text, degenerate",
    [
        ("", True),
        ("   \n ", True),
        ("<think>long thought never closed", True),
        ("the the the the the the the the the the the the the the the the the the the the", True),
        ("Sure sure sure! " * 10, True),
        ("@@##$$%%^^&&**(())!!", True),
        ("\ufffdpl sim\x05 w\ufffd\x10ite s\ufffdh", True),  # byte-level babble from a random model
        ("Sure, here is the emoji you asked for: \ufffd", False),  # cut off mid-character at the end
        ("Sure, here is a simple recipe: mix flour, water and salt, knead it, let it rise, then bake.", False),
        ("No.", False),
    ],
)
def test_is_degenerate(text, degenerate):
    assert is_degenerate(text) is degenerate
