"""What the target saw of a grant's use, as short mrkdwn lines (pure): a token's checks by resource
server ("checked 14 times by secrets-api"), and the headline of a session summary — on the
request's message and in `/jit audit`. Counts and metadata only, never query text or key names."""

from __future__ import annotations

from typing import Any

from bot.decision.slack.views.text import code, literal

#: Sessions or connections named one by one on a line (the rest are counted).
NAMED = 3


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_lines(checks: dict[str, dict[str, Any]] | None) -> list[str]:
    """`checked 14 times by secrets-api` per resource server, the busiest first."""
    out = []
    ranked = sorted((checks or {}).items(), key=lambda kv: (-_n(kv[1].get("count")), kv[0]))
    for server, c in ranked[:5]:
        n = _n(c.get("count"))
        line = f"checked {_times(n)} by {literal(server, 100)}"
        inactive = n - _n(c.get("active"))
        if inactive > 0:
            line += f" ({inactive} answered inactive)"
        out.append(line)
    return out


def _who(items: list[Any], addr: str, name: str) -> str:
    named = []
    for item in items[:NAMED]:
        if not isinstance(item, dict):
            continue
        who = literal(item.get(name), 60)
        where = literal(item.get(addr), 60)
        named.append(f"{who} from {where}" if who and where else who or where)
    return f" ({', '.join(n for n in named if n)})" if any(named) else ""


def headline_lines(head: dict[str, Any] | None) -> list[str]:
    """A session summary's headline (bot/core/usage.py) as lines."""
    if not head:
        return []
    out = []
    if "sessions" in head:
        n = _n(head.get("sessions"))
        out.append(_plural(n, "session") + _who(head.get("session_list") or [], "client_addr", "application_name"))
    if "statements" in head:
        if head.get("statements_source") and head["statements_source"] != "pg_stat_statements":
            out.append(f"statements not recorded: {literal(head['statements_source'], 80)}")
        else:
            ran = _plural(_n(head.get("statements")), "statement")
            out.append(f"{ran} run ({_plural(_n(head.get('calls')), 'call')}, {_plural(_n(head.get('rows')), 'row')})")
    if "connections" in head:
        n = _n(head.get("connections"))
        out.append(_plural(n, "connection") + _who(head.get("connection_list") or [], "addr", "name"))
    if "denied" in head:
        n = _n(head.get("denied"))
        commands = ", ".join(code(c, 40) for c in (head.get("denied_commands") or [])[:5])
        out.append(f"{n} denied" + (f" (commands {commands})" if commands else ""))
    if head.get("output_keys"):
        keys = ", ".join(code(k, 40) for k in head["output_keys"][:8])
        out.append(f"the revoke reported {keys}")
    if head.get("errors"):
        out.append(f"not fully collected: {literal(head['errors'][0], 150)}")
    return out


def usage_line(checks: dict[str, dict[str, Any]] | None, head: dict[str, Any] | None) -> str:
    """One line for the request's message, or '' when nothing was seen."""
    lines = check_lines(checks) + headline_lines({k: v for k, v in (head or {}).items() if k != "checks"})
    return (":mag: *Seen at the target:* " + " · ".join(lines)) if lines else ""
