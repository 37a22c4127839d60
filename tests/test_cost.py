"""Prices and budgets: LLM_PRICES beats the genai-prices catalogue, an unknown model has no price (never a
guess), a call without usage is unpriced, the catalogue is read with no network, and a budget holds each
call's worst case so that calls in flight cannot go over it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gemantria_dag.control_plane.records import CallResult
from gemantria_dag.cost.budget import Budget, BudgetExhausted
from gemantria_dag.cost.prices import ModelPrice, call_cost, catalogue_price, estimated_prompt_tokens, price_for
from gemantria_dag.settings import SettingsError, load_settings
from tests.fixtures.processes import REPO_ROOT, cli_env

GPT_4O_MINI = ModelPrice(0.15, 0.6, "genai-prices")  # OpenAI's list price, USD per million tokens


def _settings(prices: dict | None = None):
    return load_settings(llm_prices=prices or {})


def test_a_known_model_gets_its_genai_prices_price() -> None:
    price = price_for("gpt-4o-mini", "remote_llm", _settings())
    assert price == GPT_4O_MINI
    # The provider id narrows the catalogue when it knows it (OpenRouter's ids carry the maker), and is
    # ignored when it does not (the default provider id `remote_llm`).
    assert price_for("openai/gpt-4o-mini", "openrouter", _settings()) == GPT_4O_MINI
    assert price_for("gpt-4o-mini", None, _settings()) == GPT_4O_MINI


def test_a_tiered_model_is_priced_at_the_rate_a_small_call_pays() -> None:
    # Gemini 1.5 Pro: $1.25 / $5 per MTok up to 128k input tokens, double past it; prompts here are small.
    assert price_for("gemini-1.5-pro", None, _settings()) == ModelPrice(1.25, 5.0, "genai-prices")


def test_the_settings_override_beats_genai_prices() -> None:
    settings = _settings({"gpt-4o-mini": {"input": 0.1, "output": 0.2}, "in-house-llm": {"input": 0, "output": 0.5}})
    assert price_for("gpt-4o-mini", "openai", settings) == ModelPrice(0.1, 0.2, "settings")
    assert price_for("in-house-llm", "remote_llm", settings) == ModelPrice(0.0, 0.5, "settings")


def test_an_unknown_model_has_no_price() -> None:
    for model in ("remote-model", "smollm2-135m-instruct", "no-such-model-7b"):
        assert price_for(model, "remote_llm", _settings()) is None
    assert price_for(None, "remote_llm", _settings()) is None
    assert price_for("", None, _settings()) is None


def test_call_cost_is_none_without_usage_or_price() -> None:
    price = ModelPrice(1.0, 2.0, "settings")
    assert call_cost(price, 60, 30) == pytest.approx(120e-6)  # 60 x $1/M + 30 x $2/M
    assert call_cost(price, 0, 0) == 0.0
    assert call_cost(price, None, 30) is None
    assert call_cost(price, 60, None) is None
    assert call_cost(None, 60, 30) is None


def test_pricing_needs_no_network() -> None:
    """A fresh process with every socket refused prices gpt-4o-mini: the catalogue is the bundled snapshot."""
    script = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.socket.connect_ex = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "socket.create_connection = refuse\n"
        "from gemantria_dag.cost.prices import price_for\n"
        "from gemantria_dag.settings import load_settings\n"
        "p = price_for('gpt-4o-mini', 'openai', load_settings())\n"
        "print(p.input_usd_per_mtok, p.output_usd_per_mtok)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.15", "0.6"]


def test_catalogue_lookups_are_cached() -> None:
    catalogue_price.cache_clear()
    price_for("gpt-4o-mini", "remote_llm", _settings())
    price_for("gpt-4o-mini", "remote_llm", _settings())
    price_for("unknown-model", "remote_llm", _settings())
    price_for("unknown-model", "remote_llm", _settings())
    info = catalogue_price.cache_info()
    assert (info.misses, info.hits) == (2, 2)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{bad", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"m": {"input": -1, "output": 1}}', "the price of 'm' must be"),
        ('{"m": {"input": 1}}', "the price of 'm' must be"),
        ('{"m": 0.15}', "the price of 'm' must be"),
    ],
)
def test_a_bad_llm_prices_fails_at_load_naming_it(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("LLM_PRICES", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"Invalid configuration: LLM_PRICES={value!r}: ") and problem in message
    assert '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}' in message  # what it should look like


def test_llm_prices_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PRICES", '{"remote-model": {"input": 1, "output": 2.5}}')
    assert price_for("remote-model", "remote_llm", load_settings()) == ModelPrice(1.0, 2.5, "settings")
    monkeypatch.setenv("LLM_PRICES", "")
    assert load_settings().llm_prices == {}


def test_the_prompt_estimate() -> None:
    assert estimated_prompt_tokens(0, 0) == 0
    assert estimated_prompt_tokens(391, 2) == 131 + 16  # characters / 3 rounded up, 8 a message
    assert estimated_prompt_tokens(390, 2) == 130 + 16


def _result(cost: float | None, ok: bool = True, tokens: tuple[int, int] | None = (60, 30)) -> CallResult:
    prompt, completion = tokens or (None, None)
    return CallResult(ok=ok, cost_usd=cost, prompt_tokens=prompt, completion_tokens=completion)


def test_a_budget_holds_the_worst_case_of_calls_in_flight() -> None:
    async def go() -> None:
        budget = Budget(max_cost_usd=0.001)
        first = await budget.reserve(0.0004, 500)
        second = await budget.reserve(0.0004, 500)
        # 0.0012 could be spent with a third in flight: it waits for room instead of going out.
        third = asyncio.create_task(budget.reserve(0.0004, 500))
        await asyncio.sleep(0.01)
        assert not third.done()
        budget.settle(first, [_result(0.00012)])  # came back at its real cost: room for the third
        await asyncio.wait_for(third, 1)
        budget.settle(second, [_result(0.00012)])
        budget.settle(third.result(), [_result(0.00012)])
        assert budget.spent_usd == pytest.approx(0.00036) and budget.spent_tokens == 270 and budget.calls == 3
        # Spent 0.00036; with nothing in flight, 0.0007 more cannot fit: refused, and so is every call after.
        with pytest.raises(BudgetExhausted):
            await budget.reserve(0.0007, 500)
        assert (budget.stopped_by, budget.refused.usd) == ("max_cost_usd", 0.0007)
        with pytest.raises(BudgetExhausted):
            await budget.reserve(0.0, 0)

    asyncio.run(go())


def test_calls_waiting_for_room_are_refused_when_the_budget_stops() -> None:
    async def go() -> None:
        budget = Budget(max_cost_usd=0.001)
        held = await budget.reserve(0.0008, 500)
        waiting = asyncio.create_task(budget.reserve(0.0008, 500))
        await asyncio.sleep(0.01)
        budget.settle(held, [_result(0.0008)])  # it cost its worst case: 0.0002 left, the waiter cannot fit
        with pytest.raises(BudgetExhausted):
            await asyncio.wait_for(waiting, 1)

    asyncio.run(go())


def test_a_call_without_usage_counts_at_its_worst_case_if_it_succeeded() -> None:
    async def go() -> None:
        budget = Budget(max_total_tokens=2000)
        budget.settle(await budget.reserve(0.0, 500), [_result(None, tokens=None)])  # answered, usage unknown
        budget.settle(await budget.reserve(0.0, 500), [_result(None, ok=False, tokens=None)])  # failed: not billed
        assert (budget.spent_tokens, budget.spent_usd, budget.calls) == (500, 0.0, 2)
        budget.release(await budget.reserve(0.0, 1500))  # not sent: nothing spent
        assert budget.spent_tokens == 500
        with pytest.raises(BudgetExhausted):
            await budget.reserve(0.0, 1501)
        message = budget.exhausted_message(nouns_left=7, nouns=10)
        assert message.startswith("budget max_total_tokens=2,000 reached: spent $0.000000 and 500 tokens in 2 calls")
        assert "up to 1,501 tokens" in message and "7 of 10 nouns are left" in message

    asyncio.run(go())


def test_no_limit_never_refuses() -> None:
    budget = Budget()
    assert not budget.limited
    asyncio.run(budget.reserve(1e9, 10**12))


def test_the_daily_remote_budget_stops_a_run_naming_it() -> None:
    async def go() -> str:
        budget = Budget(daily_remote_usd=0.0015)
        first = await budget.reserve(0.001, 100)
        with pytest.raises(BudgetExhausted):
            budget.settle(first, [CallResult(ok=True, cost_usd=0.001, prompt_tokens=50, completion_tokens=50)])
            await budget.reserve(0.001, 100)
        return budget.exhausted_message(nouns_left=5, nouns=6)

    message = asyncio.run(go())
    assert "REMOTE_LLM_DAILY_BUDGET_USD" in message and "5 of 6 nouns" in message and "tomorrow" in message


def test_todays_remote_spend_is_read_from_the_control_plane(
    control_plane_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemantria_dag.control_plane.records import AgentRunRecord, CallArgs, EnrichmentBatch
    from gemantria_dag.control_plane.spool import Spool
    from gemantria_dag.control_plane.writer import ControlPlaneWriter
    from gemantria_dag.cost.daily import daily_remote_budget
    from gemantria_dag.db.target import resolve_database
    from gemantria_dag.settings import get_settings, reset_settings_cache

    monkeypatch.setenv("REMOTE_LLM_DAILY_BUDGET_USD", "0.01")
    reset_settings_cache()
    settings = get_settings()

    def record(tool: str, cost: float | None) -> AgentRunRecord:
        args = CallArgs(
            model="m", prompt_length=10, temperature=0.2, max_tokens=64, routed_backend="remote", backend="remote"
        )
        return AgentRunRecord(
            project_id=settings.gemantria_project_id, tool=tool, args=args, result=CallResult(ok=True, cost_usd=cost)
        )

    batch = EnrichmentBatch(
        records=[
            record("remote_llm", 0.004),
            record("remote_llm", 0.003),
            record("remote_llm", None),
            record("lm_studio", 0.0),
        ]
    )
    writer = ControlPlaneWriter(resolve_database(settings), Spool(settings.spool_dir))
    assert not writer.write(batch).spooled
    daily = daily_remote_budget(settings)
    assert daily is not None and daily.spent_usd == pytest.approx(0.007) and not daily.spent
    assert daily.left_usd == pytest.approx(0.003)
    monkeypatch.setenv("REMOTE_LLM_DAILY_BUDGET_USD", "0.007")
    reset_settings_cache()
    assert daily_remote_budget(get_settings()).spent  # type: ignore[union-attr]
