"""Control-plane and results tables, created when absent and never altered when present.

`control.agent_run` is RFC-080's existing table: deployments already have it, so its
columns are fixed and everything else goes into its JSON columns.
"""

from __future__ import annotations

import psycopg

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
CREATE TABLE control.tool_catalog (
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
    "control.tool_catalog": TOOL_CATALOG_DDL,
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
