"""Control-plane and results tables, created when absent and never altered when present.

`control.agent_run` is RFC-080's existing table: deployments already have it, so its
columns are fixed and everything else goes into its JSON columns. It is the only table this
project writes in `control`: RFC-080 says the control-plane tables stay as they are, so the
project's own tables (results and the model catalog) live in its own schema, `gematria`.
A deployment's table may carry constraints of its own (a foreign key from `session_id` to
`control.capability_session`, narrower text columns, extra required columns):
`inspect_agent_run` reads them so that writes satisfy them (issue 15).
"""

from __future__ import annotations

import psycopg
from pydantic import BaseModel, Field

# Serialises concurrent creators (two runs starting at once) without touching existing tables.
_SCHEMA_LOCK_KEY = 80_080

AGENT_RUN_DDL = """
CREATE TABLE control.agent_run (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id bigint NOT NULL,
    session_id uuid NULL,
    tool text NOT NULL,
    args_json jsonb NOT NULL,
    result_json jsonb NOT NULL,
    violations_json jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_run_project_id_idx ON control.agent_run (project_id);
CREATE INDEX agent_run_session_id_idx ON control.agent_run (session_id);
CREATE INDEX agent_run_created_at_idx ON control.agent_run (created_at);
CREATE INDEX agent_run_tool_idx ON control.agent_run (tool);
"""

TOOL_CATALOG_DDL = """
CREATE TABLE gematria.tool_catalog (
    backend text NOT NULL,
    model_id text NOT NULL,
    metadata_json jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backend, model_id)
);
"""

NOUN_GEMATRIA_DDL = """
CREATE TABLE gematria.noun_gematria (
    strong_id text PRIMARY KEY,
    lemma text NOT NULL,
    consonantal text NOT NULL,
    transliteration text NOT NULL,
    gender text NULL,
    gloss text NOT NULL,
    language text NOT NULL,
    first_letter text NOT NULL,
    gematria integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

NOUN_ENRICHMENT_DDL = """
CREATE TABLE gematria.noun_enrichment (
    strong_id text NOT NULL,
    model text NOT NULL,
    prompt_version text NOT NULL,
    params_hash text NOT NULL,
    backend text NOT NULL,
    ok boolean NOT NULL,
    insight_json jsonb NULL,
    violation text NULL,
    record_id uuid NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (strong_id, model, prompt_version, params_hash)
);
"""

TABLES: dict[str, str] = {
    "control.agent_run": AGENT_RUN_DDL,
    "gematria.tool_catalog": TOOL_CATALOG_DDL,
    "gematria.noun_gematria": NOUN_GEMATRIA_DDL,
    "gematria.noun_enrichment": NOUN_ENRICHMENT_DDL,
}


def ensure_schema(conn: psycopg.Connection) -> list[str]:
    """Create the schemas and any missing table; return the tables created."""
    created: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        for schema in ("control", "gematria"):
            # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
            # exists: a deployment's row-only role must still be able to write.
            present = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
            if not (present and present[0]):
                conn.execute(f"CREATE SCHEMA {schema}")
        for table, ddl in TABLES.items():
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            if exists and exists[0]:
                continue
            conn.execute(ddl)
            created.append(table)
    return created


# The columns this project writes; any other required column without a default cannot be filled.
AGENT_RUN_COLUMNS = (
    "id",
    "project_id",
    "session_id",
    "tool",
    "args_json",
    "result_json",
    "violations_json",
    "created_at",
)

_FOREIGN_KEYS = """
SELECT a.attname, c.confrelid::regclass::text, fa.attname
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[array_position(c.conkey, a.attnum)]
WHERE c.conrelid = 'control.agent_run'::regclass AND c.contype = 'f'
"""
_COLUMNS = """
SELECT column_name, is_nullable = 'YES', column_default IS NOT NULL, character_maximum_length
FROM information_schema.columns WHERE table_schema = 'control' AND table_name = 'agent_run'
"""


class AgentRunShape(BaseModel):
    """What a deployment's `control.agent_run` requires beyond RFC-080's columns.

    `references`: column -> "table(column)" it references (foreign keys); `max_length`: column -> n for
    `varchar(n)`/`char(n)` columns; `unfillable`: required columns without a default that this project
    does not write (every insert would fail).
    """

    references: dict[str, str] = Field(default_factory=dict)
    max_length: dict[str, int] = Field(default_factory=dict)
    unfillable: list[str] = Field(default_factory=list)

    @property
    def session_id_is_ours(self) -> bool:
        """False when `session_id` references another table: the Dagster run id is then no value it accepts."""
        return "session_id" not in self.references


def inspect_agent_run(conn: psycopg.Connection) -> AgentRunShape:
    """Read the constraints of `control.agent_run` (which must exist) from the catalog."""
    shape = AgentRunShape()
    for column, table, ref_column in conn.execute(_FOREIGN_KEYS):
        shape.references[column] = f"{table}({ref_column})"
    for column, nullable, has_default, max_length in conn.execute(_COLUMNS):
        if max_length is not None:
            shape.max_length[column] = int(max_length)
        if column not in AGENT_RUN_COLUMNS and not nullable and not has_default:
            shape.unfillable.append(column)
    return shape
