"""`jit policy check` warns (exit 0) about `postgres` grant_roles that are superuser-equivalent."""

from __future__ import annotations

import secrets
import socket
import threading
from pathlib import Path

import pytest
from psycopg import sql

from bot.cli import main as jit_cli

ENV = "JIT_TEST_PG_CHECK_DSN"


def policy(tmp_path: Path, grant_roles: list[str]) -> Path:
    path = tmp_path / "jit-policy.yaml"
    path.write_text(
        f"""\
defaults:
  channel: C0APPROVALS
pipelines:
  db-ci:
    token_sha256: "{"ab" * 32}"
    actions: [migrate]
actions:
  migrate:
    approvers: [U0LEAD1]
    grant:
      type: postgres
      dsn_env: {ENV}
      grant_roles: [{", ".join(grant_roles)}]
"""
    )
    return path


def check(path: Path, capsys) -> list[str]:
    assert jit_cli(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: ok — 1 action(s)")
    return out[1:]


def warning(path: Path, text: str) -> str:
    return f"{path}: actions.migrate.grant: warning: {text}"


def test_superuser_equivalent_names_warn_without_any_database(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    path = policy(
        tmp_path,
        [
            "deployer",
            "postgres",
            "pg_execute_server_program",
            "pg_write_server_files",
            "pg_read_server_files",
        ],
    )
    lines = check(path, capsys)
    assert len(lines) == 4
    for role in (
        "postgres",
        "pg_execute_server_program",
        "pg_write_server_files",
        "pg_read_server_files",
    ):
        assert any(line.startswith(warning(path, f"grant role '{role}' ")) for line in lines)
    assert not any("deployer" in line for line in lines)


def test_a_plain_policy_has_no_warnings(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert check(policy(tmp_path, ["deployer"]), capsys) == []


def test_the_database_tells_which_roles_are_powerful(pg, tmp_path, capsys, monkeypatch):
    tag = secrets.token_hex(3)
    creator, bypass, member = (f"jit_test_{kind}_{tag}" for kind in ("cr", "rls", "member"))
    nested = f"jit_test_nested_{tag}"
    with pg.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(sql.Identifier(creator)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS").format(sql.Identifier(bypass)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(member)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(bypass), sql.Identifier(member)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(nested)))
        conn.execute(sql.SQL("GRANT pg_read_server_files TO {}").format(sql.Identifier(nested)))
    pg.roles.update({creator, bypass, member, nested})
    monkeypatch.setenv(ENV, pg.server.admin_dsn())
    path = policy(tmp_path, [pg.server.deployer, creator, member, nested])

    lines = check(path, capsys)

    assert warning(path, f"grant role '{creator}' has CREATEROLE") in lines
    assert warning(path, f"grant role '{member}' is a member of '{bypass}', which has BYPASSRLS") in lines
    assert any(
        line.startswith(warning(path, f"grant role '{nested}' is a member of 'pg_read_server_files'")) for line in lines
    )
    assert len(lines) == 3 and not any(f"'{pg.server.deployer}'" in line for line in lines)


def test_an_unreachable_database_never_fails_the_check(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(ENV, f"postgresql://admin:Secret-Pw-123@127.0.0.1:{port}/app")
    lines = check(policy(tmp_path, ["postgres", "deployer"]), capsys)
    assert len(lines) == 2
    assert "is superuser-equivalent" in lines[0]
    assert f"could not look up grant_roles with {ENV}" in lines[1]
    assert "Secret-Pw-123" not in "\n".join(lines)


def test_a_silent_database_costs_only_the_short_connect_timeout(tmp_path, capsys, monkeypatch):
    """A server that accepts the connection and never answers must not hang the check."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    monkeypatch.setenv(ENV, f"postgresql://admin@127.0.0.1:{port}/app")
    path = policy(tmp_path, ["deployer"])
    result: dict = {}

    def run() -> None:
        result["code"] = jit_cli(["policy", "check", str(path)])

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "policy check hung on a database that never answers"
    finally:
        silent.close()
    assert result["code"] == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and f"could not look up grant_roles with {ENV}" in out[1]


@pytest.mark.parametrize("backend_type", ["token", "exec"])
def test_other_backends_have_no_warnings(tmp_path, capsys, backend_type):
    grant = (
        "{type: token, audience: api}"
        if backend_type == "token"
        else '{type: exec, grant_command: ["/bin/true"], revoke_command: ["/bin/true"]}'
    )
    path = tmp_path / "p.yaml"
    path.write_text(
        f"""\
defaults: {{channel: C0APPROVALS}}
pipelines:
  ci: {{token_sha256: "{"ab" * 32}", actions: [a]}}
actions:
  a: {{approvers: [U0LEAD1], grant: {grant}}}
"""
    )
    assert jit_cli(["policy", "check", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
