"""GET /v1/models and /v1/models/{id} through the openai SDK: the catalog, its prices and the smart route ids."""

from __future__ import annotations

from typing import Any

import openai
import pytest

CATALOG_MODELS = {
    "openai/gpt-5",
    "openai/gpt-4o-mini",
    "anthropic/claude-opus",
    "anthropic/claude-sonnet",
    "google/gemini-2.5-pro",
    "google/gemini-2.5-flash",
    "deepseek/deepseek-chat",
    "deepseek/deepseek-reasoner",
    "qwen/qwen-plus",
    "qwen/qwen-turbo",
    "zhipu/glm-5.1",
    "zhipu/glm-4-flash",
    "moonshot/kimi-k2.5",
    "moonshot/moonshot-v1-8k",
    "doubao/doubao-pro-256k",
    "minimax/minimax-text-01",
}
SMART_ROUTES = {"auto", "auto-cheap", "auto-best", "auto-code", "auto-fast", "auto-free"}


def extras(model: Any) -> dict[str, Any]:
    """The gateway's fields beyond OpenAI's model object, as the SDK keeps them."""
    return dict(model.model_extra or {})


def test_list_has_every_catalog_model_and_smart_route(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}

    assert set(models) == CATALOG_MODELS | SMART_ROUTES
    assert {i for i, m in models.items() if extras(m)["smart_route"]} == SMART_ROUTES
    assert all(m.object == "model" for m in models.values())


def test_catalog_models_carry_pricing_and_limits(client: openai.OpenAI) -> None:
    models = {m.id: extras(m) for m in client.models.list()}

    chat = models["deepseek/deepseek-chat"]
    assert chat["name"] == "DeepSeek V3"
    assert (chat["context_length"], chat["max_output_tokens"]) == (64_000, 8_192)
    assert chat["pricing"]["input"] == "0.34"
    assert chat["pricing"]["output"] == "0.50"
    assert "tools" in chat["capabilities"]
    for model_id in CATALOG_MODELS:
        assert models[model_id]["context_length"] > 0
        assert set(models[model_id]["pricing"]) >= {"input", "output"}


def test_availability_reflects_configured_keys(client: openai.OpenAI) -> None:
    models = {m.id: extras(m) for m in client.models.list()}

    assert models["deepseek/deepseek-chat"]["available"] is True
    assert models["minimax/minimax-text-01"]["available"] is False  # no MINIMAX_API_KEY in the tests


@pytest.mark.parametrize("model_id", ["deepseek/deepseek-chat", "moonshot/kimi-k2.5", "auto-cheap"])
def test_retrieve_one_model(client: openai.OpenAI, model_id: str) -> None:
    model = client.models.retrieve(model_id)

    assert model.id == model_id
    assert model.object == "model"


def test_retrieve_smart_route_lists_its_candidates(client: openai.OpenAI) -> None:
    route = extras(client.models.retrieve("auto-free"))

    assert route["smart_route"] is True
    assert "zhipu/glm-4-flash" in route["candidates"]


@pytest.mark.parametrize("model_id", ["deepseek/no-such-model", "gpt-4", "deepseek"])
def test_retrieve_unknown_model_is_not_found(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve(model_id)

    assert caught.value.code == "model_not_found"
    assert model_id in caught.value.message
