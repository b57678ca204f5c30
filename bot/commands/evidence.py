"""One request's evidence in one signed document (`jit audit evidence`), checked offline with the
server's public audit keys (`jit audit verify --evidence`).

The bundle holds every audit entry of the request exactly as exported (body, hash, signature,
key id: each verifiable on its own, with its chain position), the chain head when the bundle was
made (a signed entry, comparable with the checkpoints posted in the audit channel), and readable
sections derived from those entries alone — the request, the pipeline's identity and verified
claims, the decision, the approvals with their times, the credential's issue and revoke (a
`grant.revoked` entry is written only after the backend confirmed the revoke), the session —
plus what only the live store knows (the policy rule, the request record). The whole document
is signed with the audit key (its own domain, `jit-audit-evidence:`), and the file must be
byte-for-byte the rendering jit wrote, so any changed byte fails verification.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from redis import Redis

from bot.core.clock import now, rfc3339
from bot.core.crypto import AuditSigner
from bot.core.model import AccessRequest
from bot.core.policy.policy import Policy
from bot.request.responses import RequestView
from bot.store import keys
from bot.store.audit import REQUEST_INDEX_LEN, AuditKeys, AuditLog, canonical, entry_hash, entry_message, export_line

FORMAT = "jit-evidence/1"
#: The sections `summarize` derives from the entries (checked again on verification).
DERIVED = ("request", "pipeline", "decision", "approvals", "credential", "session", "outcome")
_DECISIONS = {
    "request.approved": "approved",
    "request.denied": "denied",
    "request.timed_out": "timed_out",
    "request.cancelled": "cancelled",
}


class EvidenceError(Exception):
    """No bundle can be made (unknown request, unsigned head, no key)."""


def evidence_message(digest: str) -> bytes:
    """What a bundle's signature signs: the SHA-256 of its canonical JSON without the signature."""
    return b"jit-audit-evidence:" + digest.encode()


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in doc.items() if k != "signature"}).encode()).hexdigest()


