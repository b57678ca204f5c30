"""What an attacker with write access to Redis (but not JIT_SECRET_KEY) can do to the audit trail,
and small helpers the audit tests share."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from redis import Redis

from bot.cli import main as jit_cli
from bot.store import keys
from bot.store.audit import GENESIS, canonical, entry_hash

Body = dict[str, Any]


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `jit …` in-process: (exit code, stdout)."""
    code = jit_cli(list(argv))
    return code, capsys.readouterr().out


def some_history(audit, n: int = 6, prefix: str = "req") -> None:
    for i in range(n):
        audit.append(
            "test.event",
            request_id=f"{prefix}{i:04d}",
            action="deploy-prod",
            actor="U0LEAD1",
            details={"i": i},
        )


def bodies(r: Redis) -> list[Body]:
    return [json.loads(f["data"]) for _, f in r.xrange(keys.audit_stream())]


def rechain(
    r: Redis,
    change: Callable[[list[Body]], list[Body]],
    *,
    from_genesis: bool = False,
    sign: Callable[[str], str] | None = None,
) -> None:
    """Rewrite the whole trail the way someone without the key would: `change` edits the bodies,
    then every seq, prev and hash is recomputed with SHA-256, and the head (and, `from_genesis`,
    the anchor) made to match. Each row keeps the other fields it had at its position (a copied
    signature) unless `sign` (the attacker's own key) produces new ones."""
    stream = keys.audit_stream()
    old = r.xrange(stream)
    anchor = r.hgetall(keys.audit_anchor())
    if from_genesis:
        r.delete(keys.audit_anchor())
        seq, prev = 0, GENESIS
    else:
        seq, prev = int(anchor.get("seq", 0)), anchor.get("hash", GENESIS)
    new = change([json.loads(f["data"]) for _, f in old])
    r.delete(stream)
    ms = int(old[0][0].split("-")[0]) if old else 1
    last: dict[str, str] = {}
    for i, body in enumerate(new):
        seq += 1
        body = {**body, "seq": seq, "prev": prev}
        h = entry_hash(prev, body)
        fields = dict(old[min(i, len(old) - 1)][1]) if old else {}
        if i < len(old):
            ms = max(ms, int(old[i][0].split("-")[0]))
        fields.update(data=canonical(body), hash=h)
        if sign is not None:
            fields["sig"] = sign(h)
        sid = f"{ms}-{seq}"
        r.xadd(stream, fields, id=sid)
        last = {"seq": str(seq), "hash": h, "id": sid, "ms": str(ms)}
        prev = h
    head = r.hgetall(keys.audit_head())
    r.delete(keys.audit_head())
    if last:
        r.hset(keys.audit_head(), mapping={**{k: v for k, v in head.items() if k not in last}, **last})


def append_forged(r: Redis, event: str = "approval.given", actor: str = "U0LEAD1", request_id: str = "req9999") -> int:
    """Chain one made-up entry onto the head: right seq, right prev, right SHA-256, the head
    moved on, and the fields of the real last entry (its signature) copied. Returns its seq."""
    head = r.hgetall(keys.audit_head())
    seq, prev = int(head["seq"]) + 1, head["hash"]
    last_sid, last = r.xrevrange(keys.audit_stream(), count=1)[0]
    real = json.loads(last["data"])
    body = {
        **real,
        "event": event,
        "actor": actor,
        "request_id": request_id,
        "outcome": "ok",
        "details": {},
        "seq": seq,
        "prev": prev,
    }
    h = entry_hash(prev, body)
    ms = int(last_sid.split("-")[0])
    sid = f"{ms}-{seq}"
    r.xadd(keys.audit_stream(), {**last, "data": canonical(body), "hash": h}, id=sid)
    r.hset(keys.audit_head(), mapping={"seq": seq, "hash": h, "id": sid, "ms": ms})
    return seq


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
