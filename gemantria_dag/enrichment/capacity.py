"""What each route of a run found of its server's capacity: the limit it settled at, the calls that waited
for a rate-limit reset, the 429s received; for the run log and the materialization's metadata."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gemantria_dag.control_plane.records import AgentRunRecord
from gemantria_dag.routing.failover import FailoverRouter


def capacity_report(router: FailoverRouter, records: Iterable[AgentRunRecord]) -> dict[str, dict[str, Any]]:
    """Per route name: its limiter's report (`LimiterReport.as_dict`: settled, final, initial and its source,
    range, ceiling, overloads, changes) and, from this run's call records, `rate_limit_waits` (calls that
    waited for the remote's allowance), `rate_limit_wait_s` (their total wait, seconds) and `http_429`
    (429 answers received)."""
    out: dict[str, dict[str, Any]] = {}
    for route in router.routes:
        out[route.name] = {**route.limiter.report().as_dict(), "rate_limit_waits": 0, "rate_limit_wait_s": 0.0}
        out[route.name]["http_429"] = 0
    for record in records:
        entry = out.get(record.args.backend or "")
        if entry is None:
            continue
        result = record.result
        if result.rate_limit_wait_ms:
            entry["rate_limit_waits"] += 1
            entry["rate_limit_wait_s"] += result.rate_limit_wait_ms / 1000.0
        if result.rate_limited:
            entry["http_429"] += result.rate_limited
    for entry in out.values():
        entry["rate_limit_wait_s"] = round(entry["rate_limit_wait_s"], 3)
    return out


def capacity_lines(router: FailoverRouter, records: Iterable[AgentRunRecord]) -> list[str]:
    """One run-log line per route, e.g. `remote: 8 calls in flight (adaptive, settled; started at 4 (default),
    range 4-16 of at most 64, 0 cuts on overload); 12 calls waited 3.1 s for a rate-limit reset; 0 HTTP 429`."""
    lines = []
    for name, r in capacity_report(router, records).items():
        low, high = r["range"]
        if r["adaptive"]:
            how = (
                f"adaptive, settled; started at {r['initial']} ({r['initial_source']}), range {low}-{high} of at "
                f"most {r['ceiling']}, {r['overloads']} overload signals"
            )
        else:
            how = "fixed by the run config"
        lines.append(
            f"{name}: {r['settled']} calls in flight ({how}); {r['rate_limit_waits']} calls waited "
            f"{r['rate_limit_wait_s']:.1f} s for a rate-limit reset; {r['http_429']} HTTP 429 received"
        )
    return lines
