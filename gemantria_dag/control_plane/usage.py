"""Read-only aggregates of LLM calls in `control.agent_run`, for `pmagent control`.

LLM calls are the rows with tool `lm_studio` or whose args carry `routed_backend` (every
record this project writes); other agent tools sharing the table are left out. Values inside
the JSON columns are read defensively (`jsonb_typeof`), so an odd row cannot break a report.

Spend (USD) is the sum of the calls' `result_json.cost_usd`, savings the sum of `saved_usd` (what the
local calls would have cost on the remote model); a call without a numeric `cost_usd` (unknown model,
no usage in the reply, or a row older than cost tracking) counts as unpriced and adds nothing.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import psycopg
from pydantic import BaseModel

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_WINDOW = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")

_LLM_ROWS = """
SELECT tool, created_at,
       result_json->'ok' = 'true'::jsonb AS ok,
       CASE WHEN jsonb_typeof(result_json->'latency_ms') = 'number'
            THEN (result_json->>'latency_ms')::float8 END AS latency_ms,
       CASE WHEN jsonb_typeof(result_json->'prompt_tokens') = 'number'
            THEN (result_json->>'prompt_tokens')::float8 END AS prompt_tokens,
       CASE WHEN jsonb_typeof(result_json->'completion_tokens') = 'number'
            THEN (result_json->>'completion_tokens')::float8 END AS completion_tokens,
       args_json->'fallback' = 'true'::jsonb AS fallback,
       result_json->>'substituted_model' IS NOT NULL AS substituted,
       args_json->>'model' AS model,
       CASE WHEN jsonb_typeof(result_json->'cost_usd') = 'number'
            THEN (result_json->>'cost_usd')::float8 END AS cost_usd,
       CASE WHEN jsonb_typeof(result_json->'saved_usd') = 'number'
            THEN (result_json->>'saved_usd')::float8 END AS saved_usd,
       CASE WHEN jsonb_typeof(result_json->'concurrency_limit') = 'number'
            THEN (result_json->>'concurrency_limit')::float8 END AS concurrency_limit,
       CASE WHEN jsonb_typeof(result_json->'rate_limited') = 'number'
            THEN (result_json->>'rate_limited')::float8 END AS rate_limited,
       CASE WHEN jsonb_typeof(result_json->'rate_limit_wait_ms') = 'number'
            THEN (result_json->>'rate_limit_wait_ms')::float8 END AS rate_limit_wait_ms
FROM control.agent_run
WHERE project_id = %(project_id)s
  AND created_at >= now() - %(window)s
  AND (tool = 'lm_studio' OR args_json ? 'routed_backend')
"""

_SPEND_COLUMNS = """coalesce(sum(cost_usd), 0) AS cost_usd,
       coalesce(sum(saved_usd), 0) AS saved_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls"""

_STATUS = f"""
SELECT tool,
       count(*) FILTER (WHERE ok) AS success,
       count(*) FILTER (WHERE ok IS NOT TRUE) AS failure,
       max(created_at) AS last_run_at,
       (array_agg(ok ORDER BY created_at DESC))[1] AS last_ok
FROM ({_LLM_ROWS}) llm
GROUP BY tool
ORDER BY tool
"""

# GROUPING SETS: one row per tool and the all-tools total (tool IS NULL) in one scan.
_SUMMARY = f"""
SELECT tool, grouping(tool) = 1 AS is_total,
       count(*) AS calls,
       count(*) FILTER (WHERE ok IS NOT TRUE) AS failed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
       coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
       count(*) FILTER (WHERE fallback) AS fallbacks,
       count(*) FILTER (WHERE substituted) AS substitutions,
       {_SPEND_COLUMNS},
       mode() WITHIN GROUP (ORDER BY concurrency_limit) AS concurrency_limit,
       count(*) FILTER (WHERE rate_limit_wait_ms > 0) AS rate_limit_waits,
       coalesce(sum(rate_limited), 0)::bigint AS http_429
FROM ({_LLM_ROWS}) llm
GROUP BY GROUPING SETS ((tool), ())
"""

# Per (tool, model) and the total (both grouped away: grouping() = 3), in one scan.
_SPEND = f"""
SELECT tool, model, grouping(tool, model) = 3 AS is_total,
       count(*) AS calls,
       coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)), 0)::bigint AS total_tokens,
       {_SPEND_COLUMNS}
FROM ({_LLM_ROWS}) llm
GROUP BY GROUPING SETS ((tool, model), ())
ORDER BY tool, model
"""


def parse_window(text: str) -> timedelta:
    """'30m', '24h', '7d', '2w' -> timedelta; ValueError with a readable message otherwise."""
    match = _WINDOW.match(text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"invalid window {text!r}: use a positive number and a unit, such as 30m, 24h or 7d")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class ToolStatus(BaseModel):
    """One tool's LLM calls in the window: successes, failures, and when the last one was made and how it ended."""

    tool: str
    success: int = 0
    failure: int = 0
    last_run_at: datetime | None = None
    last_status: str | None = None  # "ok" | "failed" | None (no call in the window)


