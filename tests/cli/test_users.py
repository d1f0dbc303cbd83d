"""`aipower users create`."""

from __future__ import annotations

from tests.cli.conftest import Invoke, query


def test_create_user(invoke: Invoke, email: str, database_url: str) -> None:
    result = invoke(["users", "create", email])
    assert result.exit_code == 0, result.output
    assert f"<{email}>" in result.stdout
    rows = query(database_url, "SELECT id, email FROM users WHERE email = :email", email=email)
    assert len(rows) == 1
    assert f"created user {rows[0]['id']} " in result.stdout


def test_email_is_normalised(invoke: Invoke, email: str, database_url: str) -> None:
    result = invoke(["users", "create", f"  {email.upper()} "])
    assert result.exit_code == 0, result.output
    assert query(database_url, "SELECT email FROM users WHERE email = :email", email=email) == [{"email": email}]


def test_duplicate_user_fails_clearly(invoke: Invoke, email: str, database_url: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0
    again = invoke(["users", "create", email.upper()])
    assert again.exit_code != 0
    assert f"a user with email {email} already exists" in again.stderr
    assert "Traceback" not in again.output
    assert again.exception is None or isinstance(again.exception, SystemExit)
    assert len(query(database_url, "SELECT id FROM users WHERE email = :email", email=email)) == 1


def test_not_an_email_is_rejected(invoke: Invoke, database_url: str) -> None:
    result = invoke(["users", "create", "not-an-email"])
    assert result.exit_code == 2
    assert "expected an email address" in result.stderr
    assert query(database_url, "SELECT id FROM users WHERE email = 'not-an-email'") == []
