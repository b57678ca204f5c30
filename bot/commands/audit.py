"""`jit audit verify`, `jit audit export` and `jit audit evidence`: they need REDIS_URL and the audit
keys, nothing else (no Slack settings); `jit audit verify --evidence` needs only the public keys."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

import requests

from bot.commands import evidence as bundle
from bot.commands.evidence_md import render as render_markdown
from bot.core.clock import now, parse_duration, to_ms
from bot.core.crypto import AuditSigner, Vault
from bot.core.usage import digest as usage_digest
from bot.settings import Settings
from bot.store import keys
from bot.store.audit import AuditKeys, AuditLog, Checkpoint, export_line, read_export
from bot.store.connection import redis_from_url
from bot.store.policy_versions import PolicyStore
from bot.store.usage import UsageStore
from bot.wiring import parse_policy


def _audit_log(keys_from: str | None = None):
    """The trail from REDIS_URL, with JIT_SECRET_KEY (+ previous) when set: the audit tools need
    nothing else, in particular no Slack settings."""
    url = os.environ.get("REDIS_URL") or Settings.model_fields["redis_url"].default
    secret = os.environ.get("JIT_SECRET_KEY", "").strip()
    previous = [k.strip() for k in os.environ.get("JIT_PREVIOUS_SECRET_KEYS", "").split(",") if k.strip()]
    signer = AuditSigner(secret, previous) if secret else None
    keys = AuditKeys(_load_key_set(keys_from)) if keys_from else None
    return AuditLog(redis_from_url(url, decode_responses=True), signer=signer, keys=keys)


def _load_key_set(source: str) -> dict:
    """A JWKS from a file or an http(s) URL (jit serves it at /.well-known/jit-audit-keys.json)."""
    try:
        if source.startswith(("http://", "https://")):
            resp = requests.get(source, timeout=10, allow_redirects=False)
            resp.raise_for_status()
            return resp.json()
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # requests' errors are OSErrors, bad JSON ValueErrors
        raise SystemExit(f"jit: cannot read audit keys from {source}: {e}") from None


def verify(
    checkpoint: list[str], trimmed_files: list[str], keys_from: str | None, evidence_file: str | None = None
) -> int:
    if evidence_file:
        if checkpoint or trimmed_files:
            raise SystemExit(
                "jit: --evidence is checked on its own, offline; --checkpoint and --trimmed check the trail"
            )
        return verify_evidence(evidence_file, keys_from)
    try:
        checkpoints = [Checkpoint.parse(c) for c in checkpoint]
    except ValueError as e:
        raise SystemExit(f"jit: --checkpoint: {e}") from None
    log = _audit_log(keys_from)
    if log.keys is None:
        print(
            "jit: no audit keys: set JIT_SECRET_KEY (and JIT_PREVIOUS_SECRET_KEYS after a rotation) "
            "or pass --keys FILE_OR_URL (the key set jit publishes at /.well-known/jit-audit-keys.json)",
            file=sys.stderr,
        )
        return 2
    trimmed = []
    for path in trimmed_files:
        try:
            with open(path, encoding="utf-8") as f:
                trimmed += read_export(f, source=path)
        except (OSError, ValueError) as e:
            print(f"audit export NOT usable: {e}")
            return 1
    n, broken = log.verify(checkpoints, trimmed)
    if broken and broken.stream_id == "checkpoint":
        print(f"audit chain does NOT match {broken.reason}")
        return 1
    if broken:
        where = f"stream id {broken.stream_id}" if broken.stream_id[:1].isdigit() else broken.stream_id
        print(f"audit chain BROKEN at entry {broken.seq} ({where}): {broken.reason}")
        return 1
    head = log.head()
    anchor = log.anchor()
    since = f" (entries up to #{anchor['seq']} trimmed; anchored on {anchor['hash']})" if anchor else ""
    print(
        f"audit chain ok: {n} entries, head #{head.get('seq', 0)} {head.get('hash', '-')}, every entry "
        f"signed by a known key ({', '.join(log.keys.kids)}){since}"
    )
    if trimmed:
        print(f"the {len(trimmed)} exported entries given join the trail")
    if checkpoints:
        print(f"audit chain matches {len(checkpoints)} checkpoint(s)")
    if waiting := log.pending():
        print(
            f"note: {waiting} event(s) wait in the audit outbox, not chained yet "
            "(a jit process holding JIT_SECRET_KEY chains them)"
        )
    return 0


def _usage_attachment(log: AuditLog, request_id: str) -> dict | None:
    """The request's whole session summary, decrypted, for its `session.usage` line (needs
    JIT_SECRET_KEY): its sha256 is the one the signed entry carries."""
    secret = os.environ.get("JIT_SECRET_KEY", "").strip()
    sealed = UsageStore(log.r, 0).sealed(request_id) if secret else None
    if not sealed:
        return None
    previous = [k.strip() for k in os.environ.get("JIT_PREVIOUS_SECRET_KEYS", "").split(",") if k.strip()]
    try:
        summary = Vault(secret, previous).open(sealed)
    except ValueError as e:
        print(f"jit: the usage summary of {request_id} is not included: {e}", file=sys.stderr)
        return None
    return {"session_summary": summary, "sha256": usage_digest(summary)}


def export(since: str | None, request_id: str | None, output: str | None) -> int:
    log = _audit_log()
    since_ms = _parse_since(since) if since else None
    usage = _usage_attachment(log, request_id) if request_id else None
    transcript = _transcript(log, request_id) if request_id else None
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115 - or stdout
    try:
        for e in log.entries(since_ms=since_ms):
            if request_id and e.body.get("request_id") != request_id:
                continue
            event = e.body.get("event")
            out.write(
                export_line(
                    e,
                    usage if event == "session.usage" else None,
                    transcript if event == "session.ended" else None,
                )
                + "\n"
            )
    finally:
        if output:
            out.close()
    return 0


def _transcript(log: AuditLog, request_id: str) -> str | None:
    """The masked transcript of the request's `jit run` session, decrypted with JIT_SECRET_KEY (or a
    previous key); None when there is none (or it cannot be read: said on stderr)."""
    blob = log.r.get(keys.session(request_id))
    if not blob:
        return None
    secret = os.environ.get("JIT_SECRET_KEY", "").strip()
    previous = [k.strip() for k in os.environ.get("JIT_PREVIOUS_SECRET_KEYS", "").split(",") if k.strip()]
    try:
        if not secret:
            raise ValueError("JIT_SECRET_KEY is not set")
        record = Vault(secret, previous).open(blob)
    except ValueError as e:
        print(f"jit: the session transcript of {request_id} is left out: {e}", file=sys.stderr)
        return None
    text = record.get("transcript") if isinstance(record, dict) else None
    return text if isinstance(text, str) else None


def _parse_since(value: str) -> int:
    try:
        return to_ms(now() - parse_duration(value))
    except ValueError:
        pass
    try:
        return to_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise SystemExit(f"jit: --since takes a duration (2h) or an RFC 3339 time, not {value!r}") from None


# ------------------------------------------------------------------------- evidence bundles


def evidence(request_id: str, output: str | None, fmt: str) -> int:
    """Write one request's signed evidence bundle (JSON, or Markdown around the same JSON)."""
    log = _audit_log()
    policies = PolicyStore(log.r, 0, parse_policy)
    try:
        doc = bundle.build(log, request_id, policies.get)
    except bundle.EvidenceError as e:
        print(f"jit: {e}", file=sys.stderr)
        return 1
    text = render_markdown(doc) if fmt == "md" else bundle.dumps(doc)
    if output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        head = doc["chain"]["head"]
        print(
            f"evidence for {request_id}: {len(doc['entries'])} audit entries, chain head #{head['seq']}, "
            f"signed with key {doc['signature']['kid']} -> {output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def verify_evidence(path: str, keys_from: str | None) -> int:
    """Offline: the bundle's signature, its bytes, each entry's hash and signature, the chain head."""
    if keys_from:
        keys = AuditKeys(_load_key_set(keys_from))
    elif secret := os.environ.get("JIT_SECRET_KEY", "").strip():
        previous = [k.strip() for k in os.environ.get("JIT_PREVIOUS_SECRET_KEYS", "").split(",") if k.strip()]
        keys = AuditKeys(AuditSigner(secret, previous).jwks())
    else:
        print(
            "jit: --evidence needs the server's public audit keys: --keys FILE_OR_URL "
            "(/.well-known/jit-audit-keys.json), or JIT_SECRET_KEY",
            file=sys.stderr,
        )
        return 2
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError:
        print(f"evidence NOT valid: {path} is not UTF-8 text: changed after jit wrote it")
        return 1
    except OSError as e:
        raise SystemExit(f"jit: cannot read {path}: {e.strerror}") from None
    rendered = bundle.dumps if text.lstrip().startswith("{") else render_markdown
    try:
        doc = bundle.check(text, keys, rendered)
    except ValueError as e:
        print(f"evidence NOT valid: {e}")
        return 1
    head, entries = doc["chain"]["head"], doc["entries"]
    span = f"#{entries[0]['seq']} to #{entries[-1]['seq']}" if entries else "none"
    print(
        f"evidence ok: request {doc['request_id']} ({doc.get('outcome')}), {len(entries)} audit entries ({span}), "
        f"each signed; bundle signed with key {doc['signature']['kid']}; chain head #{head['seq']} {head['hash']}"
    )
    print(f"to tie it to the live trail: jit audit verify --checkpoint {head['seq']}:{head['hash']}:{head['sig']}")
    return 0
