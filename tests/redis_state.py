"""What jit keeps in Redis, read for tests: a comparable snapshot, orphaned-key detection, and every
value as text (for "nothing secret in the clear" scans).

Key shapes come from `bot/store/keys.py` itself (each helper is called with placeholders), so
a key added there is classified without touching this file.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass

from redis import Redis

from bot.core.model import APPROVAL_FIELD
from bot.store import keys

_MARK = "\x00{}\x00"


@dataclass(frozen=True)
class KeyShape:
    name: str  # the keys.py helper
    params: tuple[str, ...]
    regex: re.Pattern[str]


def key_shapes() -> list[KeyShape]:
    """One shape per helper in keys.py; singletons (no parameters) first, so they win ties."""
    shapes = []
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        if fn.__module__ != keys.__name__ or name.startswith("_"):
            continue
        params = tuple(inspect.signature(fn).parameters)
        sample = fn(*(_MARK.format(p) for p in params))
        if not isinstance(sample, str) or not sample.startswith(keys.PREFIX):
            continue
        pattern = re.escape(sample)
        for p in params:
            pattern = pattern.replace(re.escape(_MARK.format(p)), f"(?P<{p}>[^:]+)")
        shapes.append(KeyShape(name, params, re.compile(f"^{pattern}$")))
    return sorted(shapes, key=lambda s: (len(s.params), s.name))


def classify(key: str, shapes: list[KeyShape]) -> tuple[KeyShape, dict[str, str]] | None:
    for s in shapes:
        m = s.regex.match(key)
        if m:
            return s, m.groupdict()
    return None


def jit_keys(r: Redis) -> list[str]:
    return sorted(_s(k) for k in r.scan_iter(match=f"{keys.PREFIX}*", count=1000))


def orphans(r: Redis) -> list[str]:
    """Every `jit:` key that has no TTL and is not reachable from an index, with the reason.

    Reachable means: a singleton named in keys.py (the roots: indexes, queues, the audit
    stream and head, …), or a per-request key whose request is still open (in `idx:open`).
    Also reports index entries pointing at nothing: open ids without a request, due items
    whose request is gone, and retry counters for due items no longer queued.
    """
    shapes = key_shapes()
    problems: list[str] = []
    open_ids = {_s(m) for m in r.zrange(keys.open_requests(), 0, -1)}
    for key in jit_keys(r):
        found = classify(key, shapes)
        if found is None:
            problems.append(f"{key}: not named by any helper in bot/store/keys.py")
            continue
        shape, params = found
        if r.ttl(key) > 0 or not shape.params:
            continue
        if "request_id" in params and params["request_id"] in open_ids:
            continue
        problems.append(f"{key}: no TTL and not indexed ({shape.name})")
    for rid in open_ids:
        if not r.exists(keys.request(rid)):
            problems.append(f"{keys.open_requests()} lists {rid}, which does not exist")
        elif _s(r.hget(keys.request(rid), "status") or "") not in ("pending", "approved", "active"):
            problems.append(f"{keys.open_requests()} lists {rid}, which is final")
    due_members = {_s(m) for m in r.zrange(keys.due(), 0, -1)}
    for member in due_members:
        _, _, rid = member.partition(":")
        if not r.exists(keys.request(rid)):
            problems.append(f"{keys.due()} holds {member}, whose request does not exist")
    for field in r.hkeys(keys.due_attempts()):
        if _s(field) not in due_members:
            problems.append(f"{keys.due_attempts()} counts {_s(field)}, which is no longer due")
    return problems


def snapshot(r: Redis, ignore: tuple[str, ...] = ()) -> dict[str, object]:
    """Every `jit:` and RQ queue key with its value, for "nothing changed" assertions."""
    out: dict[str, object] = {}
    for key in jit_keys(r) + sorted(_s(k) for k in r.scan_iter(match="rq:queue:*")):
        if key.startswith(ignore):
            continue
        kind = _s(r.type(key))
        if kind == "string":
            out[key] = r.get(key)
        elif kind == "hash":
            out[key] = r.hgetall(key)
        elif kind == "zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = r.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(r.smembers(key))
        elif kind == "stream":
            out[key] = r.xlen(key)
        else:
            out[key] = kind
    return out


def stored_approvals(r: Redis, request_id: str) -> dict[str, str]:
    """A request's approvals as stored, user → time (ms): the `approval:<user>` fields of its hash."""
    h = {_s(k): _s(v) for k, v in r.hgetall(keys.request(request_id)).items()}
    return {k.removeprefix(APPROVAL_FIELD): v for k, v in h.items() if k.startswith(APPROVAL_FIELD)}


def redis_dump(r: Redis) -> str:
    """Every key and value in Redis (jit and RQ keys alike, every type) as text, for "stored only
    encrypted or hashed" checks. `r` decodes responses."""
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            out.append(r.get(key) or "")
        elif kind == "hash":
            out.append(json.dumps(r.hgetall(key)))
        elif kind == "list":
            out.append(json.dumps(r.lrange(key, 0, -1)))
        elif kind == "set":
            out.append(json.dumps(sorted(r.smembers(key))))
        elif kind == "zset":
            out.append(json.dumps(r.zrange(key, 0, -1)))
        elif kind == "stream":
            out.append(json.dumps(r.xrange(key)))
        else:
            raise AssertionError(f"redis_dump cannot read {key} ({kind})")
        out.append(key)
    return "\n".join(out)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
