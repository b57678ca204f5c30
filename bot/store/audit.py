"""The tamper-evident audit trail: a Redis Stream where each entry hashes its predecessor and
carries the server's signature.

entry.hash = sha256(prev_hash + canonical JSON of the entry without its hash);
entry.sig = Ed25519(entry_message(hash)) with the audit key derived from JIT_SECRET_KEY.
Editing, deleting or reordering an entry breaks the chain; an entry made without the key has no
valid signature. Trimming by age keeps the last trimmed entry as the anchor, signed as a trim
point (anchor_message), so what remains still verifies and nobody else can move it.

Every event reaches the stream through one ordered path, the outbox (`keys.audit_outbox()`): a
state change's Lua script pushes its event (built by `event_body`) in the same atomic step, and a
flush chains outbox items in order. `append` is "push, then flush".

Not protected (see `jit audit verify`): removing the newest entries and moving the head back is
only caught against a checkpoint kept outside Redis (posted to the audit channel, an export); an
event still waiting in the outbox can be dropped, or its store-computed `patch` altered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from redis import Redis
from redis.exceptions import ResponseError

from bot.core.clock import now, now_ms, rfc3339, to_ms
from bot.core.crypto import AuditSigner
from bot.store import keys
from bot.store.chainer import Chainer

log = logging.getLogger("jit.audit")

GENESIS = "0" * 64
#: How many stream ids a request's index keeps, and how long it lives after its last event.
REQUEST_INDEX_LEN = 500
REQUEST_INDEX_TTL_S = 400 * 86400
#: The most entries one filtered read walks (newest first) before it gives up.
SCAN_LIMIT = 20_000
#: Outbox items chained by one script call; entries one trim removes at most.
BATCH = 64
TRIM_BATCH = 10_000
#: How long a chained event's nonce is remembered, to record a second push of it as a duplicate.
NONCE_WINDOW_MS = 600_000
_INDEXABLE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The fields of an event body, as `event_body` makes them (plus `nonce`, and `seal` in transit).
FIELDS = ("time", "event", "request_id", "action", "actor", "outcome", "details")

#: Keys that must never reach the audit trail, wherever they hide in `details`.
_SECRET_KEYS = {
    "credential",
    "token",
    "request_token",
    "password",
    "secret",
    "dsn",
    "authorization",
}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev + canonical(body)).encode()).hexdigest()


def entry_message(digest: str) -> bytes:
    """What an entry's signature (and a posted checkpoint's) signs: its hash."""
    return b"jit-audit-entry:" + digest.encode()


def anchor_message(seq: int, digest: str) -> bytes:
    """What a trim anchor's signature signs: "jit cut the trail after entry #seq (hash)"."""
    return f"jit-audit-anchor:{seq}:{digest}".encode()


