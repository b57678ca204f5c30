"""`jit audit verify` and `jit audit export`: they need REDIS_URL and the audit keys, nothing else
(no Slack settings)."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

import requests

from bot.core.clock import now, parse_duration, to_ms
from bot.core.crypto import AuditSigner
from bot.settings import Settings
from bot.store.audit import AuditKeys, AuditLog, Checkpoint, export_line, read_export
from bot.store.connection import redis_from_url


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


def verify(checkpoint: list[str], trimmed_files: list[str], keys_from: str | None) -> int:
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


def export(since: str | None, request_id: str | None, output: str | None) -> int:
    log = _audit_log()
    since_ms = _parse_since(since) if since else None
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115 - or stdout
    try:
        for e in log.entries(since_ms=since_ms):
            if request_id and e.body.get("request_id") != request_id:
                continue
            out.write(export_line(e) + "\n")
    finally:
        if output:
            out.close()
    return 0


def _parse_since(value: str) -> int:
    try:
        return to_ms(now() - parse_duration(value))
    except ValueError:
        pass
    try:
        return to_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise SystemExit(f"jit: --since takes a duration (2h) or an RFC 3339 time, not {value!r}") from None
