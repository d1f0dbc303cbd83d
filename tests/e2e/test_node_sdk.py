"""The official openai Node SDK (pinned in tests/e2e/node/package-lock.json) against the gateway over HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from aipower import catalog as catalog_file
from tests.conftest import Gateway
from tests.e2e.conftest import clean_environ
from tests.fakes.upstream import FakeUpstream, JsonReply, SseReply, completion, stream_chunks

MODEL = "deepseek/deepseek-chat"
OPENAI_NODE_VERSION = "6.49.0"
TOOL_CALL = {
    "id": "call_weather_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def run_node(package: Path, gateway: Gateway) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    env = clean_environ({"AIPOWER_BASE_URL": gateway.base_url, "AIPOWER_KEY": gateway.api_key, "AIPOWER_MODEL": MODEL})
    result = subprocess.run(
        [node, "drive.mjs"], cwd=package, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"node drive.mjs failed:\n{result.stdout}\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    data: dict[str, Any] = json.loads(lines[0])
    return data


def test_node_sdk_is_the_pinned_version(node_package: Path) -> None:
    lock = json.loads((node_package / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/openai"]["version"] == OPENAI_NODE_VERSION
    installed = json.loads((node_package / "node_modules" / "openai" / "package.json").read_text())
    assert installed["version"] == OPENAI_NODE_VERSION


def test_node_sdk_against_the_gateway(node_package: Path, gateway: Gateway, upstream: FakeUpstream) -> None:
    # The script's three upstream calls, in order: a completion, a stream with usage, a tool call.
    upstream.enqueue(
        JsonReply(completion("deepseek-chat", "Bonjour from upstream.", prompt_tokens=11, completion_tokens=5)),
        SseReply(stream_chunks("deepseek-chat", ["Bon", "jour", "!"], usage=True)),
        JsonReply(completion("deepseek-chat", "", tool_calls=[TOOL_CALL])),
    )
    results = run_node(node_package, gateway)

    assert results["non_stream"] == {
        "model": MODEL,
        "content": "Bonjour from upstream.",
        "finish_reason": "stop",
        "usage": results["non_stream"]["usage"],
    }
    usage = results["non_stream"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (11, 5, 16)

    streamed = results["stream"]
    assert streamed["deltas"] == ["Bon", "jour", "!"]
    assert streamed["finish_reason"] == "stop"
    assert streamed["usage_chunk_choices"] == 0
    assert (streamed["usage"]["prompt_tokens"], streamed["usage"]["completion_tokens"]) == (9, 3)

    catalog = catalog_file.load()
    assert set(results["models"]) == set(catalog.models) | set(catalog.routes)
    assert len(results["models"]) == len(catalog.models) + len(catalog.routes)

    assert results["tool_call"] == {
        "finish_reason": "tool_calls",
        "tool_calls": [
            {"id": "call_weather_1", "type": "function", "name": "get_weather", "arguments": {"city": "Paris"}}
        ],
    }

    assert results["unknown_model"] == {
        "not_found": True,
        "authentication": False,
        "status": 404,
        "code": "model_not_found",
        "type": results["unknown_model"]["type"],
    }
    assert results["bad_key"]["authentication"] is True
    assert results["bad_key"]["not_found"] is False
    assert results["bad_key"]["status"] == 401
    assert results["bad_key"]["code"] == "invalid_api_key"

    # The SDK's requests reached the provider as sent: three calls, the tools forwarded on the last.
    assert [r.path for r in upstream.requests] == ["/deepseek/chat/completions"] * 3
    first, second, third = (r.json for r in upstream.requests)
    assert first["model"] == "deepseek-chat" and not first.get("stream")
    assert second["stream"] is True and second["stream_options"] == {"include_usage": True}
    assert third["tools"][0]["function"]["name"] == "get_weather"
    assert third["tool_choice"] == "auto"
