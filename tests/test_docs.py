"""The README stays true: every setting, CLI command and option, and catalog model is documented."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from aipower import catalog as catalog_file
from aipower.cli import cli
from aipower.settings import ENV

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands(group: click.Group, prefix: tuple[str, ...] = ("aipower",)) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command under the group, with its full path (groups included)."""
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        found.append((path, command))
        if isinstance(command, click.Group):
            found += commands(command, path)
    return found


@pytest.mark.parametrize("variable", sorted(ENV.values()))
def test_every_setting_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README


def test_provider_variables_are_documented() -> None:
    assert "`<ID>_API_KEY`" in README and "`<ID>_BASE_URL`" in README
    for provider in catalog_file.load().providers.values():
        assert provider.key_env[0].removesuffix("_API_KEY") in README, provider.id


@pytest.mark.parametrize("path", [" ".join(path) for path, _ in commands(cli)])
def test_every_command_is_documented(path: str) -> None:
    assert f"`{path}" in README, f"README has no `{path} ...` entry"


@pytest.mark.parametrize(
    ("path", "option"),
    [
        (" ".join(path), opt)
        for path, command in commands(cli)
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    ],
)
def test_every_option_is_documented(path: str, option: str) -> None:
    lines = [line for line in README.splitlines() if f"`{path}" in line]
    assert any(option in line for line in lines), f"README does not show {option} for `{path}`"


def test_first_lines_install_serve_and_test() -> None:
    first = README.splitlines()[:8]
    assert any("pip install" in line and "aipower serve" in line for line in first), first
    assert any("pytest" in line for line in first), first


def test_every_catalog_model_is_documented() -> None:
    catalog = catalog_file.load()
    assert len(catalog.models) == 16
    missing = [model_id for model_id in catalog.models if f"`{model_id}`" not in README]
    assert missing == []
    for route in catalog.routes:
        assert f"`{route}`" in README, route