class UsageStats(BaseModel):
    """LLM calls in the window, of one tool or of all.

    `failure_rate` and `share` (of all LLM calls) are fractions from 0 to 1; latencies are the p50 and p95
    of the calls' `latency_ms`, in milliseconds to 0.1 ms; tokens are sums as the servers reported them.
    """

    calls: int = 0
    ok: int = 0
    failed: int = 0
    failure_rate: float | None = None
    calls_per_hour: float = 0.0
    share: float | None = None  # of all LLM calls in the window
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    fallback_count: int = 0
    substitution_count: int = 0
    cost_usd: float = 0.0  # USD, priced calls only
    saved_usd: float = 0.0  # USD the local calls would have cost on the remote model
    unpriced_calls: int = 0
    # Capacity (issue 17): the calls-in-flight limit most calls were made under (what the backend's adaptive
    # limit settled at; None: no call recorded one), calls that waited for the remote's rate-limit allowance,
    # and HTTP 429 answers received.
    concurrency_limit: int | None = None
    rate_limit_waits: int = 0
    http_429: int = 0


class SpendRow(BaseModel):
    """Calls, tokens, spend and savings (USD) of one (tool, model) in the window; both None in the total."""

    tool: str | None = None
    model: str | None = None
    calls: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced_calls: int = 0


class SpendReport(BaseModel):
    """Spend and savings in USD over the window: all LLM calls (`total`) and per (tool, model)."""

    total: SpendRow
    by_tool_model: list[SpendRow]


class UsageSummary(BaseModel):
    """`UsageStats` of every LLM call in the window (`total`) and of each tool, by tool name."""

    total: UsageStats
    tools: dict[str, UsageStats]


def pipeline_status(
    conn: psycopg.Connection, project_id: int, window: timedelta, expected_tools: list[str]
) -> list[ToolStatus]:
    """Per tool, success/failure counts and the last call; `expected_tools` appear even without calls."""
    found = {
        tool: ToolStatus(
            tool=tool, success=success, failure=failure, last_run_at=last, last_status="ok" if last_ok else "failed"
        )
        for tool, success, failure, last, last_ok in conn.execute(_STATUS, {"project_id": project_id, "window": window})
    }
    for tool in expected_tools:
        found.setdefault(tool, ToolStatus(tool=tool))
    return sorted(found.values(), key=lambda s: s.tool)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)  # 0.1 ms: float noise beyond it is not information


def _usd(value: float) -> float:
    return round(value, 9)  # a billionth of a dollar: float noise of the sum beyond it is not information


def spend_by_model(conn: psycopg.Connection, project_id: int, window: timedelta) -> SpendReport:
    """Spend, savings and unpriced calls per (tool, model) in the window, and their total."""
    total = SpendRow()
    rows: list[SpendRow] = []
    for tool, model, is_total, calls, tokens, cost, saved, unpriced in conn.execute(
        _SPEND, {"project_id": project_id, "window": window}
    ):
        row = SpendRow(
            tool=None if is_total else tool,
            model=None if is_total else model,
            calls=calls,
            total_tokens=tokens,
            cost_usd=_usd(cost),
            saved_usd=_usd(saved),
            unpriced_calls=unpriced,
        )
        if is_total:
            total = row
        else:
            rows.append(row)
    return SpendReport(total=total, by_tool_model=rows)


def usage_summary(conn: psycopg.Connection, project_id: int, window: timedelta) -> UsageSummary:
    """The project's LLM calls in the last `window`, in total and per tool (one query); raises psycopg errors."""
    hours = window.total_seconds() / 3600
    total = UsageStats()
    tools: dict[str, UsageStats] = {}
    for row in conn.execute(_SUMMARY, {"project_id": project_id, "window": window}):
        tool, is_total, calls, failed, p50, p95, ptok, ctok, fallbacks, subs, cost, saved, unpriced = row[:13]
        limit, waits, http_429 = row[13:]
        stats = UsageStats(
            calls=calls,
            ok=calls - failed,
            failed=failed,
            failure_rate=round(failed / calls, 4) if calls else None,
            calls_per_hour=round(calls / hours, 3) if hours else 0.0,
            latency_ms_p50=_ms(p50),
            latency_ms_p95=_ms(p95),
            prompt_tokens=ptok,
            completion_tokens=ctok,
            total_tokens=ptok + ctok,
            fallback_count=fallbacks,
            substitution_count=subs,
            cost_usd=_usd(cost),
            saved_usd=_usd(saved),
            unpriced_calls=unpriced,
            concurrency_limit=None if limit is None else int(limit),
            rate_limit_waits=waits,
            http_429=http_429,
        )
        if is_total:
            total = stats
        else:
            tools[tool] = stats
    for stats in tools.values():
        stats.share = round(stats.calls / total.calls, 4) if total.calls else None
    return UsageSummary(total=total, tools=dict(sorted(tools.items())))
