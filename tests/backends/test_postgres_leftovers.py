"""What a temporary PostgreSQL role leaves behind must not outlive its grant as access.

The temporary role may create objects (it has CREATE on a schema, through `grant_roles` or
PostgreSQL <= 14's writable `public` schema). After revoke, an unrelated login must not gain
anything through them: not the rights of the role the objects are reassigned to, not the
role's memberships, and not objects left in another database.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from workers.backends.base import GrantError

SECRET = "do not read"  # the row of secret_items (see conftest); only `owner` may read it


def login(dsn: str, dbname: str | None = None) -> psycopg.Connection:
    if dbname is not None:
        dsn = make_conninfo(dsn, dbname=dbname)
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


@dataclass
class Cast:
    """The roles around one temporary login."""

    owner: str  # reassign_to: may read secret_items
    outsider_dsn: str  # an unrelated login with no privileges of its own


@pytest.fixture
def cast(pg) -> Cast:
    tag = secrets.token_hex(4)
    owner, outsider = f"jit_test_owner_{tag}", f"jit_test_outsider_{tag}"
    password = secrets.token_urlsafe(16)
    with pg.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT SELECT ON secret_items TO {}").format(sql.Identifier(owner)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(outsider), sql.Literal(password))
        )
    pg.roles.update({owner, outsider})
    s = pg.server
    return Cast(owner, f"postgresql://{outsider}:{password}@{s.host}:{s.port}/{s.dbname}")


def grant_create_on_public(pg, role: str, dbname: str | None = None) -> None:
    with pg.server.admin(dbname) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))


def memberships(pg, role: str) -> list[tuple[str, str]]:
    with pg.admin() as conn:
        return conn.execute(
            "SELECT r.rolname, m.rolname FROM pg_auth_members a "
            "JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
            "WHERE r.rolname = %s OR m.rolname = %s",
            (role, role),
        ).fetchall()


def can_login(pg, role: str) -> bool:
    with pg.admin() as conn:
        row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return bool(row and row[0])


def read_secret(conn: psycopg.Connection, query: str) -> list[str]:
    """Rows `query` returns, or [] when PostgreSQL refuses it."""
    try:
        return [str(r[0]) for r in conn.execute(query).fetchall()]
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable):
        return []


# -- item: things that run with their owner's rights after REASSIGN OWNED -------------------------
#
# Each scenario: what the temporary role creates (as itself, through its DSN), and how an
# unrelated login then tries to read secret_items through it (`admin` plays autovacuum or the
# owner's routine maintenance where PostgreSQL itself runs the code).


def _security_definer(tmp, tag):
    tmp.execute(
        f"CREATE FUNCTION leak_{tag}() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT secret FROM secret_items'"
    )

    def exploit(outsider, admin):
        return read_secret(outsider, f"SELECT * FROM leak_{tag}()")

    return exploit, f"leak_{tag}()"


def _view(tmp, tag):
    tmp.execute(f"CREATE VIEW peek_{tag} AS SELECT secret FROM secret_items")
    tmp.execute(f"GRANT SELECT ON peek_{tag} TO PUBLIC")

    def exploit(outsider, admin):
        return read_secret(outsider, f"SELECT * FROM peek_{tag}")

    return exploit, f"peek_{tag}"


def _rule(tmp, tag):
    tmp.execute(f"CREATE TABLE inbox_{tag} (x int)")
    tmp.execute(f"CREATE TABLE box_{tag} (s text)")
    tmp.execute(f"GRANT INSERT ON inbox_{tag} TO PUBLIC")
    tmp.execute(f"GRANT SELECT ON box_{tag} TO PUBLIC")
    tmp.execute(
        f"CREATE RULE copy_{tag} AS ON INSERT TO inbox_{tag} "
        f"DO ALSO INSERT INTO box_{tag} SELECT secret FROM secret_items"
    )

    def exploit(outsider, admin):
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            outsider.execute(f"INSERT INTO inbox_{tag} VALUES (1)")
        return read_secret(outsider, f"SELECT s FROM box_{tag}")

    return exploit, f"copy_{tag}"


def _cascade_trigger(tmp, tag):
    """A referential cascade runs as the owner of the referencing table, and fires its triggers."""
    tmp.execute(f"CREATE TABLE box_{tag} (s text)")
    tmp.execute(f"GRANT SELECT ON box_{tag} TO PUBLIC")
    tmp.execute(f"CREATE TABLE parent_{tag} (id int PRIMARY KEY)")
    tmp.execute(f"INSERT INTO parent_{tag} VALUES (1)")
    tmp.execute(f"GRANT SELECT, DELETE ON parent_{tag} TO PUBLIC")
    tmp.execute(f"CREATE TABLE child_{tag} (id int REFERENCES parent_{tag} ON DELETE CASCADE)")
    tmp.execute(f"INSERT INTO child_{tag} VALUES (1)")
    tmp.execute(
        f"CREATE FUNCTION steal_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO box_{tag} SELECT secret FROM secret_items; RETURN OLD; END $$"
    )
    tmp.execute(f"CREATE TRIGGER t_{tag} BEFORE DELETE ON child_{tag} FOR EACH ROW EXECUTE FUNCTION steal_{tag}()")

    def exploit(outsider, admin):
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            outsider.execute(f"DELETE FROM parent_{tag}")
        return read_secret(outsider, f"SELECT s FROM box_{tag}")

    return exploit, f"steal_{tag}()"


def _index_expression(tmp, tag):
    """ANALYZE (autovacuum) evaluates index expressions as the table's owner."""
    tmp.execute(f"CREATE TABLE box_{tag} (s text)")
    tmp.execute(f"GRANT SELECT ON box_{tag} TO PUBLIC")
    tmp.execute(
        f"CREATE FUNCTION grab_{tag}() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO box_{tag} SELECT secret FROM secret_items; RETURN 1; "
        "EXCEPTION WHEN insufficient_privilege THEN RETURN 1; END $$"
    )
    tmp.execute(
        f"CREATE FUNCTION same_{tag}(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
        f"PERFORM grab_{tag}(); RETURN $1; END $$"
    )
    tmp.execute(f"CREATE TABLE data_{tag} (a int)")
    tmp.execute(f"INSERT INTO data_{tag} SELECT generate_series(1, 20)")
    tmp.execute(f"CREATE INDEX ON data_{tag} (same_{tag}(a))")

    def exploit(outsider, admin):
        admin.execute(f"ANALYZE data_{tag}")  # what autovacuum does on its own
        return read_secret(outsider, f"SELECT s FROM box_{tag}")

    return exploit, f"same_{tag}(integer)"


