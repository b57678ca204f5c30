"""`postgres`: overlapping grants of one role membership, and extending a grant, against a real server.

Two grants that share a target principal — membership of the same role (`grant_roles`) — each get
their own login role, so PostgreSQL keeps one `pg_auth_members` row per grant: the target counts
the references, and revoking one grant removes only its own row.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

from workers.backends.base import GrantError


def login(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def members_of(pg, role: str) -> set[str]:
    with pg.admin() as conn:
        rows = conn.execute(
            "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member WHERE r.rolname = %s",
            (role,),
        ).fetchall()
    return {r for (r,) in rows}


def test_revoking_one_of_two_overlapping_grants_keeps_the_other(pg, make_request):
    backend = pg.backend()
    deployer = pg.server.deployer
    first, second = make_request(pipeline="web-app"), make_request(pipeline="web-app")
    a, b = backend.grant(first), backend.grant(second)
    assert a["username"] != b["username"]
    assert {a["username"], b["username"]} <= members_of(pg, deployer)
    session_b = login(b["dsn"])
    assert session_b.execute("SELECT count(*) FROM app_items").fetchone()[0] == 2

    backend.revoke(first, a)

    assert not pg.role_exists(a["username"])
    assert b["username"] in members_of(pg, deployer)
    assert session_b.execute("SELECT count(*) FROM app_items").fetchone()[0] == 2  # its session lives on
    session_b.close()
    with login(b["dsn"]) as conn:  # and it still logs in with the shared role's rights
        assert conn.execute("SELECT name FROM app_items ORDER BY id").fetchall() == [("alpha",), ("beta",)]
    backend.revoke(second, b)
    assert b["username"] not in members_of(pg, deployer)


def test_a_membership_held_outside_jit_survives_the_revoke(pg, make_request):
    """A standing member of the same role (granted by a person) keeps it through a jit revoke."""
    deployer = pg.server.deployer
    standing = f"standing_{make_request().id[:8]}"
    pg.roles.add(standing)
    with pg.admin() as conn:
        conn.execute(f'CREATE ROLE "{standing}" LOGIN IN ROLE "{deployer}"')
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    backend.revoke(request, cred)
    assert standing in members_of(pg, deployer)


def test_extend_moves_valid_until_and_keeps_the_password(pg, make_request):
    backend = pg.backend()
    request = make_request(ttl=600)
    cred = backend.grant(request)
    session = login(cred["dsn"])
    longer = replace(request, expires_at=request.expires_at + timedelta(minutes=15), ttl_seconds=1500)

    again = backend.extend(longer, cred)

    assert again["password"] == cred["password"] and again["dsn"] == cred["dsn"]
    assert again["valid_until"] == longer.expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with pg.admin() as conn:
        valid_until, config = conn.execute(
            "SELECT rolvaliduntil, rolconfig FROM pg_roles WHERE rolname = %s", (cred["username"],)
        ).fetchone()
    assert valid_until == longer.expires_at
    bounds = dict(c.split("=", 1) for c in config)
    assert int(bounds["statement_timeout"]) > 600 * 1000  # the new window, not the old one
    assert session.execute("SELECT count(*) FROM app_items").fetchone()[0] == 2  # open sessions go on
    session.close()
    with login(cred["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == cred["username"]
    backend.revoke(longer, again)
    with pytest.raises(GrantError, match="is gone"):
        backend.extend(longer, again)  # nothing to extend once revoked
