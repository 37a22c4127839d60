"""Every shape of reply a real server sends, read by the pure protocol code (one row per shape).

Reasoning wherever servers put it, content as parts, errors inside a 200, models that are loading,
answers cut by the token budget. The fault-server and CLI tests (test_reply_faults_e2e.py) check the
same kinds end to end.
"""

from __future__ import annotations

import json

import pytest

from gemantria_dag.llm.call import Backend, CallState, PlainServer, RetryPolicy
from gemantria_dag.llm.reasoning import content_text, final_answer
from gemantria_dag.llm.reply import Failure, Reply, StreamAccumulator, error_from_body, parse_chat_response
from gemantria_dag.llm.request import StructuredOutput
from gemantria_dag.llm.results import ErrorCode, LLMError

FINAL = '{"insight": "final", "themes": ["a"], "confidence": 0.9}'
DRAFT = '{"insight": "draft", "themes": ["b"], "confidence": 0.1}'


@pytest.mark.parametrize(
    ("content", "answer", "unfinished"),
    [
        (FINAL, FINAL, False),
        # DeepSeek-R1 / Qwen3 / QwQ with inline reasoning; a bare brace or a whole draft inside it.
        (f"<think>the answer needs {{ and }}</think>\n{FINAL}", FINAL, False),
        (f"<think>first try: {DRAFT} no, better:</think>{FINAL}", FINAL, False),
        # The chat template opened the tag in the prompt: only the closing tag is in the reply.
        (f"let me think {DRAFT}\n</think>\n\n{FINAL}", FINAL, False),
        (f"<thinking>{DRAFT}</thinking>{FINAL}", FINAL, False),
        (f"<reasoning>{DRAFT}</reasoning> {FINAL}", FINAL, False),
        (f"<seed:think>{DRAFT}</seed:think>{FINAL}", FINAL, False),
        (f"[THINK]{DRAFT}[/THINK]{FINAL}", FINAL, False),  # Mistral's Magistral
        (f"<THINK>{DRAFT}</THINK>{FINAL}", FINAL, False),
        # Two reasoning blocks: the answer follows the last one.
        (f"<think>a</think>{DRAFT}<think>no</think>{FINAL}", FINAL, False),
        # gpt-oss's harmony channels left inline.
        (
            f"<|channel|>analysis<|message|>{DRAFT}<|end|><|start|>assistant<|channel|>final<|message|>{FINAL}"
            "<|return|>",
            FINAL,
            False,
        ),
        # The budget ran out while thinking: no answer at all, never the draft.
        (f"<think>{DRAFT} and then", "", True),
        (f"<|channel|>analysis<|message|>{DRAFT}", "", True),
    ],
)
def test_the_final_answer_is_what_follows_the_reasoning(content: str, answer: str, unfinished: bool) -> None:
    got = final_answer(content)
    assert (got.text, got.reasoning_unfinished) == (answer, unfinished)
    assert DRAFT not in got.text


def test_content_parts_keep_only_text() -> None:
    parts = [{"type": "thinking", "thinking": DRAFT}, {"type": "text", "text": FINAL}]
    assert content_text(parts) == FINAL
    assert content_text(None) is None and content_text("x") == "x"


def _body(message: dict, finish: str = "stop", **extra: object) -> bytes:
    return json.dumps(
        {"model": "m", "choices": [{"message": {"role": "assistant", **message}, "finish_reason": finish}], **extra}
    ).encode()


@pytest.mark.parametrize(
    "message",
    [
        {"content": FINAL, "reasoning_content": f"thinking {DRAFT}"},  # llama.cpp, DeepSeek, vLLM
        {"content": FINAL, "reasoning": f"thinking {DRAFT}"},  # LM Studio (gpt-oss), OpenRouter, Ollama
        {"content": f"<think>{DRAFT}</think>{FINAL}"},
        {"content": [{"type": "text", "text": FINAL}]},
    ],
)
def test_a_whole_reply_yields_the_final_answer(message: dict) -> None:
    reply = parse_chat_response(200, _body(message))
    assert isinstance(reply, Reply) and reply.text == FINAL


def test_reasoning_only_reply_is_an_empty_answer_with_its_reasoning_counted() -> None:
    reply = parse_chat_response(200, _body({"content": "", "reasoning_content": "x" * 50}, finish="length"))
    assert isinstance(reply, Reply) and reply.text == "" and reply.reasoning_chars == 50


def test_a_stream_with_inline_and_separate_reasoning_yields_the_final_answer() -> None:
    acc = StreamAccumulator(0.0)
    pieces = [{"reasoning_content": DRAFT}, {"content": "<think>"}, {"content": DRAFT}, {"content": "</think>"}]
    for delta in [*pieces, {"content": FINAL}]:
        acc.feed_line("data: " + json.dumps({"choices": [{"delta": delta}]}))
    acc.feed_line("data: " + json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    reply = acc.outcome()
    assert isinstance(reply, Reply) and reply.text == FINAL and reply.reasoning_chars >= len(DRAFT)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (429, ErrorCode.RATE_LIMITED),
        (502, ErrorCode.SERVER_ERROR),
        (504, ErrorCode.SERVER_ERROR),
        (503, ErrorCode.SERVER_ERROR),
        (401, ErrorCode.UNAUTHORIZED),
        (403, ErrorCode.UNAUTHORIZED),
        (400, ErrorCode.BAD_REQUEST),
        ("429", ErrorCode.RATE_LIMITED),
    ],
)
def test_an_error_inside_a_200_is_typed_by_its_code(code: int | str, expected: ErrorCode) -> None:
    body = json.dumps({"error": {"message": "Provider returned error", "code": code}}).encode()
    outcome = parse_chat_response(200, body)
    assert isinstance(outcome, Failure) and outcome.error.code == expected
    assert outcome.error.is_retryable == (expected in (ErrorCode.RATE_LIMITED, ErrorCode.SERVER_ERROR))


