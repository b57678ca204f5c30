"""What a grant's target saw of its use: the session summary a backend returns at revoke, bounded
and masked, and the headline of it that may go into the audit trail (pure, no I/O).

A summary is a JSON object. The built-in backends use these keys (docs/backends.md):

* `sessions` (+ `sessions_total`), `statements` (+ `statements_total`, `statements_source`):
  `postgres`, from pg_stat_activity and pg_stat_statements;
* `connections` (+ `connections_total`), `denied` (+ `denied_total`): `redis_acl`, from
  CLIENT LIST and ACL LOG;
* `output`: `exec` and `webhook`, the revoke command's or endpoint's JSON object;
* `checks`: resource server → {count, active, first, last}: `/v1/introspect` of a `token`;
* `errors`: what could not be collected (usage is best effort).

The whole summary may hold literals (query text, key names, a script's output): it is stored
encrypted with the request. The headline holds counts and connection metadata only, never
query text, key names or output values: it goes into the audit trail and onto Slack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

#: A stored summary is at most this large (canonical JSON); beyond, lists and strings are cut.
MAX_SUMMARY_BYTES = 64 * 1024
#: Items kept per list, characters per string, nesting depth, in a stored summary.
MAX_ITEMS = 100
MAX_STRING = 2000
MAX_DEPTH = 6
#: Sessions, connections and denials named one by one in the headline (the rest are counted).
HEADLINE_ITEMS = 10
#: Key names that never reach a summary, wherever they are (as in the audit trail).
SECRET_KEYS = frozenset({"credential", "token", "request_token", "password", "secret", "dsn", "authorization", "url"})
MASK = "***"


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(summary: dict[str, Any]) -> str:
    """The sha256 of a summary's canonical JSON: the audit entry carries it, so a summary read
    back (`jit audit export --request`) can be checked against the signed trail."""
    return hashlib.sha256(canonical(summary).encode()).hexdigest()


#: Credential fields that name where and who, not a secret: a summary may show them (a session's
#: client address equal to the credential's host stays readable). Every other string is masked.
NOT_SECRET = frozenset(
    {"username", "user", "host", "hostname", "port", "dbname", "database", "db", "token_type", "expires_at"}
    | {"valid_until", "issued_at"}
)


def secret_values(credential: Any) -> list[str]:
    """Every string in a credential long enough to be a secret (passwords, tokens, DSNs, URLs,
    anything a backend returned), except the fields in NOT_SECRET."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if str(k).lower() not in NOT_SECRET:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and len(v) >= 8:
            found.append(v)

    walk(credential)
    return sorted(set(found), key=len, reverse=True)  # longest first: a DSN before its password


def _mask(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def _bound(value: Any, secrets: list[str], depth: int, items: int, chars: int) -> Any:
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return "…"
        out = {}
        for k, v in list(value.items())[:items]:
            key = _mask(str(k), secrets)[:200]
            if key.lower() in SECRET_KEYS:
                continue
            out[key] = _bound(v, secrets, depth + 1, items, chars)
        return out
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return "…"
        return [_bound(v, secrets, depth + 1, items, chars) for v in list(value)[:items]]
    if isinstance(value, str):
        value = _mask(value, secrets)
        return value if len(value) <= chars else value[:chars] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    return _mask(str(value), secrets)[:chars]


def bounded(summary: dict[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """`summary` made safe to keep: secret-named keys dropped, every `secrets` value masked,
    lists, strings and depth cut until its canonical JSON fits MAX_SUMMARY_BYTES (then
    `truncated: true`)."""
    keep = [s for s in secrets if s]
    items, chars = MAX_ITEMS, MAX_STRING
    out = _bound(summary, keep, 0, items, chars)
    while len(canonical(out).encode()) > MAX_SUMMARY_BYTES and items > 1:
        items, chars = max(1, items // 2), max(40, chars // 2)
        out = {**_bound(summary, keep, 0, items, chars), "truncated": True}
    if len(canonical(out).encode()) > MAX_SUMMARY_BYTES:
        out = {"truncated": True, "keys": sorted(str(k)[:100] for k in summary)[:20]}
    return out


def _count(summary: dict[str, Any], key: str) -> int:
    total = summary.get(f"{key}_total")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    items = summary.get(key)
    return len(items) if isinstance(items, list) else 0


def _num(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _pick(item: Any, *names: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {}
    return {n: item[n] for n in names if isinstance(item.get(n), str | int) and not isinstance(item.get(n), bool)}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """What of a summary goes into the audit trail and onto Slack: counts, who connected from
    where, resource servers' checks — never query text, key names or output values."""
    out: dict[str, Any] = {}
    if "sessions" in summary:
        out["sessions"] = _count(summary, "sessions")
        out["session_list"] = [
            _pick(s, "client_addr", "application_name", "backend_start", "database")
            for s in (summary.get("sessions") or [])[:HEADLINE_ITEMS]
        ]
    if "statements" in summary or "statements_source" in summary:
        statements = [s for s in summary.get("statements") or [] if isinstance(s, dict)]
        out["statements"] = _count(summary, "statements")
        out["calls"] = sum(_num(s.get("calls")) for s in statements)
        out["rows"] = sum(_num(s.get("rows")) for s in statements)
        if isinstance(summary.get("statements_source"), str):
            out["statements_source"] = summary["statements_source"][:100]
    if "connections" in summary:
        out["connections"] = _count(summary, "connections")
        out["connection_list"] = [
            _pick(c, "addr", "name", "age_s") for c in (summary.get("connections") or [])[:HEADLINE_ITEMS]
        ]
    if "denied" in summary:
        denied = [d for d in summary.get("denied") or [] if isinstance(d, dict)]
        out["denied"] = _count(summary, "denied")
        by_reason: dict[str, int] = {}
        for d in denied:
            reason = str(d.get("reason") or "other")[:20]
            by_reason[reason] = by_reason.get(reason, 0) + max(1, _num(d.get("count")))
        out["denied_by_reason"] = by_reason
        # command names are the server's vocabulary; key names are the user's data: not here
        out["denied_commands"] = sorted(
            {str(d.get("object"))[:40] for d in denied if d.get("reason") == "command" and d.get("object")}
        )[:HEADLINE_ITEMS]
    if isinstance(summary.get("output"), dict):
        out["output_keys"] = sorted(str(k)[:60] for k in summary["output"])[:20]
    if isinstance(summary.get("checks"), dict):
        out["checks"] = {
            str(server)[:100]: _pick(c, "count", "active", "first", "last")
            for server, c in list(summary["checks"].items())[:20]
        }
    errors = [str(e)[:200] for e in summary.get("errors") or [] if e]
    if errors:
        out["errors"] = errors[:5]
    if summary.get("truncated"):
        out["truncated"] = True
    return out
