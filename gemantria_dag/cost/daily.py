"""What the remote cost today, against REMOTE_LLM_DAILY_BUDGET_USD: read from control.agent_run.

"Today" is the current UTC day of the control plane's clock (`created_at >= date_trunc('day', now())`
with the session in UTC). Rows of the remote's tool (its provider id) with a numeric `cost_usd` count;
unpriced calls cannot be counted and are not. With no daily budget set, nothing is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from gemantria_dag.db.target import resolve_database
from gemantria_dag.settings import Settings

_SPENT_TODAY = """
SELECT coalesce(sum((result_json->>'cost_usd')::float8), 0)
FROM control.agent_run
WHERE project_id = %(project_id)s AND tool = %(tool)s
  AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  AND jsonb_typeof(result_json->'cost_usd') = 'number'
"""


@dataclass(frozen=True, slots=True)
class DailyRemoteBudget:
    """The daily remote budget (USD), what was spent of it today (USD; None: unknown), and why unknown."""

    budget_usd: float
    spent_usd: float | None
    unknown_because: str | None = None

    @property
    def left_usd(self) -> float | None:
        """What is left today (never below 0), or None when the spend is unknown."""
        return None if self.spent_usd is None else max(self.budget_usd - self.spent_usd, 0.0)

    @property
    def spent(self) -> bool:
        """Whether nothing is left today."""
        return self.left_usd is not None and self.left_usd <= 0.0


def daily_remote_budget(settings: Settings) -> DailyRemoteBudget | None:
    """The daily remote budget and today's remote spend; None when REMOTE_LLM_DAILY_BUDGET_USD is unset.

    Never raises for a database that is off or down: the spend is then unknown (`unknown_because`), and
    the budget cannot stop routing (a run's own budget still can).
    """
    budget = settings.remote_llm_daily_budget_usd
    if budget is None:
        return None
    target = resolve_database(settings, check=False)
    if not target.on:
        return DailyRemoteBudget(budget, None, f"the control plane is off ({target.reason})")
    try:
        with target.connect() as conn:
            row = conn.execute(
                _SPENT_TODAY, {"project_id": settings.gemantria_project_id, "tool": settings.remote_llm_provider}
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return DailyRemoteBudget(budget, 0.0)  # no control.agent_run yet: nothing spent
    except psycopg.Error as exc:
        return DailyRemoteBudget(budget, None, f"the control plane did not answer ({type(exc).__name__})")
    return DailyRemoteBudget(budget, float(row[0]) if row else 0.0)
