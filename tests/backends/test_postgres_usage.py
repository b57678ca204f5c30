"""What a `postgres` grant's role did, read at revoke before the role goes: its sessions from
pg_stat_activity and, with pg_stat_statements preloaded, its statements — on a real cluster
started with `shared_preload_libraries = 'pg_stat_statements'`. A hanging statistics query
holds up nothing: the revoke completes and the summary says what could not be read."""

from __future__ import annotations

import psycopg
import pytest


def login(dsn: str, app: str = "deploy-job") -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name=app)


def test_revoke_reports_sessions_and_statements_before_the_role_is_dropped(pg_stats, make_request):
    backend = pg_stats.backend()
    request = make_request()
    cred = backend.grant(request)
    session = login(cred["dsn"], "migrate-42")
    for _ in range(3):
        session.execute("SELECT name FROM app_items WHERE id = %s", (1,))
    session.execute(f"ALTER ROLE {cred['username']} PASSWORD 'chosen-by-the-job-0123'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        session.execute("SELECT secret FROM secret_items")

    observed = backend.revoke(request, cred)

    assert not pg_stats.role_exists(cred["username"])
    assert observed["role"] == cred["username"]
    assert observed["sessions_total"] == 1
    (s,) = observed["sessions"]
    assert (s["client_addr"], s["application_name"], s["database"]) == ("127.0.0.1", "migrate-42", "jit_test")
    assert s["backend_start"]
    assert observed["statements_source"] == "pg_stat_statements"
    by_text = {st["query"]: st for st in observed["statements"]}
    select = by_text["SELECT name FROM app_items WHERE id = $1"]  # normalised: no constant
    assert (select["calls"], select["rows"], select["database"]) == (3, 3, "jit_test")
    assert observed["statements_total"] == len(observed["statements"])
    text = repr(observed)
    assert "chosen-by-the-job-0123" not in text and cred["password"] not in text
    assert any("PASSWORD '***'" in q for q in by_text)
    assert "errors" not in observed


def test_without_pg_stat_statements_the_sessions_are_still_reported(pg, make_request):
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    session = login(cred["dsn"])
    session.execute("SELECT count(*) FROM app_items")
    observed = backend.revoke(request, cred)
    assert not pg.role_exists(cred["username"])
    assert observed["sessions_total"] == 1 and observed["sessions"][0]["application_name"] == "deploy-job"
    with pg.admin() as admin:
        installed = admin.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    if not installed:
        assert observed["statements_source"] == "pg_stat_statements is not installed"
        assert observed.get("statements", []) == []


def test_a_hanging_statistics_query_does_not_stop_the_revoke(pg_stats, make_request):
    """Another session holds pg_stat_statements locked: the statements cannot be read, the
    revoke completes anyway (role gone, sessions ended) and the summary says why."""
    backend = pg_stats.backend()
    request = make_request()
    cred = backend.grant(request)
    session = login(cred["dsn"])
    session.execute("SELECT count(*) FROM app_items")
    blocker = psycopg.connect(pg_stats.server.admin_dsn(), connect_timeout=5)  # a transaction held open
    try:
        blocker.execute("LOCK TABLE pg_stat_statements IN ACCESS EXCLUSIVE MODE")
        observed = backend.revoke(request, cred)
        assert not pg_stats.role_exists(cred["username"])
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        assert observed["sessions_total"] == 1  # what could be read is still reported
        assert any(e.startswith("statements: timed out") for e in observed["errors"])
    finally:
        blocker.rollback()
        blocker.close()
        session.close()


def test_a_second_revoke_observes_nothing(pg, make_request):
    backend = pg.backend()
    request = make_request()
    cred = backend.grant(request)
    assert backend.revoke(request, cred)["sessions_total"] == 0
    assert backend.revoke(request, cred) is None  # the role is gone: nothing to observe
