"""Progress at a steady rate (not an event per call): done/total, rate and ETA."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Progress:
    def __init__(self, total: int, log: Callable[[str], None], interval_s: float = 5.0) -> None:
        self.total = total
        self.done = 0
        self._log = log
        self._interval_s = interval_s
        self._started = time.monotonic()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = self.done / elapsed
        remaining = self.total - self.done
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"enriched {self.done}/{self.total} ({pct:.0f}%), {rate:.1f} nouns/s, ETA {eta}"

    async def report_until_done(self) -> None:
        while self.done < self.total:
            await asyncio.sleep(self._interval_s)
            self._log(self.line())