def test_an_error_without_a_numeric_code_in_a_200_stays_a_bad_response() -> None:
    body = json.dumps({"error": "Unexpected endpoint or method. (POST /api/v0/x)"}).encode()
    outcome = parse_chat_response(200, body)
    assert isinstance(outcome, Failure) and outcome.error.code == ErrorCode.BAD_RESPONSE


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (503, "Loading model"),  # llama.cpp's server
        (503, "Model google/gemma is currently loading"),  # Hugging Face's inference API
        (503, "model is loading, please retry"),
    ],
)
def test_a_model_that_is_loading_is_its_own_state(status: int, message: str) -> None:
    body = json.dumps({"error": {"code": status, "message": message, "type": "unavailable_error"}}).encode()
    failure = error_from_body(status, body, retry_after=None)
    assert failure.error.code == ErrorCode.MODEL_LOADING and failure.error.is_retryable


def _call(max_tokens: int = 16, policy: RetryPolicy | None = None) -> CallState:
    backend = Backend(
        "b",
        PlainServer("http://x/v1/chat/completions", "/v1/chat/completions"),
        policy or RetryPolicy(3, 60, 0.01, 0.02, load_budget_seconds=5),
    )
    structured = StructuredOutput(name="x", schema={"type": "object"})
    call = CallState(backend, [{"role": "user", "content": "x"}], "m", 0.2, max_tokens, structured, False)
    call.begin_attempt()
    return call


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (
            Reply(text='{"insight": "cut', model="m", prompt_tokens=9, completion_tokens=16, finish_reason="length"),
            "cut at max_tokens=16",
        ),
        (
            Reply(
                text="", model="m", prompt_tokens=9, completion_tokens=16, finish_reason="length", reasoning_chars=70
            ),
            "spent max_tokens=16 on reasoning",
        ),
        (
            Reply(
                text="",
                model="m",
                prompt_tokens=9,
                completion_tokens=16,
                finish_reason="length",
                reasoning_chars=70,
                reasoning_unfinished=True,
            ),
            "spent max_tokens=16 on reasoning",
        ),
    ],
)
def test_finish_reason_length_is_truncated_naming_max_tokens_and_not_retried(reply: Reply, says: str) -> None:
    call = _call()
    result = call.after(reply)
    assert not isinstance(result, float), "a cut answer must not be sent again with the same budget"
    assert not result.ok and result.error is not None
    assert result.error.code == ErrorCode.TRUNCATED and not result.error.is_retryable
    assert says in result.error.message and result.error.fix
    assert result.metadata.completion_tokens == 16 and result.metadata.finish_reason == "length"
    assert call.attempts == 1


def test_lm_studio_stop_reason_max_predicted_tokens_is_length() -> None:
    body = json.dumps(
        {
            "model": "m",
            "choices": [{"message": {"content": "{"}}],
            "stats": {"stop_reason": "maxPredictedTokensReached"},
        }
    ).encode()
    reply = parse_chat_response(200, body)
    assert isinstance(reply, Reply) and reply.finish_reason == "length"


def test_a_loading_model_is_waited_for_within_the_load_budget_only() -> None:
    policy = RetryPolicy(1, 60, 0.5, 8, load_budget_seconds=20)
    loading = Failure(LLMError(code=ErrorCode.MODEL_LOADING, message="HTTP 503: Loading model"))
    delays = [policy.delay_before_next(n, loading, elapsed) for n, elapsed in ((1, 0.0), (5, 10.0), (9, 19.5))]
    assert all(d is not None and 0 < d <= 2.0 for d in delays)  # more attempts than max_attempts=1
    assert policy.delay_before_next(10, loading, 20.0) is None
    other = Failure(LLMError(code=ErrorCode.SERVER_ERROR, message="HTTP 500"))
    assert policy.delay_before_next(1, other, 0.0) is None  # max_attempts=1 for everything else


def test_free_text_cut_by_the_budget_is_still_an_answer() -> None:
    backend = Backend(
        "b", PlainServer("http://x/v1/chat/completions", "/v1/chat/completions"), RetryPolicy(1, 60, 0, 0)
    )
    call = CallState(backend, [{"role": "user", "content": "x"}], "m", 0.2, 16, None, False)
    call.begin_attempt()
    result = call.after(
        Reply(text="Once upon a", model="m", prompt_tokens=3, completion_tokens=16, finish_reason="length")
    )
    assert not isinstance(result, float) and result.ok and result.metadata.finish_reason == "length"
