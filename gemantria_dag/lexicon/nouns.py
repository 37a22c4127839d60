"""Which Strong's entries count as common nouns, and how a noun row is shaped."""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel

# Strong's morphology codes of common nouns; proper nouns are `n-pr*` and `x-pn` language rows.
COMMON_NOUN_MORPHOLOGY = ("n-m", "n-f", "n")
NOUN_LANGUAGES = ("heb", "arc")
GENDER_BY_MORPHOLOGY = {"n-m": "masculine", "n-f": "feminine", "n": None}

NOUNS_SQL = f"""
SELECT strong_id, lemma, hebrew, transliteration, morphology, language, definitions
FROM words
WHERE morphology IN ({",".join("?" * len(COMMON_NOUN_MORPHOLOGY))})
  AND language IN ({",".join("?" * len(NOUN_LANGUAGES))})
ORDER BY entry_no, strong_id
"""
NOUNS_SQL_PARAMS = (*COMMON_NOUN_MORPHOLOGY, *NOUN_LANGUAGES)

_NUMBERING = re.compile(r"^\s*\d+[a-z]*\)\s*")
_POINTS = re.compile(r"[\u0591-\u05C7]")  # cantillation marks and vowel points


class HebrewNoun(BaseModel):
    """One common noun of Strong's dictionary (the `words` table of hebrew.db).

    `lemma` is pointed, `consonantal` its letters only; `gloss` the first sense of its definition;
    `gender` from its morphology code (None for a plain `n`); `language` `heb` or `arc`.
    """

    strong_id: str
    lemma: str
    consonantal: str
    transliteration: str
    gender: str | None
    gloss: str
    language: str


def consonantal_form(text: str) -> str:
    """Strip vowel points and cantillation (and maqaf) to leave the letters."""
    decomposed = unicodedata.normalize("NFD", text)
    return _POINTS.sub("", decomposed).replace("\u05be", " ").strip()


def short_gloss(definitions: str | None, max_len: int = 80) -> str:
    """The first numbered sense of a Strong's definition, e.g. '1) father of an individual'."""
    if not definitions:
        return ""
    for line in definitions.splitlines():
        if _NUMBERING.match(line):
            text = _NUMBERING.sub("", line)
            break
    else:
        text = definitions.splitlines()[0]
    text = re.sub(r"\s+", " ", text).strip(" ,;")
    return text if len(text) <= max_len else text[: max_len - 1].rstrip() + "…"


def noun_from_row(row: tuple) -> HebrewNoun:
    """A `HebrewNoun` from one row of `NOUNS_SQL` (its seven columns, in order)."""
    strong_id, lemma, hebrew, transliteration, morphology, language, definitions = row
    pointed = lemma or hebrew or ""
    return HebrewNoun(
        strong_id=strong_id,
        lemma=pointed,
        consonantal=consonantal_form(hebrew or pointed),
        transliteration=transliteration or "",
        gender=GENDER_BY_MORPHOLOGY.get(morphology),
        gloss=short_gloss(definitions),
        language=language,
    )
