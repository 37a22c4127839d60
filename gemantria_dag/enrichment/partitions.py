"""22 static partitions, one per letter of the Hebrew alphabet (final forms fold into their letter).

Letter names, not the letters themselves, are the keys: they are easy to type in a shell
(`--partition alef`) and read the same in any UI font. The split is uneven (mem has 700
nouns, vav 3) but it is the one a reader of a lexicon expects, and every key is stable.
"""

from __future__ import annotations

from dagster import StaticPartitionsDefinition

LETTER_NAMES: dict[str, str] = {
    "א": "alef",
    "ב": "bet",
    "ג": "gimel",
    "ד": "dalet",
    "ה": "he",
    "ו": "vav",
    "ז": "zayin",
    "ח": "het",
    "ט": "tet",
    "י": "yod",
    "כ": "kaf",
    "ל": "lamed",
    "מ": "mem",
    "נ": "nun",
    "ס": "samekh",
    "ע": "ayin",
    "פ": "pe",
    "צ": "tsadi",
    "ק": "qof",
    "ר": "resh",
    "ש": "shin",
    "ת": "tav",
}
LETTER_BY_NAME = {name: letter for letter, name in LETTER_NAMES.items()}

letter_partitions = StaticPartitionsDefinition(list(LETTER_NAMES.values()))
