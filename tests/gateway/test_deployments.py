"""aipower/gateway/deployments.py: which models are servable given provider keys, base URLs and wire formats."""

from __future__ import annotations

import pytest

from aipower.catalog import Catalog, load
from aipower.errors import ProviderNotConfigured, UpstreamUnavailable
from aipower.gateway.deployments import provider_key, resolve

WIRES = {"openai"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


def test_nothing_configured_means_no_targets(catalog: Catalog) -> None:
    deployments = resolve(catalog, {}, WIRES)
    assert deployments.targets == {}
    assert set(deployments.unavailable) == set(catalog.models)
    assert deployments.catalog is catalog


def test_a_key_enables_every_model_of_its_provider(catalog: Catalog) -> None:
    deployments = resolve(catalog, {"DEEPSEEK_API_KEY": "sk-deep"}, WIRES)
    assert set(deployments.targets) == {"deepseek/deepseek-chat", "deepseek/deepseek-reasoner"}
    chat = deployments.targets["deepseek/deepseek-chat"]
    assert chat.model is catalog.models["deepseek/deepseek-chat"]
    assert chat.provider is catalog.providers["deepseek"]
    assert chat.base_url == "https://api.deepseek.com"
    assert chat.api_key == "sk-deep"
    assert "deepseek/deepseek-chat" not in deployments.unavailable


@pytest.mark.parametrize(
    ("variable", "provider_id"),
    [
        ("DASHSCOPE_API_KEY", "qwen"),
        ("QWEN_API_KEY", "qwen"),
        ("ZHIPUAI_API_KEY", "zhipu"),
        ("ARK_API_KEY", "doubao"),
        ("MOONSHOT_API_KEY", "moonshot"),
    ],
)
def test_key_aliases(catalog: Catalog, variable: str, provider_id: str) -> None:
    deployments = resolve(catalog, {variable: "sk-alias"}, WIRES)
    served = {t.provider.id for t in deployments.targets.values()}
    assert served == {provider_id}
    assert all(t.api_key == "sk-alias" for t in deployments.targets.values())


def test_the_primary_variable_wins_over_an_alias(catalog: Catalog) -> None:
    env = {"DASHSCOPE_API_KEY": "sk-alias", "QWEN_API_KEY": "sk-primary"}
    assert provider_key(catalog.providers["qwen"], env) == "sk-primary"
    assert provider_key(catalog.providers["qwen"], {"DASHSCOPE_API_KEY": "sk-alias", "QWEN_API_KEY": ""}) == "sk-alias"
    assert provider_key(catalog.providers["qwen"], {"OPENAI_API_KEY": "sk-other"}) is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("http://127.0.0.1:9999/fake", "http://127.0.0.1:9999/fake"),
        ("https://proxy.local/v1/", "https://proxy.local/v1"),
    ],
)
def test_base_url_override(catalog: Catalog, override: str, expected: str) -> None:
    env = {"ZHIPU_API_KEY": "sk-z", "ZHIPU_BASE_URL": override, "OPENAI_BASE_URL": "http://ignored"}
    deployments = resolve(catalog, env, WIRES)
    assert {t.base_url for t in deployments.targets.values()} == {expected}


def test_an_unconfigured_provider_names_its_variables(catalog: Catalog) -> None:
    reason = resolve(catalog, {}, WIRES).unavailable["qwen/qwen-turbo"]
    assert isinstance(reason, ProviderNotConfigured)
    assert (reason.status, reason.code, reason.param) == (503, "provider_not_configured", "model")
    assert "QWEN_API_KEY or DASHSCOPE_API_KEY" in reason.message
    assert "qwen/qwen-turbo" in reason.message


def test_an_empty_key_is_not_configured(catalog: Catalog) -> None:
    deployments = resolve(catalog, {"DEEPSEEK_API_KEY": ""}, WIRES)
    assert deployments.unavailable["deepseek/deepseek-chat"].code == "provider_not_configured"


def test_a_wire_without_adapter_is_not_supported_even_with_a_key(catalog: Catalog) -> None:
    deployments = resolve(catalog, {"ANTHROPIC_API_KEY": "sk-ant", "GEMINI_API_KEY": "g"}, WIRES)
    assert deployments.targets == {}
    reason = deployments.unavailable["anthropic/claude-opus"]
    assert isinstance(reason, UpstreamUnavailable)
    assert not isinstance(reason, ProviderNotConfigured)
    assert (reason.status, reason.code) == (503, "provider_not_supported")
    assert "'anthropic' wire format" in reason.message


def test_a_registered_wire_is_served(catalog: Catalog) -> None:
    deployments = resolve(catalog, {"GEMINI_API_KEY": "g-key"}, {"openai", "gemini"})
    assert set(deployments.targets) == {"google/gemini-2.5-pro", "google/gemini-2.5-flash"}


def test_the_key_is_not_in_a_target_repr(catalog: Catalog) -> None:
    target = resolve(catalog, {"DEEPSEEK_API_KEY": "sk-very-secret"}, WIRES).targets["deepseek/deepseek-chat"]
    assert "sk-very-secret" not in repr(target)
