"""Every Redis key jit writes, named in one place, with what bounds its life.

All keys start with `jit:`. RQ keeps its own `rq:` keys. A key is either indexed (reachable
from an index listed here) or carries a TTL, so nothing is orphaned.
"""

PREFIX = "jit:"


def request(request_id: str) -> str:
    """Hash: one access request. TTL set when it reaches a final state (JIT_REQUEST_RETENTION)."""
    return f"{PREFIX}req:{request_id}"


def approvals(request_id: str) -> str:
    """Hash user_id → approval time (ms). Same life as its request."""
    return f"{PREFIX}req:{request_id}:approvals"


def credential(request_id: str) -> str:
    """String: the encrypted credential. Deleted when the revoke succeeds; TTL as backstop."""
    return f"{PREFIX}cred:{request_id}"


def idempotency(pipeline: str, key_hash: str) -> str:
    """String: request id for an Idempotency-Key. TTL 24 h."""
    return f"{PREFIX}idem:{pipeline}:{key_hash}"


def open_requests() -> str:
    """Sorted set request_id → created (ms): requests not yet final (pending/approved/active)."""
    return f"{PREFIX}idx:open"


def all_requests() -> str:
    """Sorted set request_id → created (ms): every request still kept; trimmed with retention."""
    return f"{PREFIX}idx:all"


def due() -> str:
    """Sorted set `kind:request_id` → due time (ms): the durable timer and work queue.

    An item leaves only when its job succeeded; a claimed item is re-scored to now + lease,
    so a job lost with its worker comes due again.
    """
    return f"{PREFIX}due"


def due_attempts() -> str:
    """Hash `kind:request_id` → failed attempts so far (for backoff and alerts)."""
    return f"{PREFIX}due:attempts"


def due_wake() -> str:
    """List: a token pushed whenever an earlier item is scheduled, to wake the scheduler."""
    return f"{PREFIX}due:wake"


def changed_channel() -> str:
    """Pub/sub channel: a request id each time a request changes (wakes long-polls)."""
    return f"{PREFIX}changed"


def audit_stream() -> str:
    """Stream: the hash-chained audit trail. Trimmed by age (retention)."""
    return f"{PREFIX}audit"


def audit_head() -> str:
    """Hash {seq, hash, id}: the chain's current head."""
    return f"{PREFIX}audit:head"


def audit_anchor() -> str:
    """Hash {seq, hash}: the last entry trimmed away; verification starts from it."""
    return f"{PREFIX}audit:anchor"


def usergroup_members(group_id: str) -> str:
    """Set cache of a Slack user group's members. TTL 5 min."""
    return f"{PREFIX}cache:usergroup:{group_id}"


def slack_lock(request_id: str) -> str:
    """String lock held while a request's Slack message is posted/updated. TTL 30 s."""
    return f"{PREFIX}lock:slack:{request_id}"


def channel_not_before(channel: str) -> str:
    """String: ms before which nothing is posted to `channel` (Slack Retry-After). TTL."""
    return f"{PREFIX}slack:notbefore:{channel}"


def replay(signature: str) -> str:
    """String: a Slack request signature already seen. TTL 10 min (twice Slack's window)."""
    return f"{PREFIX}slack:seen:{signature}"


def signing_keys() -> str:
    """Hash kid → public JWK JSON of token-signing keys, kept until their tokens expire."""
    return f"{PREFIX}jwks"


def policy_current() -> str:
    """String: sha256 of the policy last recorded in the audit trail."""
    return f"{PREFIX}policy:current"


def rate_limit(pipeline: str) -> str:
    """Sorted set of this pipeline's recent request times (ms). TTL one window (60 s)."""
    return f"{PREFIX}ratelimit:{pipeline}"


def slack_team() -> str:
    """String: the workspace (team id) the bot token belongs to, from auth.test."""
    return f"{PREFIX}slack:team"