def dumps(doc: dict[str, Any]) -> str:
    """The one rendering of a bundle as JSON (what the file must be, byte for byte)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------- from entries


def _at(row: dict[str, Any]) -> dict[str, Any]:
    return {"by": row.get("actor"), "at": row.get("time"), "seq": row.get("seq")}


def summarize(request_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The readable sections, from the request's audit entries only (export rows, oldest first)."""
    created = next((r for r in rows if r.get("event") == "request.created"), None)
    request = pipeline = None
    if created is not None:
        d = created.get("details") or {}
        actor = str(created.get("actor") or "")
        verified_fields = list(d.get("verified_fields") or [])
        context = d.get("context") or {}
        request = {
            "id": request_id,
            "action": created.get("action"),
            "pipeline": actor.removeprefix("pipeline:"),
            "reason": d.get("reason"),
            "ttl_seconds": d.get("ttl_seconds"),
            "requested_by": d.get("requested_by"),
            "requester_slack_id": d.get("requester"),
            "break_glass_requested": bool(d.get("break_glass")),
            "policy_sha256": d.get("policy_sha256"),
            "created_at": created.get("time"),
            "seq": created.get("seq"),
        }
        claims = {k: context[k] for k in verified_fields if k in context}
        if "requested_by" in verified_fields:
            claims["requested_by"] = d.get("requested_by")
        pipeline = {
            "name": request["pipeline"],
            "verified": bool(d.get("verified")),
            "verified_claims": claims,
            "stated_context": {k: v for k, v in context.items() if k not in verified_fields},
        }
    decision = None
    approvals, fetched, revoke_failures, grant_failures, session = [], [], [], [], []
    issued = revoked = revoke_requested = None
    extensions: list[dict] = []
    outcome = "pending" if created is not None else None
    for r in rows:
        event, d = r.get("event"), r.get("details") or {}
        if event == "approval.given":
            approvals.append(_at(r))
        elif event in _DECISIONS:
            how = None
            if event == "request.approved":
                how = (
                    "auto_approve" if d.get("auto_approved") else "break_glass" if d.get("break_glass") else "approvers"
                )
            decision = {"outcome": _DECISIONS[event], "how": how, **_at(r), "details": d}
            outcome = _DECISIONS[event]
        elif event == "request.failed":
            outcome = "failed"
            decision = decision or {"outcome": "failed", "how": None, **_at(r), "details": d}
        elif event == "grant.issued" and r.get("outcome") == "ok":
            issued, outcome = r, "active"
        elif event == "grant.attempt_failed":
            grant_failures.append({**_at(r), "details": d})
        elif event == "credential.fetched":
            fetched.append(_at(r))
        elif event in ("grant.revoke_requested", "grant.released"):
            revoke_requested = _at(r)
        elif event == "grant.extended":
            extensions.append({**_at(r), "details": d})
        elif event == "revoke.attempt_failed":
            revoke_failures.append({**_at(r), "details": d})
        elif event == "grant.revoked":
            revoked = r
            outcome = d.get("status") or ("expired" if r.get("actor") == "expiry" else "revoked")
        elif str(event).startswith("session."):
            session.append({"event": event, **_at(r), "details": d})
    credential = None
    if issued is not None or revoked is not None:
        di = (issued or {}).get("details") or {}
        dr = (revoked or {}).get("details") or {}
        credential = {
            "issued_at": (issued or {}).get("time"),
            "issue_seq": (issued or {}).get("seq"),
            "expires_at": (extensions[-1]["details"].get("new_expires_at") if extensions else None)
            or di.get("expires_at")
            or dr.get("expires_at"),
            "extensions": extensions,
            "backend": di.get("backend") or dr.get("backend"),
            "ttl_seconds": di.get("ttl_seconds"),
            "cut_by_window": bool(di.get("cut_by_window")),
            "grant_failures": grant_failures,
            "fetched": fetched,
            "revoke_requested": revoke_requested,
            # grant.revoked is recorded only after the backend's revoke returned: its confirmation
            "revoked_at": (revoked or {}).get("time"),
            "revoked_by": (revoked or {}).get("actor"),
            "revoke_seq": (revoked or {}).get("seq"),
            "revoke_confirmed_by_backend": revoked is not None,
            "revoke_details": dr,
            "revoke_failures": revoke_failures,
        }
    return {
        "request": request,
        "pipeline": pipeline,
        "decision": decision,
        "approvals": approvals,
        "credential": credential,
        "session": session or None,
        "outcome": outcome,
    }


# ------------------------------------------------------------------------- making one


def _rule(policy: Policy | None, action: str | None) -> dict[str, Any] | None:
    """The action's rules in the request's policy version (who approves, how many, windows,
    auto-approval, break glass, ttl) and its grant type; never the grant's settings."""
    if policy is None or not action or action not in policy.model.actions:
        return None
    a = policy.model.actions[action]
    rule = a.model_dump(mode="json", exclude={"grant"})
    rule["grant_type"] = a.grant.get("type")
    return rule


def _record(redis: Redis, request_id: str) -> dict[str, Any] | None:
    h = redis.hgetall(keys.request(request_id))
    if not h or "id" not in h:
        return None
    req = AccessRequest.from_hash(h, redis.hgetall(keys.approvals(request_id)))
    return {
        **RequestView.of(req).to_json(),
        "revoked_at": rfc3339(req.revoked_at),
        "revoke_done_at": rfc3339(req.revoke_done_at),
        "decided_at": rfc3339(req.decided_at),
    }


def build(audit: AuditLog, request_id: str, policy_for: Callable[[str], Policy | None]) -> dict[str, Any]:
    """The signed bundle of `request_id`. Needs the audit signer (JIT_SECRET_KEY)."""
    signer = audit.signer
    if signer is None:
        raise EvidenceError("an evidence bundle is signed with the audit key: set JIT_SECRET_KEY")
    entries = audit.entries_for_request(request_id, limit=REQUEST_INDEX_LEN)
    if not entries:
        raise EvidenceError(f"no audit entries for request {request_id} (unknown id, or trimmed by retention)")
    head = audit.head_entry()
    if head is None:
        raise EvidenceError("the audit chain head is not signed by our key: run `jit audit verify` first")
    rows = [json.loads(export_line(e)) for e in entries]
    summary = summarize(request_id, rows)
    sha = (summary["request"] or {}).get("policy_sha256") or ""
    policy = policy_for(sha) if sha else None
    anchor = audit.anchor()
    doc: dict[str, Any] = {
        "format": FORMAT,
        "request_id": request_id,
        "generated_at": rfc3339(now()),
        **summary,
        "policy": {
            "sha256": sha or None,
            "source": policy.source if policy else None,
            "rule": _rule(policy, (summary["request"] or {}).get("action")),
        },
        "record": _record(audit.r, request_id),
        "entries": rows,
        "entries_complete": len(rows) < REQUEST_INDEX_LEN and summary["request"] is not None,
        "chain": {
            "head": {"seq": head.seq, "hash": head.hash, "sig": head.sig, "kid": head.kid, "stream_id": head.stream_id},
            "anchor": {"seq": int(anchor["seq"]), "hash": anchor.get("hash")} if anchor else None,
        },
    }
    doc["signature"] = sign(doc, signer)
    return doc