def _materialized_view(tmp, tag):
    """REFRESH runs the query as the owner; the grant to PUBLIC survives the reassignment."""
    tmp.execute(f"CREATE MATERIALIZED VIEW snap_{tag} AS SELECT secret FROM secret_items WITH NO DATA")
    tmp.execute(f"GRANT SELECT ON snap_{tag} TO PUBLIC")

    def exploit(outsider, admin):
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            admin.execute(f"REFRESH MATERIALIZED VIEW snap_{tag}")  # the owner's nightly refresh
        try:
            return read_secret(outsider, f"SELECT * FROM snap_{tag}")
        except psycopg.errors.ObjectNotInPrerequisiteState:  # never populated
            return []

    return exploit, f"snap_{tag}"


SCENARIOS: dict[str, Callable] = {
    "security definer function": _security_definer,
    "view": _view,
    "rule": _rule,
    "trigger fired by a cascade": _cascade_trigger,
    "index expression run by ANALYZE": _index_expression,
    "materialized view": _materialized_view,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_reassign_never_hands_the_owners_rights_to_anyone(pg, cast, make_request, scenario):
    backend = pg.backend(on_owned_objects="reassign", reassign_to=cast.owner)
    request = make_request()
    cred = backend.grant(request)
    grant_create_on_public(pg, cred["username"])
    tag = request.id[:8]
    with login(cred["dsn"]) as tmp:
        assert read_secret(tmp, "SELECT secret FROM secret_items") == []  # not even the role itself
        exploit, named = SCENARIOS[scenario](tmp, tag)

    with pytest.raises(GrantError) as refused:
        backend.revoke(request, cred)

    # Refused, naming what it found; the role is left unable to do anything.
    assert named in str(refused.value) and cast.owner in str(refused.value)
    assert not can_login(pg, cred["username"]) and memberships(pg, cred["username"]) == []
    with login(cast.outsider_dsn) as outsider, pg.admin() as admin:
        assert SECRET not in exploit(outsider, admin)


def test_reassign_proceeds_once_the_operator_has_dealt_with_them(pg, cast, make_request):
    backend = pg.backend(on_owned_objects="reassign", reassign_to=cast.owner)
    request = make_request()
    cred = backend.grant(request)
    grant_create_on_public(pg, cred["username"])
    tag = request.id[:8]
    with login(cred["dsn"]) as tmp:
        exploit, _ = _view(tmp, tag)
    with pytest.raises(GrantError):
        backend.revoke(request, cred)
    with pg.admin() as admin:  # reviewed: not wanted
        admin.execute(f"DROP VIEW peek_{tag}")
    backend.revoke(request, cred)
    assert not pg.role_exists(cred["username"])


def test_reassign_keeps_what_runs_with_the_callers_rights(pg, cast, make_request):
    """Tables, a security_invoker view and a plain function are reassigned as before."""
    backend = pg.backend(on_owned_objects="reassign", reassign_to=cast.owner)
    request = make_request()
    cred = backend.grant(request)
    grant_create_on_public(pg, cred["username"])
    tag = request.id[:8]
    with login(cred["dsn"]) as tmp:
        tmp.execute(f"CREATE TABLE kept_{tag} (x int)")
        tmp.execute(f"CREATE VIEW inv_{tag} WITH (security_invoker = on) AS SELECT secret FROM secret_items")
        tmp.execute(f"GRANT SELECT ON inv_{tag} TO PUBLIC")
        tmp.execute(f"CREATE FUNCTION plain_{tag}() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        tmp.execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC")

    backend.revoke(request, cred)

    assert not pg.role_exists(cred["username"])
    with pg.admin() as admin:
        owners = admin.execute(
            "SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relname = ANY(%s) ORDER BY relname",
            ([f"kept_{tag}", f"inv_{tag}"],),
        ).fetchall()
        assert owners == [(f"inv_{tag}", cast.owner), (f"kept_{tag}", cast.owner)]
        assert admin.execute(
            "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = %s", (f"plain_{tag}",)
        ).fetchone() == (cast.owner,)
    with login(cast.outsider_dsn) as outsider:
        assert SECRET not in read_secret(outsider, f"SELECT * FROM inv_{tag}")


# -- item: objects in other databases (PostgreSQL <= 14: public is writable by all) ---------------


@pytest.fixture
def other_db(pg) -> Iterator[str]:
    """A second database whose `public` schema anyone may create in (the <= 14 default)."""
    name = f"{pg.server.dbname}_other_{secrets.token_hex(3)}"
    with pg.server.admin("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with pg.server.admin(name) as conn:
            conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        yield name
    finally:
        with pg.server.admin("postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("mode", ["drop", "reassign"])
def test_revoke_cleans_up_in_every_database(pg, cast, make_request, other_db, mode):
    config = {"on_owned_objects": mode}
    if mode == "reassign":
        config["reassign_to"] = cast.owner
    backend = pg.backend(**config)
    request = make_request()
    cred = backend.grant(request)
    table = f"elsewhere_{request.id[:8]}"
    with login(cred["dsn"], other_db) as tmp:
        tmp.execute(f"CREATE TABLE {table} (x int)")
        tmp.execute(f"GRANT SELECT ON {table} TO PUBLIC")

    backend.revoke(request, cred)

    assert not pg.role_exists(cred["username"])
    with pg.server.admin(other_db) as conn:
        owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = %s", (table,)).fetchone()
    assert owner == ((cast.owner,) if mode == "reassign" else None)


def test_reassign_refuses_owner_rights_objects_in_other_databases_too(pg, cast, make_request, other_db):
    backend = pg.backend(on_owned_objects="reassign", reassign_to=cast.owner)
    request = make_request()
    cred = backend.grant(request)
    tag = request.id[:8]
    with login(cred["dsn"], other_db) as tmp:
        tmp.execute(f"CREATE FUNCTION elsewhere_{tag}() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'")
    with pytest.raises(GrantError) as refused:
        backend.revoke(request, cred)
    assert other_db in str(refused.value) and f"elsewhere_{tag}()" in str(refused.value)
    assert not can_login(pg, cred["username"]) and memberships(pg, cred["username"]) == []


def test_a_stuck_revoke_leaves_no_login_and_no_memberships(pg, make_request, other_db):
    """Objects in a database nobody can connect to: DROP ROLE must fail, access must not stay."""
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    with login(cred["dsn"], other_db) as tmp:
        tmp.execute(f"CREATE TABLE stuck_{request.id[:8]} (x int)")
    session = login(cred["dsn"])
    with pg.server.admin("postgres") as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(other_db)))
    try:
        with pytest.raises(GrantError) as stuck:
            backend.revoke(request, cred)
        assert other_db in str(stuck.value)
        assert pg.role_exists(cred["username"])
        assert not can_login(pg, cred["username"])
        assert memberships(pg, cred["username"]) == []  # no deployer rights through it either
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            login(cred["dsn"])
    finally:
        session.close()
        with pg.server.admin("postgres") as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(other_db)))
    backend.revoke(request, cred)  # once the database is reachable again, it finishes
    assert not pg.role_exists(cred["username"])
