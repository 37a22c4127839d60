"""Progress at a steady rate (not an event per call): done/total, what the nouns ended as, rate, ETA."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable


def tally_text(tally: Counter[str]) -> str:
    """`2 failed (model_loading x2), 1 violation` (empty when every noun ended ok)."""
    failed = {k: n for k, n in tally.items() if k not in ("ok", "violation", "truncated")}
    parts: list[str] = []
    if failed:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(failed.items(), key=lambda kv: -kv[1]))
        parts.append(f"{sum(failed.values())} failed ({kinds})")
    for kind in ("violation", "truncated"):
        if tally.get(kind):
            parts.append(f"{tally[kind]} {kind}")
    return ", ".join(parts)


class Progress:
    """Logs `enriched ok/total (pct), failures, done/total done, rate, ETA` every `interval_s` while
    work remains: nouns that ended ok and those that failed are counted apart."""

    def __init__(
        self, total: int, log: Callable[[str], None], interval_s: float = 5.0, tally: Counter[str] | None = None
    ) -> None:
        self.total = total
        self.done = 0
        self.tally = tally if tally is not None else Counter()
        self._log = log
        self._interval_s = interval_s
        self._started = time.monotonic()

    def line(self) -> str:
        """The progress line: nouns enriched ok of `total`, failures by kind, nouns done, nouns/s, ETA in seconds."""
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = self.done / elapsed
        remaining = self.total - self.done
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        ok = self.tally.get("ok", 0)
        pct = 100.0 * ok / self.total if self.total else 100.0
        problems = tally_text(self.tally)
        return (
            f"enriched {ok}/{self.total} ({pct:.0f}%)"
            + (f", {problems}" if problems else "")
            + f"; {self.done}/{self.total} done, {rate:.1f} nouns/s, ETA {eta}"
        )

    async def report_until_done(self) -> None:
        """Log `line()` every `interval_s` seconds while nouns remain (the runner cancels it at the end)."""
        while self.done < self.total:
            await asyncio.sleep(self._interval_s)
            self._log(self.line())
