"""Token estimates for when an upstream reports no usage. Pure. Domain layer."""

from __future__ import annotations

from collections.abc import Callable

from aipower.messages import ChatRequest, Image, Reasoning, Text, ToolCall

_CHARS_PER_TOKEN = 4
_IMAGE_TOKENS = 765  # OpenAI's cost of a 1024x1024 high-detail image


def estimate_text(text: str) -> int:
    return estimate_chars(len(text))


def estimate_chars(chars: int) -> int:
    return -(-chars // _CHARS_PER_TOKEN)


def estimate_prompt(request: ChatRequest) -> int:
    """A typical prompt estimate (4 characters a token), for usage an upstream did not report."""
    return _walk(request, estimate_text, per_message=4, per_image=_IMAGE_TOKENS)


def estimate_prompt_upper(request: ChatRequest) -> int:
    """A prompt estimate meant to be at or above the real count: UTF-8 bytes / 2 (CJK text runs near 1 token a
    character, i.e. 3 bytes), plus per-message overhead, a fixed cost per image, and the tool schemas."""
    total = _walk(request, _half_bytes, per_message=8, per_image=2 * _IMAGE_TOKENS)
    for tool in request.tools:
        total += _half_bytes(str(tool.parameters_schema or "") + (tool.description or "")) + 8
    return total


def _half_bytes(text: str) -> int:
    return -(-len(text.encode()) // 2)


def _walk(request: ChatRequest, size: Callable[[str], int], per_message: int, per_image: int) -> int:
    total = 0
    for message in request.messages:
        total += per_message
        for part in message.parts:
            match part:
                case Text(text=text) | Reasoning(text=text):
                    total += size(text)
                case Image():
                    total += per_image
                case ToolCall(name=name, arguments_json=args):
                    total += size(name) + size(args)
    return total
