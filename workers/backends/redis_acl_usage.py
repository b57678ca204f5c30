"""`redis_acl` usage: what a grant's ACL user did, read at revoke before ``ACL DELUSER`` (which
closes its connections).

* its open connections: ``CLIENT LIST USER <name>`` (Redis 7.2+; before, ``CLIENT LIST``
  filtered on ``user=``): address, client name, age, idle time, database, last command;
* what the server refused it: the ``ACL LOG`` entries for that user name (commands, keys or
  channels it was denied, failed logins as it), with their counts and age.

ACL LOG is server-wide and short (``acllog-max-len``, 128 entries by default), so a busy server
may have dropped older entries. Key names are the user's data: the summary is stored encrypted
with the request; only counts and denied command names reach the audit trail and Slack.

Best effort: each read has its own error in ``errors`` (an admin user without ``acl|log``, say),
and the revoke goes on.
"""

from __future__ import annotations

from typing import Any

import redis

from workers.backends.session_summary import merge_summaries

MAX_CONNECTIONS = 50
MAX_DENIED = 50
_ACL_LOG_READ = 256  # entries asked for (the server keeps acllog-max-len at most)


def _why(e: redis.RedisError) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _client_lines(client: redis.Redis, name: str) -> list[str]:
    try:
        raw = client.execute_command("CLIENT", "LIST", "USER", name)
    except redis.ResponseError:  # before 7.2: no USER filter
        raw = client.execute_command("CLIENT", "LIST")
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    return [line for line in str(raw or "").splitlines() if line.strip()]


def _fields(line: str) -> dict[str, str]:
    out = {}
    for part in line.split(" "):
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def connections(client: redis.Redis, name: str) -> tuple[list[dict[str, Any]], int]:
    mine = [f for f in map(_fields, _client_lines(client, name)) if f.get("user") == name]
    return [
        {
            "id": _int(f.get("id")),
            "addr": f.get("addr", ""),
            "name": f.get("name", "")[:200],
            "age_s": _int(f.get("age")),
            "idle_s": _int(f.get("idle")),
            "db": _int(f.get("db")),
            "last_command": f.get("cmd", "")[:60],
        }
        for f in mine[:MAX_CONNECTIONS]
    ], len(mine)


def denied(client: redis.Redis, name: str) -> tuple[list[dict[str, Any]], int]:
    entries = [e for e in client.acl_log(_ACL_LOG_READ) or [] if isinstance(e, dict) and e.get("username") == name]
    out = []
    for e in entries[:MAX_DENIED]:
        info = e.get("client-info") if isinstance(e.get("client-info"), dict) else {}
        age = e.get("age-seconds")
        out.append(
            {
                "reason": str(e.get("reason", ""))[:20],
                "context": str(e.get("context", ""))[:20],
                "object": str(e.get("object", ""))[:200],
                "count": _int(e.get("count")) or 1,
                "age_s": round(float(age), 1) if isinstance(age, int | float) else None,
                "client_addr": str(info.get("addr", ""))[:60],
            }
        )
    return out, len(entries)


def observe(client: redis.Redis, name: str) -> dict[str, Any]:
    """The summary of ACL user `name`'s use; never raises a Redis error (it lands in `errors`)."""
    summary: dict[str, Any] = {"user": name, "connections": [], "connections_total": 0, "denied": [], "denied_total": 0}
    errors = []
    try:
        summary["connections"], summary["connections_total"] = connections(client, name)
    except redis.RedisError as e:
        errors.append(f"CLIENT LIST: {_why(e)}")
    try:
        summary["denied"], summary["denied_total"] = denied(client, name)
    except redis.RedisError as e:
        errors.append(f"ACL LOG: {_why(e)}")
    if errors:
        summary["errors"] = errors
    return summary


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary for the users one revoke removed (a template change can leave two)."""
    lists, totals = ("connections", "denied"), ("connections_total", "denied_total")
    return merge_summaries(summaries, ("users", "user"), lists, totals)
