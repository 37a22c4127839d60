"""Session-wide fixtures: each real server starts once per test session."""

pytest_plugins = [
    "tests.fixtures.env",
    "tests.fixtures.postgres",
    "tests.fixtures.llm",
    "tests.fixtures.dagster_dev",
    "tests.fixtures.remote_server",
    "tests.fixtures.lmstudio",
    "tests.fixtures.enrichment",
    "tests.fixtures.browser",
]
