from __future__ import annotations

import pytest

from gemantria_dag.lexicon.gematria import first_letter, gematria
from gemantria_dag.lexicon.nouns import consonantal_form, short_gloss


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("אב", 3),
        ("אלהים", 86),
        ("ישראל", 541),
        ("אֱלֹהִים", 86),  # points ignored
        ("מֶלֶךְ", 90),  # final kaf valued as kaf (20)
        ("אָדָם", 45),  # final mem valued as mem (40)
        ("שָׁלוֹם", 376),
        ("תּוֹרָה", 611),
        ("בְּרֵאשִׁ֖ית", 913),  # cantillation ignored
    ],
)
def test_standard_gematria(word: str, value: int) -> None:
    assert gematria(word) == value


def test_final_letters_count_as_regular_forms() -> None:
    assert gematria("ך") == gematria("כ") == 20
    assert gematria("ם") == gematria("מ") == 40
    assert gematria("ן") == 50 and gematria("ף") == 80 and gematria("ץ") == 90


def test_no_hebrew_letters_is_an_error() -> None:
    with pytest.raises(ValueError, match="no Hebrew letters"):
        gematria("abc")


def test_first_letter_and_forms() -> None:
    assert first_letter("אֱלֹהִים") == "א"
    assert consonantal_form("אֱלֹהִים") == "אלהים"
    assert short_gloss("1) father of an individual\n2) of God") == "father of an individual"
