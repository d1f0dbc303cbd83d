"""Token estimates for when an upstream reports no usage. Pure. Domain layer."""

from __future__ import annotations

from aipower.messages import ChatRequest, Image, Reasoning, Text, ToolCall

_CHARS_PER_TOKEN = 4
_IMAGE_TOKENS = 765  # OpenAI's cost of a 1024x1024 high-detail image


def estimate_text(text: str) -> int:
    return estimate_chars(len(text))


def estimate_chars(chars: int) -> int:
    return -(-chars // _CHARS_PER_TOKEN)


def estimate_prompt(request: ChatRequest) -> int:
    total = 0
    for message in request.messages:
        total += 4
        for part in message.parts:
            match part:
                case Text(text=text) | Reasoning(text=text):
                    total += estimate_text(text)
                case Image():
                    total += _IMAGE_TOKENS
                case ToolCall(name=name, arguments_json=args):
                    total += estimate_text(name) + estimate_text(args)
    return total


def estimate_prompt_upper(request: ChatRequest) -> int:
    """A prompt estimate meant to be at or above the real count: UTF-8 bytes / 2 (CJK text runs near 1 token a
    character, i.e. 3 bytes), plus per-message overhead and a fixed cost per image."""
    total = 0
    for message in request.messages:
        total += 8
        for part in message.parts:
            match part:
                case Text(text=text) | Reasoning(text=text):
                    total += -(-len(text.encode()) // 2)
                case Image():
                    total += 2 * _IMAGE_TOKENS
                case ToolCall(name=name, arguments_json=args):
                    total += -(-(len(name) + len(args.encode())) // 2)
    for tool in request.tools:
        total += -(-len(str(tool.parameters_schema or "") + (tool.description or "")) // 2) + 8
    return total
