"""The common Hebrew and Aramaic nouns of Strong's dictionary, read from the read-only source."""

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from resources.bible_db import BibleDatabase

NOUN_COLUMNS = ["strong_id", "lemma", "consonantal", "transliteration", "gender", "gloss", "language"]


@asset(
    group_name="lexicon",
    description="Common nouns (Strong's morphology n-m, n-f, n; Hebrew and Aramaic) with a short gloss.",
    kinds={"sqlite", "pandas"},
)
def hebrew_nouns(context: AssetExecutionContext, bible_db: BibleDatabase) -> MaterializeResult:
    nouns = bible_db.common_nouns()
    frame = pd.DataFrame([n.model_dump() for n in nouns], columns=NOUN_COLUMNS)
    context.log.info("read %d common nouns from %s", len(frame), bible_db.path)
    return MaterializeResult(
        value=frame,
        metadata={
            "row_count": MetadataValue.int(len(frame)),
            "by_gender": MetadataValue.json(frame["gender"].fillna("none").value_counts().to_dict()),
            "by_language": MetadataValue.json(frame["language"].value_counts().to_dict()),
            "preview": MetadataValue.md(frame.head(10).to_markdown(index=False)),
            "source": MetadataValue.path(bible_db.path),
            "attribution": MetadataValue.json(bible_db.attributions()),
        },
    )
