"""The values plugins hand the core are made fit to use where they enter."""

from distil_core import Feedback


def test_feedback_text_holding_half_a_character_is_made_whole_where_it_enters():
    """A tool call's JSON ``"\\ud83d"`` or a critic's reply can carry a lone surrogate into the
    feedback; before, the expert context built from it could not be tokenized (a TypeError
    mid-step)."""
    item = Feedback(source="tools", kind="tool_output", text="2+2 \ud83d and \U0001F600")
    assert item.text == "2+2 \ufffd and \U0001F600"
    item.text.encode("utf-8")
