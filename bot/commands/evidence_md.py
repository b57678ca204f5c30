"""`jit audit evidence --format md`: the bundle as a document people read, with the signed JSON at
its end. Rendering is a pure function of the bundle, so `jit audit verify --evidence` renders it
again and compares every byte: the readable part cannot be edited either."""

from __future__ import annotations

import json
from typing import Any

from bot.commands.evidence import MD_JSON_END, MD_JSON_START, dumps


def _cell(value: Any) -> str:
    """A value in a table cell: never a live link, mention or table break."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    )
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("`", "'"), ("<", "&lt;"), (">", "&gt;"), ("\r", " "), ("\n", " ")):
        text = text.replace(a, b)
    return text


def _code(value: Any) -> str:
    return f"`{_cell(value)}`" if value not in (None, "") else "—"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _entry(seq: Any) -> str:
    return f"#{seq}" if seq is not None else "—"


def _credential(cred: dict[str, Any]) -> list[str]:
    if not cred:
        return ["No credential was issued.", ""]
    revoked = (
        f"{_cell(cred.get('revoked_at'))} by {_cell(cred.get('revoked_by'))} (entry {_entry(cred.get('revoke_seq'))})"
    )
    return _table(
        [
            ("Issued", f"{_cell(cred.get('issued_at'))} (entry {_entry(cred.get('issue_seq'))})"),
            ("Expires", _cell(cred.get("expires_at"))),
            (
                "Extended",
                _cell(
                    [
                        f"{e['by']} at {e['at']} to {e['details'].get('new_expires_at')} (#{e['seq']})"
                        for e in cred.get("extensions") or []
                    ]
                ),
            ),
            ("Backend", _code(cred.get("backend"))),
            ("Fetched", _cell([f"{f['by']} at {f['at']} (#{f['seq']})" for f in cred.get("fetched") or []])),
            ("Revoke asked", _cell(cred.get("revoke_requested"))),
            ("Revoked", revoked if cred.get("revoked_at") else "—"),
            ("Revoke confirmed by the backend", _cell(cred.get("revoke_confirmed_by_backend"))),
            ("Revoke details", _cell(cred.get("revoke_details"))),
            ("Failed attempts", _cell((cred.get("grant_failures") or []) + (cred.get("revoke_failures") or []))),
        ]
    )


def _session(events: list[dict[str, Any]]) -> list[str]:
    return [
        f"- {_cell(s.get('at'))} {_code(s.get('event'))} by {_cell(s.get('by'))} "
        f"(entry {_entry(s.get('seq'))}): {_cell(s.get('details'))}"
        for s in events
    ]


def render(doc: dict[str, Any]) -> str:
    req = doc.get("request") or {}
    pipe = doc.get("pipeline") or {}
    dec = doc.get("decision") or {}
    cred = doc.get("credential") or {}
    pol = doc.get("policy") or {}
    head = (doc.get("chain") or {}).get("head") or {}
    sig = doc.get("signature") or {}
    out = [
        f"# Evidence: request `{_cell(doc.get('request_id'))}`",
        "",
        f"Made by jit at {_cell(doc.get('generated_at'))} from its audit trail ({_cell(doc.get('format'))}). "
        f"Chain head then: entry #{_cell(head.get('seq'))}, SHA-256 `{_cell(head.get('hash'))}`. "
        f"Signed with audit key `{_cell(sig.get('kid'))}`: check it offline with "
        "`jit audit verify --evidence FILE --keys KEYS`, KEYS being the server's "
        "`/.well-known/jit-audit-keys.json`.",
        "",
        "## Request",
        "",
        *_table(
            [
                ("Action", _code(req.get("action"))),
                ("Pipeline", _code(req.get("pipeline"))),
                ("Reason", _cell(req.get("reason"))),
                ("TTL asked", f"{_cell(req.get('ttl_seconds'))} s"),
                ("Requested by", _cell(req.get("requested_by"))),
                ("Requester in Slack", _cell(req.get("requester_slack_id"))),
                ("Break glass asked", _cell(req.get("break_glass_requested"))),
                ("Created", f"{_cell(req.get('created_at'))} (entry {_entry(req.get('seq'))})"),
                ("Outcome", f"**{_cell(doc.get('outcome'))}**"),
            ]
        ),
        "## Pipeline identity",
        "",
        *_table(
            [
                ("Verified by OIDC", _cell(pipe.get("verified"))),
                *(
                    (f"Verified claim `{_cell(k)}`", _cell(v))
                    for k, v in sorted((pipe.get("verified_claims") or {}).items())
                ),
                *(
                    (f"Stated, not verified: `{_cell(k)}`", _cell(v))
                    for k, v in sorted((pipe.get("stated_context") or {}).items())
                ),
            ]
        ),
        "## Policy and decision",
        "",
        *_table(
            [
                ("Policy version", _code(pol.get("sha256"))),
                ("Policy source", _cell(pol.get("source"))),
                ("Rule of the action", _cell(pol.get("rule"))),
                ("Decision", _cell(dec.get("outcome"))),
                ("How", _cell(dec.get("how"))),
                ("By", _cell(dec.get("by"))),
                ("At", f"{_cell(dec.get('at'))} (entry {_entry(dec.get('seq'))})"),
                ("Details", _cell(dec.get("details"))),
            ]
        ),
        "### Approvals",
        "",
        "| approver | at | entry |",
        "|---|---|---|",
        *(
            f"| {_cell(a.get('by'))} | {_cell(a.get('at'))} | {_entry(a.get('seq'))} |"
            for a in doc.get("approvals") or []
        ),
        "",
        "## Credential",
        "",
        *_credential(cred),
        "## Session",
        "",
        *(_session(doc.get("session") or []) or ["No session was recorded for this request."]),
        "",
        "## Audit entries",
        "",
        "| entry | time | event | actor | outcome | SHA-256 |",
        "|---|---|---|---|---|---|",
        *(
            f"| #{_cell(e.get('seq'))} | {_cell(e.get('time'))} | {_code(e.get('event'))} | {_cell(e.get('actor'))} "
            f"| {_cell(e.get('outcome'))} | `{_cell(str(e.get('hash'))[:16])}…` |"
            for e in doc.get("entries") or []
        ),
        "",
        "## Signed copy",
        "",
        "What `jit audit verify --evidence` checks; everything above is rendered from it.",
        "",
    ]
    return "\n".join(out) + "\n" + MD_JSON_START + dumps(doc) + MD_JSON_END
