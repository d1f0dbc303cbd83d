"""aipower/settings.py: settings from an environment mapping, type conversion, secrets kept out of repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipower.settings import DEFAULT_DATABASE_URL, ENV, Settings, SettingsError, export, from_environ


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = from_environ({})
    assert settings == Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.port == 8000
    assert settings.provider_env == {}


def test_values_are_converted_to_the_field_types() -> None:
    settings = from_environ(
        {
            "AIPOWER_DATABASE_URL": "postgresql://u@db:5432/aipower",
            "AIPOWER_CATALOG": "a.toml:/etc/b.toml",
            "AIPOWER_HOST": "0.0.0.0",
            "AIPOWER_PORT": "9000",
            "AIPOWER_WORKERS": "4",
            "AIPOWER_CONNECT_TIMEOUT": "2.5",
            "AIPOWER_FIRST_BYTE_TIMEOUT": "30",
            "AIPOWER_STREAM_IDLE_TIMEOUT": "45.5",
            "AIPOWER_UPSTREAM_MAX_CONNECTIONS": "50",
            "AIPOWER_MAX_BODY_BYTES": "1024",
            "AIPOWER_KEY_CACHE_SECONDS": "0",
            "AIPOWER_LOG_LEVEL": "debug",
        }
    )
    assert settings == Settings(
        database_url="postgresql://u@db:5432/aipower",
        catalog_paths=(Path("a.toml"), Path("/etc/b.toml")),
        host="0.0.0.0",
        port=9000,
        workers=4,
        connect_timeout=2.5,
        first_byte_timeout=30.0,
        stream_idle_timeout=45.5,
        upstream_max_connections=50,
        max_body_bytes=1024,
        key_cache_seconds=0.0,
        log_level="debug",
    )
    assert type(settings.port) is int
    assert type(settings.first_byte_timeout) is float


def test_every_field_but_provider_env_has_a_variable() -> None:
    assert set(ENV) == {name for name in Settings.__dataclass_fields__ if name != "provider_env"}


def test_empty_values_mean_unset() -> None:
    assert from_environ({"AIPOWER_PORT": "", "AIPOWER_CATALOG": "", "DEEPSEEK_API_KEY": ""}) == Settings()


def test_empty_catalog_entries_are_skipped() -> None:
    assert from_environ({"AIPOWER_CATALOG": ":a.toml::"}).catalog_paths == (Path("a.toml"),)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AIPOWER_PORT", "eighty"),
        ("AIPOWER_PORT", "80.5"),
        ("AIPOWER_WORKERS", "many"),
        ("AIPOWER_CONNECT_TIMEOUT", "10s"),
        ("AIPOWER_MAX_BODY_BYTES", "16MB"),
        ("AIPOWER_KEY_CACHE_SECONDS", "five"),
    ],
)
def test_a_bad_number_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        from_environ({variable: value})
    assert variable in str(raised.value)
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("On", True), ("yes", True), ("0", False), ("off", False)]
)
def test_a_switch_takes_the_usual_words(value: str, expected: bool) -> None:
    assert from_environ({"AIPOWER_HTTP2": value}).http2 is expected


def test_a_bad_switch_names_the_variable_and_the_words_it_takes() -> None:
    with pytest.raises(SettingsError) as raised:
        from_environ({"AIPOWER_HTTP2": "h2c"})
    assert "AIPOWER_HTTP2='h2c'" in str(raised.value) and "expected 1 or 0" in str(raised.value)


def test_provider_keys_and_base_urls_are_captured() -> None:
    env = {
        "DEEPSEEK_API_KEY": "sk-deep-secret",
        "DASHSCOPE_API_KEY": "sk-dash-secret",
        "OPENAI_BASE_URL": "http://proxy.local/v1",
        "ANTHROPIC_API_KEY": "",  # empty: not configured
        "HOME": "/root",
        "AIPOWER_HOST": "::1",
        "MY_API_KEY_FILE": "/run/secret",  # does not end in _API_KEY
    }
    assert from_environ(env).provider_env == {
        "DEEPSEEK_API_KEY": "sk-deep-secret",
        "DASHSCOPE_API_KEY": "sk-dash-secret",
        "OPENAI_BASE_URL": "http://proxy.local/v1",
    }


def test_secrets_are_not_in_the_repr() -> None:
    settings = from_environ({"DEEPSEEK_API_KEY": "sk-deep-secret-123", "AIPOWER_PORT": "9001"})
    text = repr(settings)
    assert "sk-deep-secret-123" not in text
    assert "DEEPSEEK_API_KEY" not in text
    assert "9001" in text  # the rest is shown


def test_with_overrides_ignores_none() -> None:
    base = Settings(port=9000, host="0.0.0.0")
    changed = base.with_overrides(port=None, host="127.0.0.2", workers=3)
    assert (changed.port, changed.host, changed.workers) == (9000, "127.0.0.2", 3)
    assert base.host == "0.0.0.0"  # the original is unchanged


def test_export_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV.values():
        monkeypatch.setenv(variable, "")  # recorded, so monkeypatch restores the real value afterwards
    settings = Settings(
        database_url="sqlite:////tmp/x.db",
        catalog_paths=(Path("/a.toml"), Path("/b.toml")),
        port=8123,
        http2=True,
        connect_timeout=1.5,
        log_level="warning",
    )
    export(settings)
    assert from_environ().with_overrides(provider_env={}) == settings
