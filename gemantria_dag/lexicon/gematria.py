"""Standard gematria (mispar hechrechi): final letters count as their regular forms."""

from __future__ import annotations

from hebrew import Hebrew

from gemantria_dag.lexicon.nouns import consonantal_form

HEBREW_LETTERS = "אבגדהוזחטיכלמנסעפצקרשת"


def gematria(text: str) -> int:
    """Value of the Hebrew letters in `text`; points, cantillation and non-letters are ignored."""
    letters = consonantal_form(text)
    if not any("\u05d0" <= ch <= "\u05ea" for ch in letters):
        raise ValueError(f"no Hebrew letters in {text!r}")
    return int(Hebrew(letters).gematria())


# Letters written differently at the end of a word partition with their regular form.
FINAL_TO_REGULAR = str.maketrans("ךםןףץ", "כמנפצ")


def first_letter(text: str) -> str:
    """The first Hebrew letter of `text`, a final form as its regular one (a noun's partition);
    raises ValueError when `text` has no Hebrew letter."""
    letters = [ch for ch in consonantal_form(text) if "\u05d0" <= ch <= "\u05ea"]
    if not letters:
        raise ValueError(f"no Hebrew letters in {text!r}")
    return letters[0].translate(FINAL_TO_REGULAR)
