"""`postgres` backend against a real server (see conftest: own scram cluster + shared server)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from workers.backends import registry
from workers.backends.base import BackendEnv, GrantError
from workers.backends.postgres import PostgresBackend


def login(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


# -- config -----------------------------------------------------------------------------


def test_registered_and_enforces_expiry():
    assert registry()["postgres"] is PostgresBackend
    assert PostgresBackend.enforces_expiry is True


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"on_owned_objects": "reassign"}, "reassign_to is required"),
        ({"on_owned_objects": "keep"}, "on_owned_objects"),
        ({"username_template": "jit_{action}"}, "{id8}"),
        ({"username_template": "{action}_{id8}"}, "identifier"),
        ({"username_template": "pg_{id8}"}, "pg_"),
        ({"username_template": "jit-{id8}"}, "identifier"),
        ({"username_template": "jit_{secret}_{id8}"}, "unknown field"),
        ({"username_template": "x" * 60 + "_{id8}"}, "longer than 63"),
        ({"password": "nope"}, "Extra inputs"),
        ({"dsn_env": "postgres://u:p@h/db"}, "environment variable"),
        ({"connect_port": 0}, "connect_port"),
    ],
)
def test_config_rejects(extra, fragment):
    cfg = {"dsn_env": "PG_DSN", "grant_roles": ["deployer"], **extra}
    with pytest.raises(ValidationError) as e:
        PostgresBackend.Config(**cfg)
    assert fragment in str(e.value)


def test_missing_dsn_env_is_a_grant_error(make_request):
    backend = PostgresBackend(
        PostgresBackend.Config(dsn_env="NOT_SET_ANYWHERE", grant_roles=["deployer"]),
        BackendEnv(environ={}),
    )
    with pytest.raises(GrantError, match="NOT_SET_ANYWHERE is not set"):
        backend.grant(make_request())


# -- grant / revoke ---------------------------------------------------------------------


def test_granted_dsn_logs_in_with_deployer_privileges(pg, make_request):
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)

    assert set(cred) == {"username", "password", "host", "port", "dbname", "dsn", "valid_until"}
    assert cred["username"] == f"jit_deploy_{request.id[:8]}"
    assert (cred["host"], cred["port"], cred["dbname"]) == (
        pg.server.host,
        pg.server.port,
        pg.server.dbname,
    )
    assert cred["dsn"].startswith(f"postgresql://{cred['username']}:")
    assert cred["dsn"].endswith(f"@{pg.server.host}:{pg.server.port}/{pg.server.dbname}")
    assert cred["valid_until"] == request.expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    with login(cred["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == cred["username"]
        assert conn.execute("SELECT name FROM app_items ORDER BY id").fetchall() == [
            ("alpha",),
            ("beta",),
        ]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM secret_items")

    with pg.admin() as conn:
        rolvaliduntil, rolcanlogin, rolsuper = conn.execute(
            "SELECT rolvaliduntil, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s",
            (cred["username"],),
        ).fetchone()
    assert rolcanlogin and not rolsuper
    assert rolvaliduntil == request.expires_at
    backend.revoke(request, cred)


def test_password_is_really_checked(pg, make_request):
    if not pg.server.password_auth:
        pytest.skip("shared server uses trust auth: passwords are not checked there")
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    wrong = cred["dsn"].replace(cred["password"], "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login(wrong)
    with pg.admin() as conn:  # stored as a SCRAM verifier, never in clear text
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (cred["username"],)).fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$") and cred["password"] not in stored
    backend.revoke(request, cred)


def test_valid_until_is_enforced_by_the_server(pg, make_request):
    if not pg.server.password_auth:
        pytest.skip("VALID UNTIL only applies to password authentication (shared server: trust)")
    backend = pg.backend()
    past = datetime.now(UTC) - timedelta(minutes=1)
    request = make_request(expires_at=past)
    cred = backend.grant(request)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login(cred["dsn"])
    backend.revoke(request, cred)


def test_revoke_blocks_login_and_ends_open_sessions(pg, make_request):
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    session = login(cred["dsn"])
    assert session.execute("SELECT count(*) FROM app_items").fetchone()[0] == 2

    backend.revoke(request, cred)

    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")  # terminated by pg_terminate_backend
    session.close()
    with pytest.raises(psycopg.OperationalError):
        login(cred["dsn"])
    assert not pg.role_exists(cred["username"])


def test_revoke_twice_and_revoke_of_nothing_succeed(pg, make_request):
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    backend.revoke(request, cred)
    backend.revoke(request, cred)
    backend.revoke(request, None)
    backend.revoke(make_request(), None)  # never granted at all
    assert not pg.role_exists(cred["username"])


def test_grant_twice_keeps_one_role_and_latest_password(pg, make_request):
    backend = pg.backend()
    request = make_request()
    first = backend.grant(request)
    second = backend.grant(request)

    assert first["username"] == second["username"]
    assert first["password"] != second["password"]
    with pg.admin() as conn:
        count = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = %s",
            (f"jit:{request.id}",),
        ).fetchone()[0]
    assert count == 1
    with login(second["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == second["username"]
    if pg.server.password_auth:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            login(first["dsn"])
    backend.revoke(request, second)
    assert not pg.role_exists(second["username"])


def test_interrupted_grant_is_cleaned_up_by_revoke_without_credential(pg, make_request):
    """The role was created, then the job died before the credential was stored."""
    backend = pg.backend()
    request = make_request()
    lost = backend.grant(request)
    name = lost["username"]
    with pg.admin() as conn:  # let it own something, and keep a session open
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
    session = login(lost["dsn"])
    session.execute(f"CREATE TABLE scratch_{request.id[:8]} (x int)")

    backend.revoke(request, None)

    assert not pg.role_exists(name)
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    with pg.admin() as conn:  # on_owned_objects=drop: its table went with it
        assert conn.execute("SELECT to_regclass(%s)", (f"scratch_{request.id[:8]}",)).fetchone()[0] is None


def test_reassign_owned_keeps_objects(pg, make_request):
    backend = pg.backend(on_owned_objects="reassign", reassign_to=pg.server.deployer)
    request = make_request()
    cred = backend.grant(request)
    with pg.admin() as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(cred["username"])))
    table = f"kept_{request.id[:8]}"
    with login(cred["dsn"]) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(table)))

    backend.revoke(request, cred)

    assert not pg.role_exists(cred["username"])
    with pg.admin() as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = %s", (table,)).fetchone()
        assert owner == (pg.server.deployer,)
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


@pytest.mark.parametrize(
    "action",
    ['Deploy"; DROP ROLE postgres; --', "prod/db:migrate", "ÄÖÜ ünïcode", "x" * 200, "'quote'"],
)
def test_odd_action_names_give_safe_identifiers(pg, make_request, action):
    backend = pg.backend(username_template="jit_{action}_{pipeline}_{id8}")
    request = make_request(action=action, pipeline='web"app')
    cred = backend.grant(request)
    name = cred["username"]
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", name) and len(name.encode()) <= 63
    assert name.endswith(f"_{request.id[:8]}")
    with login(cred["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == name
    backend.revoke(request, cred)
    assert not pg.role_exists(name)
    assert pg.role_exists("postgres")


def test_quoted_identifiers_for_roles(pg, make_request):
    """grant_roles are quoted too: a role name with a quote and a space works."""
    odd = f'deploy "team" {make_request().id[:6]}'
    with pg.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(odd)))
        conn.execute(sql.SQL("GRANT SELECT ON app_items TO {}").format(sql.Identifier(odd)))
    pg.roles.add(odd)
    backend = pg.backend(grant_roles=[odd])
    request = make_request()
    cred = backend.grant(request)
    with login(cred["dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM app_items").fetchone()[0] == 2
    backend.revoke(request, cred)


def test_existing_foreign_role_is_never_touched(pg, make_request):
    backend = pg.backend()
    request = make_request()
    name = backend.username(request)
    with pg.admin() as conn:  # someone else's role that happens to have the same name
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'theirs'").format(sql.Identifier(name)))
        before = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()
    with pytest.raises(GrantError, match="not created by jit"):
        backend.grant(request)
    backend.revoke(request, None)
    with pg.admin() as conn:
        after = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()
    assert after == before


def test_failed_grant_leaves_nothing_behind(pg, make_request):
    backend = pg.backend(grant_roles=[pg.server.deployer, "no_such_role_for_jit_tests"])
    request = make_request()
    with pytest.raises(GrantError) as e:
        backend.grant(request)
    assert "no_such_role_for_jit_tests" in str(e.value)
    assert not pg.role_exists(backend.username(request))
    backend.revoke(request, None)


def test_errors_never_carry_secrets(pg, make_request):
    if not pg.server.password_auth:
        pytest.skip("needs password auth for a failing login")
    bad_password = "Sup3r-Secret-Admin-Pw"
    dsn = pg.server.admin_dsn().replace(pg.server.admin_password, bad_password)
    backend = pg.backend(environ={"JIT_TEST_PG_DSN": dsn})
    with pytest.raises(GrantError) as e:
        backend.grant(make_request())
    assert bad_password not in str(e.value) and "password authentication failed" in str(e.value)

    garbage = f"postgresql://admin:{bad_password}@host:notaport/db"
    backend = pg.backend(environ={"JIT_TEST_PG_DSN": garbage})
    with pytest.raises(GrantError) as e:
        backend.grant(make_request())
    assert bad_password not in str(e.value)


def test_connect_overrides_in_handed_out_dsn(pg, make_request):
    backend = pg.backend(connect_host="db.example.internal", connect_port=6543, dbname="app")
    request = make_request()
    cred = backend.grant(request)
    assert (cred["host"], cred["port"], cred["dbname"]) == ("db.example.internal", 6543, "app")
    assert cred["dsn"] == f"postgresql://{cred['username']}:{cred['password']}@db.example.internal:6543/app"
    backend.revoke(request, cred)
