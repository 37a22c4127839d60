"""A run's spending limits: USD (`max_cost_usd`) and tokens (`max_total_tokens`), checked before each call.

Before a call goes out, its worst case is held against what is left: the estimated prompt tokens
(`prices.estimated_prompt_tokens`) plus the call's whole `max_tokens`, at the dearest price among the
run's routes (a local route costs 0). After it returns, the hold is replaced by what the call really
cost. A call whose worst case does not fit waits while other calls hold part of the budget (they usually
cost far less than their worst case), and is refused (`BudgetExhausted`) once nothing is held and it
still does not fit; from then on every call is refused. So with calls in flight the spend stays within
the limit, up to the prompt estimate's error (a few tokens at most), and the run uses most of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from gemantria_dag.control_plane.records import CallResult

DAILY_BUDGET = "REMOTE_LLM_DAILY_BUDGET_USD"


class BudgetExhausted(RuntimeError):
    """A run's next call could go over its budget; the message names the budget, the spend and what is left."""


@dataclass(slots=True)
class Hold:
    """The worst case of one call in flight: USD and tokens held against the budget until it returns."""

    usd: float
    tokens: int


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.6f}"


class Budget:
    """The limits of one run and what its calls spent (USD; prompt + completion tokens).

    Used from one event loop: every method runs between awaits on the loop's thread, so no lock is needed.
    With no limit set, `limited` is False and the runner skips it entirely.
    """

    __slots__ = (
        "max_cost_usd",
        "max_total_tokens",
        "daily_remote_usd",
        "spent_usd",
        "spent_tokens",
        "calls",
        "stopped_by",
        "refused",
        "_held_usd",
        "_held_tokens",
        "_holds",
        "_changed",
    )

    def __init__(
        self,
        max_cost_usd: float | None = None,
        max_total_tokens: int | None = None,
        daily_remote_usd: float | None = None,
    ) -> None:
        self.max_cost_usd = max_cost_usd
        self.max_total_tokens = max_total_tokens
        # What is left today of REMOTE_LLM_DAILY_BUDGET_USD when the run starts (local calls cost 0, so
        # every USD this run spends counts against it).
        self.daily_remote_usd = daily_remote_usd
        self.spent_usd = 0.0
        self.spent_tokens = 0
        self.calls = 0
        self._held_usd = 0.0
        self._held_tokens = 0
        self._holds = 0  # calls in flight
        # Set (and replaced) whenever a hold is given back: calls waiting for room look again.
        self._changed = asyncio.Event()
        # The first refusal: which limit, and the worst case that did not fit.
        self.stopped_by: str | None = None
        self.refused: Hold | None = None

    @property
    def limited(self) -> bool:
        """Whether this run has a budget at all (max_cost_usd, max_total_tokens or the daily remote budget)."""
        return self.max_cost_usd is not None or self.max_total_tokens is not None or self.daily_remote_usd is not None

    def _over(self, usd: float, tokens: int) -> str | None:
        """The limit that `usd` and `tokens` more could exceed (counting the holds), or None."""
        max_usd, max_tokens = self.max_cost_usd, self.max_total_tokens
        if max_usd is not None and self.spent_usd + self._held_usd + usd > max_usd:
            return "max_cost_usd"
        if max_tokens is not None and self.spent_tokens + self._held_tokens + tokens > max_tokens:
            return "max_total_tokens"
        daily = self.daily_remote_usd
        if daily is not None and self.spent_usd + self._held_usd + usd > daily:
            return DAILY_BUDGET
        return None

    async def reserve(self, usd: float, tokens: int) -> Hold:
        """Hold a call's worst case (`usd`, `tokens`), waiting while calls in flight hold what it needs.

        Raises BudgetExhausted when it does not fit with nothing held (the spend alone leaves too little),
        and for every call after that.
        """
        while True:
            if self.stopped_by is not None:
                raise BudgetExhausted(f"{self.stopped_by} reached")
            over = self._over(usd, tokens)
            if over is None:
                self._held_usd += usd
                self._held_tokens += tokens
                self._holds += 1
                return Hold(usd, tokens)
            if not self._holds:
                self.stopped_by, self.refused = over, Hold(usd, tokens)
                self._wake()  # the calls waiting for room are refused too
                raise BudgetExhausted(f"{over} reached")
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def release(self, hold: Hold) -> None:
        """Give a hold back unused (the call was not made)."""
        self._held_usd -= hold.usd
        self._held_tokens -= hold.tokens
        self._holds -= 1
        self._wake()

    def settle(self, hold: Hold, results: Iterable[CallResult]) -> None:
        """Replace `hold` by what the calls of one request really cost (every attempt counts).

        A call with no cost (`cost_usd` null: the reply reported no usage) or no token counts is counted at
        the hold's worst case if it succeeded (it was billed, by an amount unknown) and at 0 if it failed.
        """
        for result in results:
            self.calls += 1
            if result.cost_usd is not None:
                self.spent_usd += result.cost_usd
            elif result.ok:
                self.spent_usd += hold.usd
            if result.prompt_tokens is not None and result.completion_tokens is not None:
                self.spent_tokens += result.prompt_tokens + result.completion_tokens
            elif result.ok:
                self.spent_tokens += hold.tokens
        self.release(hold)  # after the spend is counted: the calls it wakes see it

    def exhausted_message(self, *, nouns_left: int, nouns: int) -> str:
        """One line for a run the budget stopped: the budget, the spend, the nouns left and what to do."""
        if self.stopped_by == "max_cost_usd":
            limit = f"max_cost_usd={_usd(self.max_cost_usd or 0.0)}"
        elif self.stopped_by == DAILY_BUDGET:
            limit = f"{DAILY_BUDGET} (what was left of it today: {_usd(self.daily_remote_usd or 0.0)})"
        else:
            limit = f"max_total_tokens={self.max_total_tokens:,}"
        refused = self.refused or Hold(0.0, 0)
        in_usd = self.stopped_by in ("max_cost_usd", DAILY_BUDGET)
        next_call = f"up to {_usd(refused.usd)}" if in_usd else f"up to {refused.tokens:,} tokens"
        return (
            f"budget {limit} reached: spent {_usd(self.spent_usd)} and {self.spent_tokens:,} tokens in "
            f"{self.calls} calls, and the next call could take {next_call} more, so the run stopped sending calls. "
            f"{nouns_left} of {nouns} nouns are left without an outcome: run again with a higher "
            f"{self.stopped_by} (or none{', or tomorrow' if self.stopped_by == DAILY_BUDGET else ''}) to enrich "
            "them; stored outcomes are reused, so no call is paid twice."
        )


__all__ = ["Budget", "BudgetExhausted", "Hold"]