def sign(doc: dict[str, Any], signer: AuditSigner) -> dict[str, str]:
    return {"alg": "EdDSA", "kid": signer.kid, "sig": signer.sign(evidence_message(_digest(doc)))}


# ------------------------------------------------------------------------- checking one


def check(text: str, keys_: AuditKeys, rendered: Callable[[dict[str, Any]], str] = dumps) -> dict[str, Any]:
    """The bundle in `text` if it is exactly what jit signed and every entry in it verifies;
    raises ValueError naming the first problem. `rendered`: how the file was written (JSON or
    Markdown around the JSON), to compare byte for byte."""
    try:
        doc = json.loads(_json_part(text))
    except ValueError:
        raise ValueError("not an evidence bundle (no readable JSON document in it)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not an evidence bundle of format {FORMAT}")
    sig = doc.get("signature")
    if not (
        isinstance(sig, dict)
        and set(sig) == {"alg", "kid", "sig"}
        and sig["alg"] == "EdDSA"
        and isinstance(sig["kid"], str)
        and _canonical_b64(sig["sig"])
        and keys_.verify(evidence_message(_digest(doc)), sig["sig"], sig["kid"])
    ):
        raise ValueError("its signature does not verify with the audit keys given: changed after jit made it")
    if rendered(doc) != text:
        raise ValueError("its bytes are not the ones jit wrote (the signed content is intact; the file was edited)")
    rid = doc.get("request_id")
    head = (doc.get("chain") or {}).get("head") or {}
    if not keys_.verify(entry_message(str(head.get("hash"))), head.get("sig"), head.get("kid")):
        raise ValueError("the chain head in it is not signed by the audit keys given")
    last = 0
    for row in doc.get("entries") or []:
        body = {k: v for k, v in row.items() if k not in ("hash", "sig", "kid")}
        seq = body.get("seq")
        if not isinstance(seq, int) or seq <= last or seq > int(head.get("seq") or 0):
            raise ValueError(f"entry #{seq} is out of order or beyond the chain head")
        if body.get("request_id") != rid:
            raise ValueError(f"entry #{seq} belongs to another request")
        if entry_hash(str(body.get("prev")), body) != row.get("hash"):
            raise ValueError(f"entry #{seq}: its content does not match its hash")
        if not keys_.verify(entry_message(str(row.get("hash"))), row.get("sig"), row.get("kid")):
            raise ValueError(f"entry #{seq}: not signed by the audit keys given")
        last = seq
    derived = summarize(str(rid), doc.get("entries") or [])
    for section in DERIVED:
        if doc.get(section) != derived[section]:
            raise ValueError(f"its `{section}` section does not match its audit entries")
    return doc


def _canonical_b64(value: object) -> bool:
    """Unpadded base64url exactly as jit writes it: no other spelling of the same bytes (the
    last character's unused bits, padding) passes for it."""
    if not isinstance(value, str):
        return False
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == value


#: In a Markdown bundle, the signed JSON sits between these lines.
MD_JSON_START = "```json\n"
MD_JSON_END = "```\n"


def _json_part(text: str) -> str:
    if text.lstrip().startswith("{"):
        return text
    start = text.rfind(MD_JSON_START)
    if start < 0 or not text.endswith(MD_JSON_END):
        raise ValueError("no JSON")
    return text[start + len(MD_JSON_START) : -len(MD_JSON_END)]
