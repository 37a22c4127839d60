"""Model prices in USD per million tokens, and what one call cost.

A price comes from the `LLM_PRICES` setting when it names the model (what you pay: a negotiated rate,
a self-hosted endpoint's internal rate, a model the catalogue lacks), else from the catalogue of the
`genai-prices` package, else there is none: that model's calls are recorded unpriced (`cost_usd`
null), never with a guessed number.

No network: `genai_prices.calc_price` reads the snapshot bundled in the wheel (`genai_prices/data.py`,
through `data_snapshot.get_snapshot()`). The package fetches newer prices only from
`UpdatePrices.fetch` (an `httpx2.get` of its GitHub data file), which runs in a background thread that
`UpdatePrices.start()` launches; this project never starts it (checked in genai-prices 0.2.3). The
prices are thus those of the installed version: upgrade the package, or set `LLM_PRICES`, to change them.

Lookups are cached per (model, provider), so a run prices its routes once and each call costs a few
arithmetic operations (`call_cost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from gemantria_dag.settings import Settings

PriceSource = Literal["settings", "genai-prices"]

# Prices are quoted per million tokens.
_MTOK = 1_000_000
# The catalogue is asked for the price of a call of this many input and output tokens, scaled to a
# million: tiered models (e.g. Gemini 1.5 Pro, dearer past 128k input tokens) charge the whole call at
# the tier its input reaches, so a 1M-token question would return the top tier, while enrichment
# prompts are a few hundred tokens and pay the base rate.
_REFERENCE_TOKENS = 1_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's price: USD per million input (prompt) and output (completion) tokens, and where it came from."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    source: PriceSource


def price_for(model: str | None, provider: str | None, settings: Settings) -> ModelPrice | None:
    """The price of `model` as served by `provider` (the remote's `REMOTE_LLM_PROVIDER` id), or None if unknown.

    `settings.llm_prices` (LLM_PRICES) wins, matched on the exact model id; then genai-prices, with
    `provider` as its provider id when it knows that id (e.g. `openai`, `openrouter`, `groq`), else by the
    model id alone (the default provider id `remote_llm` is not one of its providers). None for no model,
    or a model neither knows. Never raises for an unknown model; costs microseconds once cached.
    """
    if not model:
        return None
    override = settings.llm_prices.get(model)
    if override is not None:
        return ModelPrice(override.input, override.output, "settings")
    return catalogue_price(model, provider)


@lru_cache(maxsize=256)
def catalogue_price(model: str, provider: str | None) -> ModelPrice | None:
    """genai-prices' price of `model` (per provider id when it knows `provider`), or None (LookupError).

    Cached: the first lookup of a process imports the package and loads its bundled data (about 0.2 s).
    """
    # Imported here: the package and its 1.6 MB price table load only when a remote model is priced,
    # not each time a command or the code location starts.
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=_REFERENCE_TOKENS, output_tokens=_REFERENCE_TOKENS)
    for provider_id in ([provider] if provider else []) + [None]:
        try:
            calc = calc_price(usage, model_ref=model, provider_id=provider_id)
        except LookupError:
            continue
        scale = _MTOK // _REFERENCE_TOKENS  # scaled as Decimals: 0.15 stays 0.15, not 0.15000000000000002
        return ModelPrice(float(calc.input_price * scale), float(calc.output_price * scale), "genai-prices")
    return None


def call_cost(price: ModelPrice | None, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """USD for one call of `prompt_tokens` in and `completion_tokens` out at `price`.

    None when there is no price or the reply reported no usage (either count missing): such a call is
    unpriced, not estimated.
    """
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price.input_usd_per_mtok + completion_tokens * price.output_usd_per_mtok) / _MTOK


def estimated_prompt_tokens(prompt_chars: int, messages: int) -> int:
    """An upper-ish estimate of a prompt's tokens before it is sent: characters / 3, rounded up, plus 8 per
    message (the chat template's role markers).

    Measured over the 3,754 enrichment prompts with SmolLM2's tokenizer (49k entries, a pessimistic one
    for Hebrew; larger vocabularies such as GPT-4o's need fewer tokens): 0.84-1.02 x the real count,
    0.91 on average. It can thus fall short by a few tokens; budgets add the call's whole `max_tokens`
    on top, which replies rarely reach.
    """
    return -(-prompt_chars // 3) + 8 * messages


__all__ = ["ModelPrice", "PriceSource", "call_cost", "catalogue_price", "estimated_prompt_tokens", "price_for"]
