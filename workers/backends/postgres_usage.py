"""`postgres` usage: what a grant's role did, read at revoke before the role is dropped.

* its sessions from ``pg_stat_activity`` (cluster-wide): client address and port,
  ``application_name``, ``backend_start``, database, state — read after the role lost its
  login and memberships and before its sessions are ended;
* where the ``pg_stat_statements`` extension is installed in the admin DSN's database (and
  preloaded with ``shared_preload_libraries``), the statements the role ran in any database:
  normalised query text, calls, rows — the most called first, at most MAX_STATEMENTS, each
  query cut to MAX_QUERY characters.

``pg_stat_statements`` replaces the constants of ordinary statements with ``$1``…, but utility
statements (``ALTER ROLE … PASSWORD '…'``, ``COPY``, ``SET``) keep their text on PostgreSQL 15
and older: password literals are masked here, the credential's own secrets by jit, and the
summary is stored encrypted with the request; only counts reach the audit trail and Slack.

Best effort, bounded: the queries run in their own transaction with ``lock_timeout`` and
``statement_timeout`` of OBSERVE_TIMEOUT_MS, and any error is written into the summary's
``errors`` (the revoke goes on with the same connection).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from workers.backends.session_summary import merge_summaries

OBSERVE_TIMEOUT_MS = 2000
MAX_SESSIONS = 50
MAX_STATEMENTS = 50
MAX_QUERY = 1000

_PASSWORD_LITERAL = re.compile(r"(password\s+)(E?'(?:[^']|'')*')", re.I)


def _query_text(text: str) -> str:
    text = _PASSWORD_LITERAL.sub(r"\1'***'", text or "")
    return text if len(text) <= MAX_QUERY else text[:MAX_QUERY] + "…"


def _why(e: psycopg.Error) -> str:
    if isinstance(e, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return f"timed out after {OBSERVE_TIMEOUT_MS} ms"
    diag = getattr(e, "diag", None)
    primary = diag.message_primary if diag is not None and diag.message_primary else type(e).__name__
    return primary.splitlines()[0][:200] if primary else type(e).__name__


def _bounded(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(OBSERVE_TIMEOUT_MS)))
    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(OBSERVE_TIMEOUT_MS)))


def _sessions(conn: psycopg.Connection, name: str) -> tuple[list[dict[str, Any]], int]:
    rows = conn.execute(
        "SELECT pid, host(client_addr), client_port, application_name, backend_start, datname, state, "
        "count(*) OVER () FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid() "
        "ORDER BY backend_start LIMIT %s",
        (name, MAX_SESSIONS),
    ).fetchall()
    sessions = [
        {
            "pid": pid,
            "client_addr": addr or "local",
            "client_port": port,
            "application_name": (app or "")[:200],
            "backend_start": start.isoformat() if start else None,
            "database": db,
            "state": state,
        }
        for pid, addr, port, app, start, db, state, _ in rows
    ]
    return sessions, (rows[0][-1] if rows else 0)


def _statements_schema(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'"
    ).fetchone()
    return row[0] if row else None


def _statements(conn: psycopg.Connection, schema: str, name: str) -> tuple[list[dict[str, Any]], int]:
    rows = conn.execute(
        sql.SQL(
            "SELECT s.query, s.calls, s.rows, d.datname, count(*) OVER () FROM {}.pg_stat_statements s "
            "JOIN pg_roles r ON r.oid = s.userid LEFT JOIN pg_database d ON d.oid = s.dbid "
            "WHERE r.rolname = %s ORDER BY s.calls DESC, s.query LIMIT %s"
        ).format(sql.Identifier(schema)),
        (name, MAX_STATEMENTS),
    ).fetchall()
    statements = [
        {"query": _query_text(query), "calls": int(calls), "rows": int(n), "database": db}
        for query, calls, n, db, _ in rows
    ]
    return statements, (rows[0][-1] if rows else 0)


def observe(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """The summary of role `name`'s use; never raises a database error (it lands in `errors`)."""
    summary: dict[str, Any] = {"role": name, "sessions": [], "sessions_total": 0}
    errors: list[str] = []
    try:
        with conn.transaction():
            _bounded(conn)
            summary["sessions"], summary["sessions_total"] = _sessions(conn, name)
    except psycopg.Error as e:
        errors.append(f"sessions: {_why(e)}")
    try:
        with conn.transaction():
            _bounded(conn)
            schema = _statements_schema(conn)
            if schema is None:
                summary["statements_source"] = "pg_stat_statements is not installed"
            else:
                summary["statements_source"] = "pg_stat_statements"
                summary["statements"], summary["statements_total"] = _statements(conn, schema, name)
    except psycopg.Error as e:
        errors.append(f"statements: {_why(e)}")
    if errors:
        summary["errors"] = errors
    return summary


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary for the roles one revoke removed (a template change can leave two)."""
    lists, totals = ("sessions", "statements"), ("sessions_total", "statements_total")
    out = merge_summaries(summaries, ("roles", "role"), lists, totals)
    if out is None or len(summaries) == 1:
        return out
    sources = {s["statements_source"] for s in summaries if s.get("statements_source")}
    if sources:
        out["statements_source"] = ", ".join(sorted(sources))
    return out
