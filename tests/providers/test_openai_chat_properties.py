"""aipower/providers/openai_chat: properties over generated conversations (hypothesis).

Any valid internal conversation builds an upstream body without an exception for every OpenAI-wire provider,
and the body, read back by the gateway's own Chat Completions parser, gives the same conversation: texts,
images, tool calls and tool results in order (earlier reasoning is never sent back, and `developer` becomes
`system` where a provider has no developer role).
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipower.api.openai_chat_wire import parse_request
from aipower.catalog import Target, load
from aipower.messages import ChatRequest, Image, Message, Part, Reasoning, Text, ToolCall
from aipower.providers.openai_chat import OpenAIChat

CATALOG = load()
PROVIDERS = sorted(pid for pid, p in CATALOG.providers.items() if p.wire == "openai")

texts = st.text(max_size=12)
ids = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
arguments = st.dictionaries(texts, st.none() | st.booleans() | st.integers() | texts, max_size=3)
images = st.one_of(
    st.builds(lambda p: Image(f"https://img.test/{p}.png"), ids),
    st.builds(
        lambda d: Image(f"data:image/png;base64,{d}", "low"), st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True)
    ),
)
tool_calls = st.builds(lambda i, n, a: ToolCall(i, n, json.dumps(a)), ids, names, arguments)


def _message(role: str, parts: st.SearchStrategy[Part], as_text: bool) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda ps: Message(role, tuple(ps), content_was_text=as_text and len(ps) == 1),  # type: ignore[arg-type]
        st.lists(parts, min_size=1, max_size=4),
    )


messages = st.one_of(
    _message("system", st.builds(Text, texts), True),
    _message("developer", st.builds(Text, texts), False),
    _message("user", st.builds(Text, texts), True),
    _message("user", st.one_of(st.builds(Text, texts), images), False),
    st.builds(
        lambda thinking, ps: Message("assistant", (*thinking, *ps)),
        st.lists(st.builds(Reasoning, texts), max_size=1),
        st.lists(st.one_of(st.builds(Text, texts), tool_calls), min_size=1, max_size=4),
    ),
    st.builds(lambda i, t: Message("tool", (Text(t),), tool_call_id=i), ids, texts),
)


def _visible(message: Message, developer_role: bool) -> tuple[object, ...]:
    """What of a message the OpenAI wire carries: its role, and its parts without reasoning."""
    role = "system" if message.role == "developer" and not developer_role else message.role
    parts: list[object] = []
    for part in message.parts:
        match part:
            case Reasoning():
                continue
            case Text(text=text):
                parts.append(("text", text))
            case Image(url=url):
                parts.append(("image", url))
            case ToolCall(id=i, name=n, arguments_json=a):
                parts.append(("call", i, n, a))
    if message.role == "assistant":  # texts are joined into one content string, calls follow
        joined = "".join(p[1] for p in parts if p[0] == "text")  # type: ignore[index]
        calls = [p for p in parts if p[0] == "call"]  # type: ignore[index]
        parts = ([("text", joined)] if joined or not calls else []) + calls
    elif message.content_was_text:
        parts = [("text", "".join(p[1] for p in parts))]  # type: ignore[index]
    return (role, message.tool_call_id, tuple(parts))


@pytest.mark.parametrize("provider_id", PROVIDERS)
@settings(max_examples=60, deadline=None)
@given(conversation=st.lists(messages, min_size=1, max_size=6))
def test_any_conversation_round_trips_through_the_wire(provider_id: str, conversation: list[Message]) -> None:
    provider = CATALOG.providers[provider_id]
    model = next(m for m in CATALOG.models.values() if m.provider == provider_id)
    target = Target(model, provider, "https://upstream.test/v1", "sk-test")
    request = ChatRequest(model=model.id, messages=tuple(conversation))
    body = orjson.loads(OpenAIChat(provider).build_request(request, target).body)
    assert body["model"] == model.upstream
    body["model"] = model.id
    back = parse_request(orjson.dumps(body))
    expected = [_visible(m, provider.quirks.developer_role) for m in conversation]
    assert [_visible(m, True) for m in back.messages] == expected
