"""Token estimates for when an upstream reports no usage. Pure. Domain layer."""

from __future__ import annotations

from aipower.messages import ChatRequest, Image, Reasoning, Text, ToolCall

_CHARS_PER_TOKEN = 4
_IMAGE_TOKENS = 765  # OpenAI's cost of a 1024x1024 high-detail image


def estimate_text(text: str) -> int:
    return -(-len(text) // _CHARS_PER_TOKEN)


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
