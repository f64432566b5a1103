"""distil_core.text.as_text: the one repair for strings that hold what is not text, used where
such text enters (trackers, the review desk, code to be run)."""

import os

import pytest

from distil_core.text import SURROGATE, as_text


@pytest.mark.parametrize("given, expected", [
    ("plain ✓ 😀", "plain ✓ 😀"),
    ("half an emoji \ud83d", "half an emoji \ufffd"),
    ("\ude00 low half first", "\ufffd low half first"),
    ("\ud83d\ude00", "😀"),  # a pair written as two code points is the character it spells
    ("caf\udcc3\udca9", "café"),  # UTF-8 bytes smuggled in by surrogateescape, re-read
    ("bad byte \udcff", "bad byte \ufffd"),  # a smuggled byte that is not UTF-8
])
def test_as_text_gives_text_every_utf8_encoder_takes(given, expected):
    out = as_text(given)
    assert out == expected
    out.encode("utf-8")  # never raises
    assert not SURROGATE.search(out)


def test_text_without_surrogates_is_returned_as_it_is():
    value = "unchanged " * 3
    assert as_text(value) is value


def test_a_path_read_with_surrogateescape_comes_back_as_its_characters():
    raw = "naïve/ünïcode".encode("utf-8")
    assert as_text(os.fsdecode(raw)) == "naïve/ünïcode"
