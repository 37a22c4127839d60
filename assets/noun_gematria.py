"""Standard gematria of every noun, mirrored into the control-plane DB when it is on."""

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gemantria_dag.lexicon.gematria import first_letter, gematria
from resources.control_plane_db import ControlPlaneDatabase

GEMATRIA_COLUMNS = [
    "strong_id",
    "lemma",
    "consonantal",
    "transliteration",
    "gender",
    "gloss",
    "language",
    "first_letter",
    "gematria",
]

_UPSERT = """
INSERT INTO gematria.noun_gematria
    (strong_id, lemma, consonantal, transliteration, gender, gloss, language, first_letter, gematria)
SELECT strong_id, lemma, consonantal, transliteration, gender, gloss, language, first_letter, gematria
FROM noun_gematria_stage
ON CONFLICT (strong_id) DO UPDATE SET
    lemma = EXCLUDED.lemma, consonantal = EXCLUDED.consonantal, transliteration = EXCLUDED.transliteration,
    gender = EXCLUDED.gender, gloss = EXCLUDED.gloss, language = EXCLUDED.language,
    first_letter = EXCLUDED.first_letter, gematria = EXCLUDED.gematria, updated_at = now()
"""


def compute_gematria(nouns: pd.DataFrame) -> pd.DataFrame:
    frame = nouns.copy()
    frame["first_letter"] = frame["consonantal"].map(first_letter)
    frame["gematria"] = frame["consonantal"].map(gematria).astype("int64")
    return frame[GEMATRIA_COLUMNS]


def _mirror_to_postgres(frame: pd.DataFrame, db: ControlPlaneDatabase) -> int:
    with db.connect() as conn, conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE noun_gematria_stage (LIKE gematria.noun_gematria INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        with conn.cursor().copy(
            "COPY noun_gematria_stage (strong_id, lemma, consonantal, transliteration, gender, gloss,"
            " language, first_letter, gematria) FROM STDIN"
        ) as copy:
            for row in frame.itertuples(index=False):
                copy.write_row([None if pd.isna(v) else v for v in row])
        return conn.execute(_UPSERT).rowcount


@asset(
    group_name="lexicon",
    description="Standard gematria (final letters as regular, points ignored) of each noun.",
    kinds={"pandas", "postgres"},
)
def noun_gematria(
    context: AssetExecutionContext, hebrew_nouns: pd.DataFrame, control_plane_db: ControlPlaneDatabase
) -> MaterializeResult:
    frame = compute_gematria(hebrew_nouns)
    target = control_plane_db.target()
    if target.on:
        written = _mirror_to_postgres(frame, control_plane_db)
        context.log.info("mirrored %d rows to gematria.noun_gematria (%s)", written, target.display)
    else:
        written = 0
        context.log.warning("control-plane DB is off (%s): gematria kept in Dagster storage only", target.reason)
    return MaterializeResult(
        value=frame,
        metadata={
            "row_count": MetadataValue.int(len(frame)),
            "gematria_min": MetadataValue.int(int(frame["gematria"].min())),
            "gematria_max": MetadataValue.int(int(frame["gematria"].max())),
            "gematria_mean": MetadataValue.float(float(frame["gematria"].mean())),
            "rows_in_postgres": MetadataValue.int(written),
            "database": MetadataValue.text(target.display),
            "preview": MetadataValue.md(frame.head(10).to_markdown(index=False)),
        },
    )
