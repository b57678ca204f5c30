"""Sessions of a `postgres` grant while no worker runs: what the server itself bounds.

`VALID UNTIL` refuses new logins after the window; it does not end a session already open.
The grant sets per-role defaults no longer than the grant's TTL, so a forgotten session ends
without jit: idle, idle in a transaction, or one statement running past the TTL.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

BOUND = 4  # seconds: the TTL of the grants below (their expiry is far away, as when no worker runs)


def login(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def far_future():
    return datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)


def wait_until_gone(pg, pid: int, within: float = 60.0) -> bool:
    """True once the server has ended backend `pid` (polled from an admin session)."""
    deadline = time.monotonic() + within
    with pg.admin() as admin:
        while time.monotonic() < deadline:
            row = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row is None:
                return True
            time.sleep(0.2)
    return False


@pytest.fixture
def grant(pg, make_request):
    backend = pg.backend()
    request = make_request(ttl=BOUND, expires_at=far_future())
    cred = backend.grant(request)
    yield cred
    backend.revoke(request, cred)


def test_the_role_carries_bounds_no_longer_than_its_ttl(pg, grant):
    with pg.admin() as admin:
        (settings,) = admin.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s AND s.setdatabase = 0",
            (grant["username"],),
        ).fetchone()
    ms = BOUND * 1000
    assert sorted(settings) == [
        f"idle_in_transaction_session_timeout={ms}",
        f"idle_session_timeout={ms}",
        f"statement_timeout={ms}",
    ]


def test_an_idle_session_is_ended_by_the_server(pg, grant):
    session = login(grant["dsn"])
    pid = session.info.backend_pid
    assert wait_until_gone(pg, pid), "an idle session outlived the grant's TTL"
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()


def test_a_session_idle_in_a_transaction_is_ended_by_the_server(pg, grant):
    session = psycopg.connect(grant["dsn"], connect_timeout=5)  # not autocommit
    session.execute("SELECT count(*) FROM app_items")  # opens a transaction, then idles in it
    pid = session.info.backend_pid
    assert wait_until_gone(pg, pid), "a session idle in a transaction outlived the grant's TTL"
    with pytest.raises((psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)):
        session.execute("SELECT 1")
    session.close()


def test_a_statement_running_past_the_ttl_is_cancelled(grant):
    with login(grant["dsn"]) as session:
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            session.execute("SELECT pg_sleep(30)")


def test_the_bounds_are_defaults_a_client_can_lift(pg, grant):
    """What README promises: these end forgotten sessions, not a hostile client's. Only the
    worker's revoke (pg_terminate_backend) ends a session that SETs them off."""
    with login(grant["dsn"]) as session:
        session.execute("SET idle_session_timeout = 0")
        assert session.execute("SHOW idle_session_timeout").fetchone() == ("0",)
