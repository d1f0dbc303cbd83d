"""`aipower keys create/list/revoke`: the key is shown once, stored only as its SHA-256 digest."""

from __future__ import annotations

import hashlib

from tests.cli.conftest import Invoke, query


def create_key(invoke: Invoke, email: str, *extra: str) -> str:
    result = invoke(["keys", "create", email, *extra])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def key_row(database_url: str, email: str) -> dict[str, object]:
    rows = query(
        database_url,
        "SELECT k.* FROM api_keys k JOIN users u ON u.id = k.user_id WHERE u.email = :email",
        email=email,
    )
    assert len(rows) == 1
    return rows[0]


def test_create_prints_only_the_key_on_stdout(invoke: Invoke, email: str, database_url: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0
    result = invoke(["keys", "create", email, "--name", "laptop"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout == lines[0] + "\n"
    secret = lines[0]
    assert secret.startswith("sk-aipower-") and len(secret) > len("sk-aipower-") + 30
    row = key_row(database_url, email)
    assert f"created key {row['id']} (laptop)" in result.stderr
    assert "shown only once" in result.stderr
    assert secret not in result.stderr


def test_only_the_digest_is_stored(invoke: Invoke, email: str, database_url: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0
    secret = create_key(invoke, email)
    row = key_row(database_url, email)
    assert row["digest"] == hashlib.sha256(secret.encode()).hexdigest()
    body = secret.removeprefix("sk-aipower-")
    for column, value in row.items():
        assert body not in str(value), f"the key's secret part is stored in api_keys.{column}"
    assert secret.startswith(str(row["prefix"]).removesuffix("..."))


def test_two_keys_differ(invoke: Invoke, email: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0
    assert create_key(invoke, email) != create_key(invoke, email)


def test_create_for_unknown_user_fails(invoke: Invoke, email: str) -> None:
    result = invoke(["keys", "create", email])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert f"no user with email {email}" in result.stderr
    assert "aipower users create" in result.stderr


def test_list_shows_the_prefix_never_the_key(invoke: Invoke, email: str, database_url: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0
    secret = create_key(invoke, email, "--name", "ci-runner")
    row = key_row(database_url, email)
    result = invoke(["keys", "list", email])
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    assert secret.removeprefix("sk-aipower-") not in result.output
    header, line = result.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "KEY"]
    assert line.split()[:3] == [row["id"], "ci-runner", row["prefix"]]
    assert line.split()[-1] == "active"


def test_list_for_unknown_user_fails(invoke: Invoke, email: str) -> None:
    result = invoke(["keys", "list", email])
    assert result.exit_code != 0
    assert f"no user with email {email}" in result.stderr


def test_revoke(invoke: Invoke, email: str, database_url: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0
    create_key(invoke, email)
    key_id = str(key_row(database_url, email)["id"])
    result = invoke(["keys", "revoke", key_id])
    assert result.exit_code == 0, result.output
    assert f"revoked {key_id}" in result.stdout
    assert key_row(database_url, email)["revoked_at"] is not None
    listed = invoke(["keys", "list", email]).stdout.splitlines()[1]
    assert listed.split()[0] == key_id and listed.split()[-1] == "revoked"


def test_revoke_unknown_key_fails(invoke: Invoke) -> None:
    result = invoke(["keys", "revoke", "key_0000000000000000"])
    assert result.exit_code != 0
    assert "no key with id key_0000000000000000" in result.stderr
