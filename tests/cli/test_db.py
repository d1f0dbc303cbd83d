"""`aipower db upgrade`, and the CLI's help on every command."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from aipower.cli import cli
from tests.cli.conftest import Invoke, isolated_env, query


def test_upgrade_twice(invoke: Invoke, database_url: str) -> None:
    for _ in range(2):
        result = invoke(["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert "is at revision head" in result.stdout
    assert len(query(database_url, "SELECT version_num FROM alembic_version")) == 1


def test_upgrade_creates_a_new_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "new.db"
    url = f"sqlite:///{path}"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["db", "upgrade"], env=isolated_env(url))
        assert result.exit_code == 0, result.output
    assert path.is_file()
    tables = {r["name"] for r in query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "api_keys", "request_log", "alembic_version"} <= tables


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("serve", "users", "keys", "models", "db"):
        assert any(line.split()[:1] == [name] for line in result.stdout.splitlines()), name


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def test_every_command_has_help() -> None:
    paths = command_paths(cli)
    assert ("keys", "revoke") in paths and ("db", "upgrade") in paths
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        usage = result.stdout.splitlines()[0]
        assert usage.startswith("Usage: ") and f" {' '.join(path)} " in f"{usage} ", usage
        assert "--help" in result.stdout and result.stdout.count("\n") > 3


def test_a_command_on_a_database_not_there_yet_says_it_created_one(tmp_path: Path) -> None:
    """A misspelt AIPOWER_DATABASE_URL used to put the user into a new, empty database without a word."""
    path = tmp_path / "aipower-dta" / "aipower.db"
    env = isolated_env(f"sqlite:///{path}")
    first = CliRunner().invoke(cli, ["users", "create", "a@example.com"], env=env)
    second = CliRunner().invoke(cli, ["users", "create", "b@example.com"], env=env)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert f"created a new database at {path}" in first.stderr
    assert "created a new database" not in second.stderr
