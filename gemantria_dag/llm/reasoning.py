"""The final answer of a reply, with reasoning removed wherever a server puts it. Pure functions.

Where reasoning models' thinking lands (checked against the servers' docs and issue trackers):
- a field of its own beside `content`: `reasoning_content` (DeepSeek's API, llama.cpp's server with
  `--reasoning-format deepseek`, vLLM, LM Studio's "separate reasoning" setting) or `reasoning`
  (LM Studio for gpt-oss, OpenRouter, Ollama's OpenAI API). `content` then holds the answer alone;
- inline in `content`, as tags: `<think>...</think>` (DeepSeek-R1, Qwen3, QwQ; llama.cpp with
  `--reasoning-format none`), `<thinking>`, `<reasoning>`, `<thought>`, `<seed:think>` (Seed-OSS),
  `[THINK]...[/THINK]` (Mistral's Magistral); a chat template may open the tag in the prompt, so the
  reply holds only the closing one;
- inline as gpt-oss's harmony channels: `<|channel|>analysis<|message|>...<|end|>` then
  `<|start|>assistant<|channel|>final<|message|>ANSWER`;
- `content` as a list of parts (OpenAI-style `[{"type": "text", "text": ...}]`; Mistral's
  `{"type": "thinking", ...}` parts): only text parts are the answer.
The answer is what follows the last closing mark; JSON inside reasoning is never part of it. A
reply whose reasoning was opened and never closed (the budget ran out while thinking) has no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Opening and closing marks of inline reasoning; the answer follows the last closing mark.
_TAGS = ("think", "thinking", "reasoning", "thought", "seed:think")
_CLOSE = re.compile(r"</(?:" + "|".join(re.escape(t) for t in _TAGS) + r")>|\[/THINK\]", re.IGNORECASE)
_OPEN_AT_START = re.compile(r"^\s*(?:<(?:" + "|".join(re.escape(t) for t in _TAGS) + r")>|\[THINK\])", re.IGNORECASE)
_HARMONY_FINAL = "<|channel|>final<|message|>"
_HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")
# Content-part types that carry the answer (others: "thinking", "reasoning", "refusal"...).
_TEXT_PARTS = frozenset({"text", "output_text"})


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply's content split: the final `text`, how many characters of reasoning came with it (inline
    or in a field of its own), and whether the reasoning was left unfinished (then `text` is empty)."""

    text: str
    reasoning_chars: int = 0
    reasoning_unfinished: bool = False


def content_text(content: Any) -> str | None:
    """`message.content` as text: a string as is; a list of parts joined from its text parts; else None."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") in _TEXT_PARTS]
        return "".join(t for t in texts if isinstance(t, str))
    return None


def final_answer(content: str, separate_reasoning: str | None = None) -> Answer:
    """Split `content` into the final answer and its inline reasoning; `separate_reasoning` is the
    `reasoning_content` / `reasoning` field, counted but never part of the answer."""
    extra = len(separate_reasoning or "")
    if "<|channel|>" in content:
        return _harmony(content, extra)
    closes = list(_CLOSE.finditer(content))
    if closes:
        last = closes[-1]
        return Answer(content[last.end() :].strip(), extra + last.start())
    if _OPEN_AT_START.match(content):
        return Answer("", extra + len(content), reasoning_unfinished=True)
    return Answer(content, extra)


def _harmony(content: str, extra: int) -> Answer:
    start = content.rfind(_HARMONY_FINAL)
    if start < 0:
        return Answer("", extra + len(content), reasoning_unfinished=True)
    text = content[start + len(_HARMONY_FINAL) :]
    for end in _HARMONY_ENDS:
        text = text.split(end, 1)[0]
    return Answer(text.strip(), extra + start)
