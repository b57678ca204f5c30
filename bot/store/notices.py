"""Slack messages jit owes someone, as due-queue items: queued here, sent by workers/jobs/notify.

A notice (`notice:<id>`) keeps its text in `keys.notice(id)` until Slack takes it; an alert's
lateness is visible (`keys.undelivered_alerts()`). Break-glass alerts (`bgalert:<request id>`) are
queued by the break-glass transition itself (bot/store/requests.py).
"""

from __future__ import annotations

import json
import secrets

from redis import Redis

from bot.core.clock import now_ms
from bot.core.ports import Effects
from bot.store import keys
from bot.store.due import LEASE_MS

#: An alert still undelivered this long after it was owed counts as late.
ALERT_LATE_MS = 60_000
#: How long an undelivered notice's text is kept (it is retried all along).
NOTICE_TTL_S = 30 * 86400

# KEYS: notice payload, due, claims, wake, undelivered alerts
# ARGV: payload JSON, ttl s, member, now_ms, lease score, claim token, is alert ('1'/'')
_QUEUE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[6])
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -16, -1)
if ARGV[7] == '1' then redis.call('ZADD', KEYS[5], 'NX', ARGV[4], ARGV[3]) end
return 1
"""


class Notices:
    def __init__(self, redis: Redis, effects: Effects) -> None:
        self.r = redis
        self.effects = effects
        self._queue = redis.register_script(_QUEUE)

    def queue(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        user: str | None = None,
        not_after_ms: int | None = None,
        alert: bool = False,
        owed_ms: int | None = None,
    ) -> str:
        """Owe one Slack message: a channel line, a thread reply (`thread_ts`) or an ephemeral
        one for `user`. Returns its due member. `alert` makes its lateness visible."""
        nid = secrets.token_hex(8)
        member = f"notice:{nid}"
        t = now_ms() if owed_ms is None else owed_ms
        payload = {
            "channel": channel,
            "text": text,
            "thread_ts": thread_ts,
            "user": user,
            "not_after_ms": not_after_ms,
            "alert": alert,
            "owed_ms": t,
        }
        token = secrets.token_hex(8)
        self._queue(
            keys=[keys.notice(nid), keys.due(), keys.due_claims(), keys.due_wake(), keys.undelivered_alerts()],
            args=[json.dumps(payload), NOTICE_TTL_S, member, t, t + LEASE_MS, token, "1" if alert else ""],
        )
        self.effects.kick([member], token)
        return member

    def tell(self, channel: str | None, user: str, text: str, *, within_ms: int = 60_000) -> str:
        """An ephemeral note to one user about their click (a refusal): useful only for a minute."""
        t = now_ms()  # one reading: "useful for a minute" is exactly a minute after it was owed
        return self.queue(channel or user, text, user=user, not_after_ms=t + within_ms, owed_ms=t)

    def payload(self, nid: str) -> dict | None:
        raw = self.r.get(keys.notice(nid))
        return None if raw is None else json.loads(raw)

    def delivered(self, member: str) -> None:
        """Slack took it (or it is past use): forget its text and its lateness."""
        kind, _, ident = member.partition(":")
        pipe = self.r.pipeline(transaction=False)
        if kind == "notice":
            pipe.delete(keys.notice(ident))
        pipe.zrem(keys.undelivered_alerts(), member)
        pipe.execute()

    def owed_since(self, member: str, ms: int) -> None:
        self.r.zadd(keys.undelivered_alerts(), {member: ms}, nx=True)

    def undelivered(self, older_than_ms: int = ALERT_LATE_MS) -> list[tuple[str, int]]:
        """Alerts owed for longer than `older_than_ms`: (due member, owed since ms)."""
        rows = self.r.zrangebyscore(keys.undelivered_alerts(), "-inf", now_ms() - older_than_ms, withscores=True)
        return [(m, int(s)) for m, s in rows]
