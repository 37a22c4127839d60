"""The machinery of a health check: small GETs on one time budget, each step recorded.

A `ProbeRun` asks its probes in order and stops at a transport failure, a refused token or the end
of its budget; `get_within` bounds each GET by wall-clock time, not per read (a server that trickles
bytes cannot stall a check). No decisions about health here: `probe.py` makes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from gemantria_dag.llm.errors import GENERIC_FIXES, error_from_exception, is_connect_failure, redact, redact_error
from gemantria_dag.llm.listings import Listing
from gemantria_dag.llm.reply import ChatCompletionBody, error_from_body
from gemantria_dag.llm.results import ErrorCode, LLMError, ProbeStep

HEALTH_CONNECT_SECONDS = 1.0
HEALTH_BUDGET_SECONDS = 4.0
# A model listing is a few kB; a health check must not download whatever a broken server sends.
MAX_LISTING_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Probe:
    """One GET of a health check: its `label` (the endpoint, as `ProbeStep` shows it), its URL, and `parse`,
    which reads a 2xx body into a `Listing` or raises ValueError (pydantic's ValidationError among them)."""

    label: str
    url: str
    parse: Callable[[bytes], Listing]


class BudgetSpent(Exception):
    """Raised by `get_within` when the check's deadline passed before an answer was complete."""


class TooLarge(Exception):
    """Raised by `get_within` when a body grows beyond `MAX_LISTING_BYTES` (4 MiB)."""


def get_within(client: httpx.Client, url: str, headers: dict[str, str], deadline: float) -> tuple[int, bytes]:
    """GET `url` and read the whole body by `deadline` (a `time.monotonic()` value); return (status, body).

    Raises BudgetSpent past the deadline, TooLarge beyond `MAX_LISTING_BYTES`, httpx errors for transport faults.
    The connect timeout is at most `HEALTH_CONNECT_SECONDS`.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BudgetSpent()
    timeout = httpx.Timeout(remaining, connect=min(HEALTH_CONNECT_SECONDS, remaining))
    with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        chunks: list[bytes] = []
        size = 0
        # Per-read timeouts alone would let a server that trickles bytes run past the budget.
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_LISTING_BYTES:
                raise TooLarge()
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise BudgetSpent()
        return response.status_code, b"".join(chunks)


def native_root(base_url: str) -> str:
    """LM Studio's native API lives beside the OpenAI one: http://host:1234/v1 -> http://host:1234."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def ms_since(started: float) -> float:
    """Milliseconds since `started` (a `time.perf_counter()` value), to 0.01 ms."""
    return round((time.perf_counter() - started) * 1000.0, 2)


def is_greeting(content: bytes) -> bool:
    """LM Studio's greeting, `{"lmstudio": true}`."""
    try:
        body = json.loads(content)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("lmstudio") is True


def shorten(text: str, limit: int = 120) -> str:
    """`text` with its whitespace collapsed, cut to `limit` characters (the last one an ellipsis)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class ProbeRun:
    """The requests of one check, on one budget; a transport failure, the budget or a refused token ends it."""

    client: httpx.Client
    headers: dict[str, str]
    secret: str | None
    deadline: float
    connect_failed: bool = False
    stopped: bool = False
    last_error: LLMError | None = None
    last_label: str | None = None
    steps: list[ProbeStep] = field(default_factory=list)
    budget_seconds: float = HEALTH_BUDGET_SECONDS

    def _note(self, label: str, status: int | None, outcome: str) -> None:
        self.steps.append(ProbeStep(endpoint=label, status=status, outcome=redact(outcome, self.secret)))

    def fetch(self, label: str, url: str) -> tuple[int, bytes] | None:
        """(status, body), or None when the run ends here (`last_error` says why)."""
        self.last_label = label
        try:
            return get_within(self.client, url, self.headers, self.deadline)
        except BudgetSpent:
            self.last_error = LLMError(
                code=ErrorCode.TIMEOUT,
                message=(f"no complete answer from {label} within the {self.budget_seconds:g} s health budget"),
            )
            self._note(label, None, "no answer in time")
        except TooLarge:
            self.last_error = LLMError(
                code=ErrorCode.BAD_RESPONSE,
                message=(f"{label} answered more than {MAX_LISTING_BYTES // 2**20} MB: not a model list"),
            )
            self._note(label, 200, "answer too large")
        except httpx.HTTPError as exc:
            self.connect_failed = is_connect_failure(exc)
            self.last_error = redact_error(error_from_exception(exc), self.secret)
            self._note(label, None, self.last_error.code.value)
        self.stopped = True
        return None

    def refused(self, label: str, status: int, content: bytes) -> LLMError:
        """Note a refused token (a 401/403 answer) and return its error, redacted."""
        error = redact_error(error_from_body(status, content).error, self.secret)
        text = error.message.removeprefix(f"HTTP {status}: ").removesuffix(GENERIC_FIXES.get(error.code, ""))
        self._note(label, status, "refused: " + shorten(text))
        return error

    def describe(self, label: str, status: int, content: bytes, *, what: str) -> LLMError:
        """Note an answer that is not `what`, and return it as an error."""
        failure = error_from_body(status, content).error
        if status >= 400 or not content:
            error = redact_error(failure, self.secret)
            outcome = f"HTTP {status}" + (
                f": {shorten(failure.message.removeprefix(f'HTTP {status}: '))}" if content else ", empty body"
            )
        elif failure.code == ErrorCode.BAD_RESPONSE and "error in answer" in failure.message and _has_error(content):
            text = redact(failure.message.removeprefix("error in answer: "), self.secret)
            error = LLMError(
                code=ErrorCode.BAD_RESPONSE,
                http_status=status,
                message=f"{label} answered HTTP {status} with an error body, not {what}: {text}",
            )
            outcome = f"error body: {shorten(text)}"
        else:
            error = LLMError(
                code=ErrorCode.BAD_RESPONSE, http_status=status, message=f"{label} did not answer with {what}"
            )
            outcome = f"not {what}"
        self._note(label, status, outcome)
        return error

    def listing(self, probes: list[Probe]) -> tuple[Probe, Listing] | None:
        """The first probe that yields a model listing, or None (`stopped` says whether the run ended)."""
        for probe in probes:
            got = self.fetch(probe.label, probe.url)
            if got is None:
                return None
            status, content = got
            if status in (401, 403):
                self.last_error = self.refused(probe.label, status, content)
                self.stopped = True
                return None
            if 200 <= status < 300 and content:
                try:
                    found = probe.parse(content)
                except (ValidationError, ValueError):
                    pass  # an error body, or not this kind of server: try the next probe
                else:
                    loaded = "" if found.loaded is None else f", {sum(m in found.loaded for m in found.models)} loaded"
                    self._note(probe.label, status, f"model listing ({len(found.models)} models{loaded})")
                    return probe, found
            self.last_error = self.describe(probe.label, status, content, what="a model list")
        return None

    def identify(self, root: str, endpoints: list[str]) -> str | None:
        """The first endpoint that answers with LM Studio's greeting, or None."""
        for endpoint in dict.fromkeys(endpoints):
            got = self.fetch(endpoint, f"{root}{endpoint}")
            if got is None:
                return None
            status, content = got
            if 200 <= status < 300 and is_greeting(content):
                self._note(endpoint, status, "LM Studio's greeting")
                return endpoint
            if status in (401, 403):
                # Not the greeting (which needs no token): LM Studio checks the token before the route.
                self.refused(endpoint, status, content)
                continue
            self.describe(endpoint, status, content, what="LM Studio's greeting")
        return None


def _has_error(content: bytes) -> bool:
    """Whether a 2xx body carries an error (LM Studio's answer to a route it lacks), as opposed to another
    server's own answer (llama-server's `/health`: `{"status": "ok"}`)."""
    try:
        body = ChatCompletionBody.model_validate_json(content)
    except ValidationError:
        return False
    return body.error is not None or body.detail is not None
