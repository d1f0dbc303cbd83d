"""Providers layer: one module per wire format, plus the one transport. WIRE_FORMATS maps catalog `wire` to adapter."""

from __future__ import annotations

from collections.abc import Mapping

from aipower.providers.anthropic import AnthropicMessages
from aipower.providers.base import Adapter
from aipower.providers.gemini import Gemini
from aipower.providers.openai_chat import OpenAIChat

WIRE_FORMATS: Mapping[str, type[Adapter]] = {"openai": OpenAIChat, "anthropic": AnthropicMessages, "gemini": Gemini}
