from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from gemantria_dag.settings import get_settings
from resources.bible_db import BibleDatabase, BibleSourceError


@pytest.fixture
def bible_db() -> BibleDatabase:
    return BibleDatabase(path=str(get_settings().bible_db_path))


def test_real_source_has_thousands_of_common_nouns(bible_db: BibleDatabase) -> None:
    nouns = bible_db.common_nouns()
    assert len(nouns) > 3500
    by_id = {n.strong_id: n for n in nouns}
    father = by_id["H1"]
    assert father.lemma == "אָב" and father.consonantal == "אב"
    assert father.gender == "masculine" and father.language == "heb"
    assert father.gloss.startswith("father")
    assert {n.language for n in nouns} == {"heb", "arc"}
    assert bible_db.verse_count() == 23346
    assert any("CC BY 4.0" in a["license"] for a in bible_db.attributions())


def test_source_is_opened_read_only(bible_db: BibleDatabase) -> None:
    with bible_db.connect() as conn, pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("UPDATE words SET gloss = 'x' WHERE strong_id = 'H1'")


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BibleSourceError, match="BIBLE_DB"):
        BibleDatabase(path=str(tmp_path / "nope.db")).common_nouns()


def test_unreadable_source_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(BibleSourceError, match="cannot be read"):
        BibleDatabase(path=str(junk)).common_nouns()


def test_source_file_unchanged_after_reads(bible_db: BibleDatabase, tmp_path: Path) -> None:
    before = Path(bible_db.path).stat().st_mtime_ns
    bible_db.common_nouns()
    assert Path(bible_db.path).stat().st_mtime_ns == before
    copy = tmp_path / "copy.db"
    shutil.copy(bible_db.path, copy)
    assert len(BibleDatabase(path=str(copy)).common_nouns()) == len(bible_db.common_nouns())
