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


import pytest  # noqa: E402

from gemantria_dag.llm.structured_check import forget_structured_checks  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_structured_output_checks() -> None:
    """Each test sees health's structured-output check afresh (its verdicts are cached per process)."""
    forget_structured_checks()