def _scrub(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        if k.lower() in _SECRET_KEYS:
            continue
        out[k] = _scrub(v) if isinstance(v, dict) else v
    return out


def _new_event(
    event: str,
    request_id: str | None,
    action: str | None,
    actor: str | None,
    outcome: str,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "time": rfc3339(now()),
        "event": event,
        "request_id": request_id,
        "action": action,
        "actor": actor,
        "outcome": outcome,
        "details": _scrub(details or {}),
        "nonce": secrets.token_urlsafe(12),
    }


def _time_ms(value: Any) -> int:
    try:
        return to_ms(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return now_ms()


@dataclass(frozen=True)
class AuditEntry:
    stream_id: str
    body: dict[str, Any]
    hash: str
    sig: str = ""
    kid: str = ""

    @property
    def seq(self) -> int:
        return int(self.body.get("seq") or 0)


@dataclass(frozen=True)
class Broken:
    """Where verification failed and why."""

    seq: int | None
    stream_id: str
    reason: str


@dataclass(frozen=True)
class Checkpoint:
    """A chain head kept outside Redis (posted to the audit channel): SEQ:SHA256[:SIG]."""

    seq: int
    hash: str
    sig: str | None = None

    @classmethod
    def parse(cls, value: str) -> Checkpoint:
        seq, _, rest = value.partition(":")
        digest, _, sig = rest.partition(":")
        if not seq.isdigit() or int(seq) < 1 or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ValueError(f"a checkpoint is SEQ:SHA256[:SIG] as posted in the audit channel, not {value!r}")
        return cls(int(seq), digest.lower(), sig or None)


# ------------------------------------------------------------------------- keys


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


class AuditKeys:
    """The public keys that check audit signatures, by kid: the JWKS jit publishes at
    /.well-known/jit-audit-keys.json (Ed25519, `kty` OKP), or the signer's own."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for k in jwks.get("keys", []) if isinstance(jwks, Mapping) else []:
            if isinstance(k, Mapping) and k.get("kty") == "OKP" and k.get("crv") == "Ed25519":
                try:
                    self._keys[str(k["kid"])] = Ed25519PublicKey.from_public_bytes(_b64(str(k["x"])))
                except (KeyError, ValueError):
                    continue
        if not self._keys:
            raise ValueError("the key set holds no Ed25519 key (kty OKP, crv Ed25519, kid, x)")

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    def verify(self, message: bytes, sig: str | None, kid: str | None = None) -> bool:
        """Does `sig` sign `message` with key `kid` (any key when None)?"""
        if not sig:
            return False
        if kid is None:
            candidates = list(self._keys.values())
        elif kid in self._keys:
            candidates = [self._keys[kid]]
        else:
            return False
        try:
            raw = _b64(sig)
        except ValueError:
            return False
        for key in candidates:
            try:
                key.verify(raw, message)
                return True
            except InvalidSignature:
                continue
        return False


class _Walk:
    """Checks entries one after the other from a starting point: order, link, hash, signature,
    and that no event was chained twice."""

    def __init__(self, keys: AuditKeys, seq: int, prev: str, nonces: set[str]) -> None:
        self.keys, self.seq, self.prev, self.nonces = keys, seq, prev, nonces

    def step(self, e: AuditEntry) -> str | None:
        """Why `e` cannot follow what came before (None: it can, and the walk moves on)."""
        seq = e.body.get("seq")
        if seq != self.seq + 1:
            if isinstance(seq, int):
                return f"found where #{self.seq + 1} was expected: entries are missing or out of order"
            return "unreadable"
        if e.body.get("prev") != self.prev:
            return "does not follow the entry before it (an entry was changed or removed)"
        if entry_hash(self.prev, e.body) != e.hash:
            return "content does not match its hash (edited)"
        if not e.sig:
            return "is not signed"
        if not self.keys.knows(e.kid):
            return f"is signed with an unknown key ({e.kid or 'no kid'}), not one of the audit keys given"
        if not self.keys.verify(entry_message(e.hash), e.sig, e.kid):
            return "its signature does not match its hash: jit did not write it (forged or edited)"
        nonce = e.body.get("nonce")
        if nonce is not None:
            if nonce in self.nonces:
                return "repeats an earlier event (one outbox item chained twice: replayed)"
            self.nonces.add(nonce)
        self.seq, self.prev = seq, e.hash
        return None


def stream_entry(sid: str, fields: Mapping[str, str]) -> AuditEntry:
    """One row of the audit stream as an entry (a mangled one still reads; verify() reports it)."""
    try:
        body = json.loads(fields["data"])
        if not isinstance(body, dict):
            raise ValueError
    except (KeyError, ValueError):
        body = {"event": "unreadable", "seq": None, "prev": None}
    return AuditEntry(sid, body, fields.get("hash", ""), fields.get("sig", ""), fields.get("kid", ""))


def stream_order(sid: str) -> tuple[int, int]:
    """A stream id (`ms-seq`) as something that sorts in stream order."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


# ------------------------------------------------------------------------- export format


#: Fields an export line may carry beside the entry, outside what its hash covers: a `session.usage`
#: entry's summary (`attachment`) and a `session.ended` entry's transcript (`jit audit export
#: --request`), each checked against the digest its signed entry names.
ATTACHED = ("attachment", "transcript")


def export_line(e: AuditEntry, attachment: dict[str, Any] | None = None, transcript: str | None = None) -> str:
    """One JSON line of `jit audit export`: the entry's body plus its hash, signature and key,
    enough for `jit audit verify --trimmed` to check it and join it to the trail; and what is
    attached to it (ATTACHED), which verification sets aside."""
    extra = {k: v for k, v in (("attachment", attachment), ("transcript", transcript)) if v is not None}
    return canonical({**e.body, "hash": e.hash, "sig": e.sig, "kid": e.kid, **extra})


def read_export(lines: Iterable[str], source: str = "export") -> list[AuditEntry]:
    """Entries from `export_line` lines. Raises ValueError naming the first unreadable line."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
            extra = {k: str(row.pop(k, "") or "") for k in ("hash", "sig", "kid")}
            for k in ATTACHED:  # not part of the signed entry (export_line)
                row.pop(k, None)
        except ValueError:
            raise ValueError(f"{source} line {n}: not an exported audit entry") from None
        out.append(AuditEntry(f"{source} line {n}", row, extra["hash"], extra["sig"], extra["kid"]))
    return out


# ------------------------------------------------------------------------- Lua

# Chain outbox items if nothing moved since the caller looked: the head is still (seq, hash), the
# outbox still starts with exactly the items the caller hashed and signed, and none of their
# nonces was chained lately. Optionally push one item first (append). Returns what the caller
# needs to try again, so a retry costs no read.
# KEYS: head, stream, outbox, nonces, per-item request index ('' for none) × k
# ARGV: item to push ('' for none), expected seq, expected hash, k, items to return, index length,
#       index ttl, now ms, nonce window ms, then per item: raw outbox item, data, hash, sig, kid,
#       stream-id ms, nonce ('' for none)
# Returns {chained 0|1, seq of the pushed item (0: none), seq, hash, ms, outbox length, first
#          items, position of an item whose nonce was already chained (0: none)}
_CHAIN = (
    """
local W = 7
local h = redis.call('HMGET', KEYS[1], 'seq', 'hash', 'ms')
local seq = tonumber(h[1] or '0')
local hash = h[2] or '"""
    + GENESIS
    + """'
local ms = h[3] or '0'
local pushed = 0
if ARGV[1] ~= '' then pushed = seq + redis.call('RPUSH', KEYS[3], ARGV[1]) end
local k = tonumber(ARGV[4])
local ok, dup = 0, 0
if k > 0 and seq == tonumber(ARGV[2]) and hash == ARGV[3] then
  local items = redis.call('LRANGE', KEYS[3], 0, k - 1)
  ok = 1
  if #items ~= k then ok = 0 end
  for i = 1, k do
    local a = 3 + i * W
    if ok == 1 and items[i] ~= ARGV[a] then ok = 0 end
    if ok == 1 and ARGV[a + 6] ~= '' and redis.call('ZSCORE', KEYS[4], ARGV[a + 6]) then ok, dup = 0, i end
  end
  if ok == 1 then
    local sid
    for i = 1, k do
      local a = 3 + i * W
      sid = ARGV[a + 5] .. '-' .. (seq + i)
      redis.call('XADD', KEYS[2], sid, 'data', ARGV[a + 1], 'hash', ARGV[a + 2], 'sig', ARGV[a + 3], 'kid', ARGV[a + 4])
      local idx = KEYS[4 + i]
      if idx ~= '' then
        redis.call('RPUSH', idx, sid)
        redis.call('LTRIM', idx, -tonumber(ARGV[6]), -1)
        redis.call('EXPIRE', idx, ARGV[7])
      end
      if ARGV[a + 6] ~= '' then redis.call('ZADD', KEYS[4], ARGV[8], ARGV[a + 6]) end
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (tonumber(ARGV[8]) - tonumber(ARGV[9])))
    redis.call('PEXPIRE', KEYS[4], ARGV[9])
    local last = 3 + k * W
    seq = seq + k
    hash = ARGV[last + 2]
    ms = ARGV[last + 5]
    redis.call('HSET', KEYS[1], 'seq', seq, 'hash', hash, 'id', sid, 'ms', ms)
    redis.call('LTRIM', KEYS[3], k, -1)
  end
end
local waiting = redis.call('LLEN', KEYS[3])
local first = {}
if waiting > 0 then first = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[5]) - 1) end
return {ok, pushed, tostring(seq), hash, ms, waiting, first, dup}
"""
)

# Atomic trim up to an entry the caller verified and signed as the new anchor: only if the anchor
# is still the one it walked from and the entry is unchanged, so racing trims (two workers) can
# never leave an anchor that does not match. The anchor only ever moves forward.
# KEYS: stream, anchor   ARGV: anchor seq walked from, entry id, entry hash, entry seq, anchor sig,
#                              kid, first id kept
# Returns {entries removed} or {-1}: something moved, look again
_TRIM = """
if tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') ~= tonumber(ARGV[1]) then return {-1} end
local rows = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #rows == 0 then return {-1} end
local f = rows[1][2]
local hash
for i = 1, #f, 2 do
  if f[i] == 'hash' then hash = f[i + 1] end
end
if hash ~= ARGV[3] then return {-1} end
redis.call('HSET', KEYS[2], 'seq', ARGV[4], 'hash', ARGV[3], 'id', ARGV[2], 'sig', ARGV[5], 'kid', ARGV[6])
return {redis.call('XTRIM', KEYS[1], 'MINID', ARGV[7])}
"""


@dataclass
class _State:
    """The chain head and the start of the outbox, as one script call left them."""

    seq: int
    hash: str
    ms: int
    waiting: int
    items: list[str]


class AuditLog:
    """The trail. With a `signer` (JIT_SECRET_KEY) it writes, flushes, trims and verifies; with
    only `keys` (public) it reads and verifies, leaving the outbox to a process with the key."""

    def __init__(self, redis: Redis, signer: AuditSigner | None = None, keys: AuditKeys | None = None) -> None:
        self.r = redis
        self.signer = signer
        self.keys = keys or (AuditKeys(signer.jwks()) if signer else None)
        self._chain = redis.register_script(_CHAIN)
        self._trim = redis.register_script(_TRIM)
        self._head: tuple[int, str, int] = (0, GENESIS, 0)  # our guess of (seq, hash, ms)
        self._duplicates: set[str] = set()  # outbox items whose nonce the script found chained
        self._chainer: Chainer | None = None  # see chain_in_background

    def _signing(self) -> AuditSigner:
        if self.signer is None:
            raise RuntimeError("this AuditLog has no signer (JIT_SECRET_KEY): it reads and verifies only")
        return self.signer

    # ---------------------------------------------------------------- writing

    def event_body(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> str:
        """The JSON body of one event, for a state change's Lua script to push to the outbox as
        `{"body": <this>, "patch": <cjson table>}` in the same atomic step. Secrets are scrubbed
        from `details`; a random nonce makes it single-use and a seal (HMAC with the secret)
        marks it as jit's own: an item without a valid seal is chained as rejected."""
        return self._sealed(_new_event(event, request_id, action, actor, outcome, details))

    def _sealed(self, event: dict[str, Any]) -> str:
        return canonical({**event, "seal": self._signing().seal(canonical(event).encode())})

    def append(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Push one event to the outbox and flush until it is chained (one round trip when the
        outbox was empty and this process wrote the last entry)."""
        made = _new_event(event, request_id, action, actor, outcome, details)
        raw = '{"body":' + self._sealed(made) + ',"patch":{}}'
        own = (raw, made)  # no need to parse and check the seal of what we just made
        seq, prev, ms = self._head
        state, pushed, chained = self._step(_State(seq, prev, ms, 0, [raw]), push=raw, own=own)
        mine = next((e for e in chained if e.seq == pushed), None)
        if mine is None:
            _, found = self._drain(state, target=pushed, want=pushed, own=own)
            mine = found or self._find(pushed, _time_ms(made["time"]))
        if mine is None:
            log.error("audit event #%s (%s) left the outbox without reaching the stream", pushed, event)
            return AuditEntry("", made, "")
        return mine

    def flush(self, limit: int = 10_000, pushed: str | None = None) -> int:
        """Chain what waits in the outbox, in order, until everything that was there when called
        is chained (by this call or another process) or `limit` entries were chained here.
        Returns how many this call chained; 0 without a signer (read-only).

        `pushed`: the outbox item the caller's script just pushed, exactly as pushed (the script
        may return it). It is chained at once, without reading first, when it is alone in the
        outbox and this process wrote the last entry; otherwise the call goes on as without it."""
        if self.signer is None:
            return 0
        done = 0
        if pushed is None:
            state = self._peek()
        else:
            seq, prev, ms = self._head
            state, _, chained = self._step(_State(seq, prev, ms, 1, [pushed]))
            done = len(chained)
        return done + self._drain(state, target=state.seq + state.waiting, limit=limit - done)[0]

    def chain_in_background(self) -> Callable[[], None]:
        """From now on `flush_soon` leaves the chaining to a thread of this process
        (bot/store/chainer.py). Returns its stop, which chains what is left."""
        if self.signer is not None and self._chainer is None:
            self._chainer = Chainer(self.flush)
        return self._chainer.stop if self._chainer is not None else (lambda: None)

    def flush_soon(self) -> None:
        """A writer's events are in the outbox: chain them now — or, in a process that chains in
        the background, wake its chainer and return at once."""
        if self._chainer is None:
            self.flush()
        else:
            self._chainer.wake()

    def _settle(self) -> None:
        """Readers first chain what waits in the outbox; a trail they cannot extend still reads."""
        try:
            self.flush()
        except ResponseError:
            log.exception("could not chain the audit outbox")

    def pending(self) -> int:
        """Events in the outbox, not chained yet."""
        return self.r.llen(keys.audit_outbox())

    def _peek(self) -> _State:
        pipe = self.r.pipeline(transaction=True)
        pipe.hmget(keys.audit_head(), "seq", "hash", "ms")
        pipe.llen(keys.audit_outbox())
        pipe.lrange(keys.audit_outbox(), 0, BATCH - 1)
        (seq, digest, ms), waiting, items = pipe.execute()
        state = _State(int(seq or 0), digest or GENESIS, int(ms or 0), waiting, items)
        self._head = (state.seq, state.hash, state.ms)
        return state

    def _drain(
        self,
        state: _State,
        target: int,
        limit: int = 1 << 62,
        want: int | None = None,
        own: tuple[str, dict[str, Any]] | None = None,
    ) -> tuple[int, AuditEntry | None]:
        n, found = 0, None
        while state.seq < target and n < limit and state.items:
            state.items = state.items[: min(BATCH, limit - n)]
            state, _, chained = self._step(state, own=own)
            n += len(chained)
            found = found or next((e for e in chained if e.seq == want), None)
        return n, found

    def _step(
        self, state: _State, push: str = "", own: tuple[str, dict[str, Any]] | None = None
    ) -> tuple[_State, int, list[AuditEntry]]:
        """One script call: chain `state.items` onto `state`'s head (pushing `push` first).
        Returns the state after it, the pushed item's seq, and the entries it chained."""
        signer = self._signing()
        entries, index_keys, args, nonces = [], [], [], set()
        seq, prev, ms = state.seq, state.hash, state.ms
        for raw in state.items:
            seq += 1
            event = own[1] if own is not None and raw == own[0] else self._event(raw)
            nonce = event.get("nonce") if isinstance(event.get("nonce"), str) else ""
            if raw in self._duplicates or (nonce and nonce in nonces):
                event = self._rejected(raw, "duplicate: this event was chained already (pushed twice)")
                nonce = event["nonce"]
            nonces.add(nonce)
            body = {**event, "seq": seq, "prev": prev}
            ms = max(ms, _time_ms(body["time"]))
            data = canonical(body)
            digest = hashlib.sha256((prev + data).encode()).hexdigest()
            sig = signer.sign(entry_message(digest))
            rid = body.get("request_id")
            index_keys.append(keys.audit_by_request(rid) if isinstance(rid, str) and _INDEXABLE_ID.match(rid) else "")
            args += [raw, data, digest, sig, signer.kid, ms, nonce]
            entries.append(AuditEntry(f"{ms}-{seq}", body, digest, sig, signer.kid))
            prev = digest
        res = self._chain(
            keys=[
                keys.audit_head(),
                keys.audit_stream(),
                keys.audit_outbox(),
                keys.audit_nonces(),
                *index_keys,
            ],
            args=[
                push,
                state.seq,
                state.hash,
                len(state.items),
                BATCH,
                REQUEST_INDEX_LEN,
                REQUEST_INDEX_TTL_S,
                now_ms(),
                NONCE_WINDOW_MS,
                *args,
            ],
        )
        ok, pushed, seq_s, digest, ms_s, waiting, items, dup = res
        if int(dup):
            if len(self._duplicates) > 1000:
                self._duplicates.clear()
            self._duplicates.add(state.items[int(dup) - 1])
        after = _State(int(seq_s), digest, int(ms_s), int(waiting), list(items))
        self._head = (after.seq, after.hash, after.ms)
        return after, int(pushed), entries if int(ok) == 1 else []

    def _event(self, raw: str) -> dict[str, Any]:
        """The body an outbox item becomes: its sealed body with `patch` merged into `details`,
        or, for an item jit did not make, a record that it was rejected."""
        why = "malformed"
        try:
            item = json.loads(raw)
            body, patch = item["body"], item.get("patch") or {}  # cjson may encode {} as []
            if isinstance(body, dict) and isinstance(patch, dict):
                seal = body.pop("seal", None)
                why = "not sealed by jit (pushed by something without the key, or changed on the way)"
                if isinstance(seal, str) and self._signing().sealed(canonical(body).encode(), seal):
                    details = body.get("details") if isinstance(body.get("details"), dict) else {}
                    event = {k: body.get(k) for k in FIELDS}
                    event["details"] = _scrub({**details, **patch})
                    event["nonce"] = body.get("nonce")
                    return event
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return self._rejected(raw, why)

    @staticmethod
    def _rejected(raw: str, why: str) -> dict[str, Any]:
        """What is chained in place of an outbox item that is not a new event of jit's own."""
        log.warning("audit outbox item rejected: %s", why)
        return {
            "time": rfc3339(now()),
            "event": "audit.outbox_rejected",
            "request_id": None,
            "action": None,
            "actor": "jit",
            "outcome": "rejected",
            "details": {
                "why": why,
                "sha256": hashlib.sha256(raw.encode()).hexdigest(),
                "bytes": len(raw),
            },
            "nonce": secrets.token_urlsafe(12),
        }

    def _find(self, seq: int, from_ms: int) -> AuditEntry | None:
        """Entry #seq, chained by someone else: its stream id is `ms-seq` with ms ≥ from_ms."""
        for e in self._read(f"{from_ms}-0"):
            if e.seq >= seq:
                return e if e.seq == seq else None
        return None

    # ---------------------------------------------------------------- reading

    def _parse(self, sid: str, fields: dict[str, str]) -> AuditEntry:
        return stream_entry(sid, fields)

    def _read(self, start: str, batch: int = 1000) -> Iterator[AuditEntry]:
        while True:
            rows = self.r.xrange(keys.audit_stream(), min=start, max="+", count=batch)
            for sid, fields in rows:
                yield self._parse(sid, fields)
            if len(rows) < batch:
                return
            start = "(" + rows[-1][0]

    def entries(self, since_ms: int | None = None, batch: int = 1000) -> Iterator[AuditEntry]:
        """Oldest first (after chaining what waits in the outbox)."""
        self._settle()
        yield from self._read(f"{since_ms}-0" if since_ms else "-", batch)

    def latest(self, n: int) -> list[AuditEntry]:
        """Newest first."""
        self._settle()
        rows = self.r.xrevrange(keys.audit_stream(), count=n)
        return [self._parse(sid, f) for sid, f in rows]

    def newest(self, since_ms: int | None = None, batch: int = 500) -> Iterator[AuditEntry]:
        """Newest first, back to `since_ms` (inclusive) or the start of the trail."""
        self._settle()
        low = f"{since_ms}-0" if since_ms else "-"
        high = "+"
        while True:
            rows = self.r.xrevrange(keys.audit_stream(), max=high, min=low, count=batch)
            for sid, fields in rows:
                yield self._parse(sid, fields)
            if len(rows) < batch:
                return
            high = "(" + rows[-1][0]

    def entries_for_request(self, request_id: str, limit: int = 100) -> list[AuditEntry]:
        """One request's events, oldest first (its latest `limit`), from its index."""
        if not _INDEXABLE_ID.match(request_id or ""):
            return []
        self._settle()
        idx = keys.audit_by_request(request_id)
        ids = self.r.lrange(idx, -max(limit, 1), -1)
        if not ids and not self.r.exists(idx):
            # The index outlived its TTL: fall back to a bounded scan of the recent trail.
            found = []
            for scanned, e in enumerate(self.newest(), 1):
                if e.body.get("request_id") == request_id:
                    found.append(e)
                if len(found) >= limit or scanned >= SCAN_LIMIT:
                    break
            return found[::-1]
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.xrange(keys.audit_stream(), min=sid, max=sid)
        out = []
        for rows in pipe.execute():
            if rows:  # ids trimmed away by retention read as nothing
                out.append(self._parse(*rows[0]))
        return out

    def head(self) -> dict[str, str]:
        self._settle()
        return self.r.hgetall(keys.audit_head())

    def head_entry(self) -> AuditEntry | None:
        """The entry the head points at, if it is signed by one of our keys (None otherwise)."""
        head = self.head()
        rows = self.r.xrange(keys.audit_stream(), min=head["id"], max=head["id"]) if head.get("id") else []
        if not rows:
            return None
        e = self._parse(*rows[0])
        ok = (
            self.keys is not None
            and entry_hash(str(e.body.get("prev")), e.body) == e.hash == head.get("hash")
            and self.keys.verify(entry_message(e.hash), e.sig, e.kid)
        )
        return e if ok else None

    def count(self) -> int:
        self._settle()
        return self.r.xlen(keys.audit_stream())

    # ---------------------------------------------------------------- verification

    def verify(
        self, checkpoints: Iterable[Checkpoint] = (), trimmed: Iterable[AuditEntry] = ()
    ) -> tuple[int, Broken | None]:
        """Walk the chain: every link, hash and signature, the signed anchor, then every
        checkpoint. `trimmed`: exported entries that retention removed from Redis, joined to the
        anchor, so older checkpoints can be checked. Returns (entries checked in Redis, first
        problem or None)."""
        ks = self.keys
        if ks is None:
            raise ValueError("no audit keys to verify with (JIT_SECRET_KEY or the published key set)")
        self._settle()
        checkpoints = list(checkpoints)
        wanted = {cp.seq for cp in checkpoints}
        nonces: set[str] = set()
        anchor = self.r.hgetall(keys.audit_anchor())
        a_seq, a_hash = int(anchor.get("seq", 0)), anchor.get("hash", GENESIS)
        if anchor and not ks.verify(anchor_message(a_seq, a_hash), anchor.get("sig"), anchor.get("kid")):
            return 0, Broken(
                a_seq,
                anchor.get("id", "anchor"),
                "the retention anchor (where the trail was cut) is not signed by a known "
                "key: the oldest entries were removed by someone other than jit",
            )

        # 1. exported entries retention removed: checked on their own, then joined to the anchor
        old: dict[int, AuditEntry] = {}
        for e in sorted(trimmed, key=lambda e: e.seq):
            if e.seq in old and old[e.seq].hash != e.hash:
                return 0, Broken(e.seq, e.stream_id, f"two different entries #{e.seq} in the exports given")
            old[e.seq] = e
        below = [old[s] for s in sorted(old) if s <= a_seq]
        if below:
            walk = _Walk(ks, below[0].seq - 1, str(below[0].body.get("prev")), nonces)
            for e in below:
                if why := walk.step(e):
                    return 0, Broken(e.seq, e.stream_id, f"in an export: {why}")
            if walk.seq < a_seq:
                return 0, Broken(
                    walk.seq + 1,
                    "export",
                    f"the exports given end at #{walk.seq}, but Redis "
                    f"was trimmed up to #{a_seq}: #{walk.seq + 1} to #{a_seq} are in none of them",
                )
            if walk.prev != a_hash:
                return 0, Broken(
                    a_seq,
                    "export",
                    f"the exported entry #{a_seq} is not the one the trail was cut at",
                )

        # 2. what Redis holds, from the anchor. The head as the walk starts: entries appended
        # while we walk only have to chain on.
        head = self.r.hgetall(keys.audit_head())
        head_seq = int(head.get("seq", 0))
        at_head = a_hash if head_seq == a_seq else None
        walk = _Walk(ks, a_seq, a_hash, nonces)
        seen: dict[int, str] = {}
        n = 0
        for e in self._read("-"):
            n += 1
            if why := walk.step(e):
                return n, Broken(e.body.get("seq"), e.stream_id, why)
            if e.seq in old and old[e.seq].hash != e.hash:
                return n, Broken(
                    e.seq,
                    e.stream_id,
                    "differs from the exported copy of this entry "
                    "(--trimmed): the trail forked or was rewritten since the export",
                )
            if e.seq in wanted:
                seen[e.seq] = e.hash
            if e.seq == head_seq:
                at_head = e.hash
        if head and head.get("hash") != at_head:
            return n, Broken(
                head_seq,
                head.get("id", "?"),
                "the chain head does not match the last entry (entries removed from the end)",
            )
        if old and max(old) > walk.seq:
            return n, Broken(
                walk.seq + 1,
                "export",
                f"entries #{walk.seq + 1} to #{max(old)} are in an export "
                "but no longer in Redis (entries removed from the end)",
            )

        # 3. checkpoints kept outside Redis
        for cp in sorted(checkpoints, key=lambda c: c.seq):
            if cp.sig is not None and not ks.verify(entry_message(cp.hash), cp.sig):
                return n, Broken(
                    cp.seq,
                    "checkpoint",
                    f"checkpoint #{cp.seq}: its signature does not verify with the audit keys, so jit did not post it",
                )
            if cp.seq > a_seq:
                have = seen.get(cp.seq)
                if have is None:
                    return n, Broken(
                        cp.seq,
                        "checkpoint",
                        f"checkpoint #{cp.seq} {cp.hash}: entry #{cp.seq} is "
                        f"missing (the trail ends at #{walk.seq}): entries were removed",
                    )
            elif cp.seq == a_seq:
                have = a_hash
            elif cp.seq in old:
                have = old[cp.seq].hash
            else:
                return n, Broken(
                    cp.seq,
                    "checkpoint",
                    f"checkpoint #{cp.seq} is older than what Redis still "
                    f"holds (trimmed up to #{a_seq}) and cannot be checked: pass the export "
                    "that holds it with --trimmed FILE",
                )
            if have != cp.hash:
                return n, Broken(
                    cp.seq,
                    "checkpoint",
                    f"checkpoint #{cp.seq} {cp.hash}: entry #{cp.seq} has hash {have}: the trail was rewritten",
                )
        return n, None

    # ---------------------------------------------------------------- retention

    def trim(self, older_than_ms: int, up_to_id: str | None = None) -> int:
        """Drop entries older than the cut (at most TRIM_BATCH a call), after checking them,
        keeping the last dropped one as the signed anchor. A trail that does not verify up to
        the cut is not trimmed: trimming must never turn a forgery into a signed trim point.

        `up_to_id`: nothing after this stream id is dropped, however old (what every audit sink
        has acknowledged)."""
        signer = self._signing()
        ks = self.keys or AuditKeys(signer.jwks())
        for _ in range(50):  # racing trims: the loser looks again
            pipe = self.r.pipeline(transaction=True)
            pipe.hgetall(keys.audit_anchor())
            pipe.xrange(keys.audit_stream(), min="-", max=f"({older_than_ms}-0", count=TRIM_BATCH)
            anchor, rows = pipe.execute()
            if up_to_id is not None:
                bound = stream_order(up_to_id)
                rows = [row for row in rows if stream_order(row[0]) <= bound]
            if not rows:
                return 0
            a_seq, a_hash = int(anchor.get("seq", 0)), anchor.get("hash", GENESIS)
            if anchor and not ks.verify(anchor_message(a_seq, a_hash), anchor.get("sig"), anchor.get("kid")):
                log.error("audit trail not trimmed: its anchor #%s is not signed by our keys", a_seq)
                return 0
            walk = _Walk(ks, a_seq, a_hash, set())
            for sid, fields in rows:
                e = self._parse(sid, fields)
                if why := walk.step(e):
                    log.error("audit trail not trimmed: entry #%s (%s) %s", e.body.get("seq"), sid, why)
                    return 0
            sid = rows[-1][0]
            ms, _, seq_part = sid.partition("-")
            sig = signer.sign(anchor_message(walk.seq, walk.prev))
            res = self._trim(
                keys=[keys.audit_stream(), keys.audit_anchor()],
                args=[
                    a_seq,
                    sid,
                    walk.prev,
                    walk.seq,
                    sig,
                    signer.kid,
                    f"{ms}-{int(seq_part) + 1}",
                ],
            )
            if int(res[0]) >= 0:
                return int(res[0])
        return 0

    def anchor(self) -> dict[str, str]:
        """The last entry trimmed away ({seq, hash, id, sig, kid}), or {} when nothing was trimmed."""
        return self.r.hgetall(keys.audit_anchor())
