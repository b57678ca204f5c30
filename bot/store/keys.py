"""Every Redis key jit writes, named in one place, with what bounds its life.

All keys start with `jit:`. RQ keeps its own `rq:` keys. A key is either indexed (reachable
from an index listed here) or carries a TTL, so nothing is orphaned.
"""

PREFIX = "jit:"


def request(request_id: str) -> str:
    """Hash: one access request. TTL set when it reaches a final state (JIT_REQUEST_RETENTION)."""
    return f"{PREFIX}req:{request_id}"


def approvals(request_id: str) -> str:
    """Hash user_id → approval time (ms) of a request an earlier version made: read, never written
    (approvals are now fields of the request hash, `approval:<user>`, bot/core/model.py). Same
    life as its request (expired with it in `finalize`)."""
    return f"{PREFIX}req:{request_id}:approvals"


def held_grants(pipeline: str, action: str) -> str:
    """Set of request ids: the grants of `action` that `pipeline` was issued (added when a grant
    turns active; ended ones are pruned when read). TTL JIT_REQUEST_RETENTION."""
    return f"{PREFIX}held:{pipeline}:{action}"


def extension_approvals(request_id: str) -> str:
    """Hash user_id → approval time (ms) of the extension waiting for approval; deleted when it
    is applied, TTL JIT_REQUEST_RETENTION."""
    return f"{PREFIX}req:{request_id}:ext_approvals"


def session(request_id: str) -> str:
    """String: the encrypted session record `jit run` sent (its transcript included). Written once,
    after the grant ended, with the request's own remaining TTL: it goes when the request goes."""
    return f"{PREFIX}req:{request_id}:session"


def request_token(request_id: str) -> str:
    """String: the sealed request_token of a request an earlier version made. Read only, for
    requests still in Redis from before an upgrade: tokens are now made again from the request id
    (bot/core/crypto.py RequestTokens) and no longer stored. No TTL while the request is open; the
    request's retention once it is final (set with the hash's, in `finalize`)."""
    return f"{PREFIX}req:{request_id}:token"


def credential(request_id: str) -> str:
    """String: the encrypted credential. Deleted when the revoke succeeds; TTL as backstop."""
    return f"{PREFIX}cred:{request_id}"


def idempotency(pipeline: str, key_hash: str) -> str:
    """String: `request id|body fingerprint` for an Idempotency-Key (an earlier version appended
    `|sealed request token`). TTL 24 h."""
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


def due_claims() -> str:
    """Hash `kind:request_id` → token of the claim that may run it now (fencing). A job whose
    token is no longer here does nothing; re-scheduling a member voids its claim."""
    return f"{PREFIX}due:claims"


def due_claim_seq() -> str:
    """Counter: the source of claim tokens."""
    return f"{PREFIX}due:seq"


def due_attempts() -> str:
    """Hash `kind:request_id` → failed attempts so far (for backoff and alerts)."""
    return f"{PREFIX}due:attempts"


def due_wake() -> str:
    """List: a token pushed whenever an earlier item is scheduled, to wake the scheduler."""
    return f"{PREFIX}due:wake"


def access_lane() -> str:
    """List of `member token` entries: claimed grants and revokes a click or a pipeline asked for,
    waiting for a `jit worker`'s access threads (workers/queue/lane.py) to start them at once."""
    return f"{PREFIX}due:lane"


def access_lane_alive() -> str:
    """String with a short expiry, kept fresh by every `jit worker` reading the access lane: while
    it exists, kicked grants and revokes go to the lane instead of RQ."""
    return f"{PREFIX}due:lane:alive"


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
    """Hash {seq, hash, id, sig, kid}: the last entry trimmed away, signed as a trim point;
    verification starts from it."""
    return f"{PREFIX}audit:anchor"


def audit_outbox() -> str:
    """List of JSON strings `{"body": {...}, "patch": {...}}`: audit events pushed by a state
    change in the same atomic step, waiting to be chained into the stream (oldest first). An
    item leaves in the same Lua step that chains it, so the list is empty between flushes."""
    return f"{PREFIX}audit:outbox"


def audit_nonces() -> str:
    """Sorted set nonce → ms chained: events chained in the last 10 minutes, so an outbox item
    pushed twice (a retried script, a replay) is recorded as a duplicate instead of chained as
    the event again. Older members are dropped on write; TTL 10 min."""
    return f"{PREFIX}audit:nonces"


def audit_by_request(request_id: str) -> str:
    """List of audit stream ids for one request, oldest first (last 500). TTL 400 d, renewed
    on each append; ids trimmed from the stream by retention are skipped when read."""
    return f"{PREFIX}audit:req:{request_id}"


def audit_head_posted() -> str:
    """String lock: the chain head was posted to the audit channel. TTL `post_head_every`,
    so that however many workers run, one post goes out per interval."""
    return f"{PREFIX}audit:headposted"


def home_viewers() -> str:
    """Sorted set user_id → last time (ms) they opened App Home; members older than 1 h are
    dropped on write. TTL 1 h. Their Home is re-published when a request changes."""
    return f"{PREFIX}home:viewers"


def home_refresh_lock() -> str:
    """String lock held while App Home views are re-published. TTL 60 s."""
    return f"{PREFIX}lock:home"


def home_refresh_pending() -> str:
    """String flag: something changed since the last App Home refresh. TTL 60 s."""
    return f"{PREFIX}home:dirty"


def usergroup_members(group_id: str) -> str:
    """Set cache of a Slack user group's members. TTL 5 min."""
    return f"{PREFIX}cache:usergroup:{group_id}"


def oncall_cache(schedule_hash: str) -> str:
    """String (JSON): who is on call for one schedule, as Slack user ids, or why it could not be
    read (bot/decision/slack/oncall.py). TTL JIT_ONCALL_CACHE_SECONDS (an error: a few seconds)."""
    return f"{PREFIX}cache:oncall:{schedule_hash}"


def slack_user_by_email(email_hash: str) -> str:
    """String: the Slack user id `users.lookupByEmail` found for an email ('' for none). TTL 1 h
    (none: 5 min)."""
    return f"{PREFIX}cache:slackuser:{email_hash}"


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


def policy_version(sha256: str) -> str:
    """Hash {text, source, stored_ms}: one policy version's YAML, so requests created under it
    keep its rules after a reload. TTL request retention + 2 days, renewed on every load."""
    return f"{PREFIX}policy:v:{sha256}"


def policy_rejected(sha256: str) -> str:
    """String flag: this invalid policy file was already reported (one report however many
    processes watch the file). TTL 1 day."""
    return f"{PREFIX}policy:rejected:{sha256}"


def auto_approvals(pipeline: str, action: str, day: str) -> str:
    """String counter: auto-approvals of `action` for `pipeline` on UTC `day` (YYYYMMDD).
    TTL 2 days."""
    return f"{PREFIX}auto:{pipeline}:{action}:{day}"


def rate_limit(pipeline: str) -> str:
    """Sorted set of this pipeline's recent request times (ms). TTL one window (60 s)."""
    return f"{PREFIX}ratelimit:{pipeline}"


def long_polls_of_pipeline(pipeline: str) -> str:
    """Sorted set lease id → end (ms): long-polls open on this pipeline's requests. TTL: its last lease."""
    return f"{PREFIX}longpolls:pipeline:{pipeline}"


def long_polls_of_request(request_id: str) -> str:
    """Sorted set lease id → end (ms): long-polls open on one request. TTL: its last lease."""
    return f"{PREFIX}longpolls:req:{request_id}"


def slack_team() -> str:
    """String: the workspace (team id) the bot token belongs to, from auth.test."""
    return f"{PREFIX}slack:team"


def metrics() -> str:
    """Hash: Prometheus counters and histogram buckets (bot/store/metrics.py), shared by every
    process so any replica's /metrics shows the whole deployment. No TTL: a few hundred fields."""
    return f"{PREFIX}metrics"


def channel_next_slot(channel: str) -> str:
    """String: ms of the next free posting slot in `channel` (pacing, ~1 post/s). TTL slot + 60 s."""
    return f"{PREFIX}slack:slot:{channel}"


def channel_outbox(channel: str) -> str:
    """Sorted set request_id → created (ms): requests whose first message waits for a slot in
    `channel`, oldest first. A member leaves when its message is posted (or its request is gone),
    so the key vanishes when the backlog is empty."""
    return f"{PREFIX}slack:outbox:{channel}"


def channel_digested(channel: str) -> str:
    """String: the outbox score (created ms) of the newest request a digest in `channel` has
    listed; requests waiting with a later score are the ones no digest has listed yet. TTL 1 day."""
    return f"{PREFIX}slack:digested:{channel}"


def expired_messages() -> str:
    """Sorted set `channel:request_id` → revoked (ms): expired grants whose Slack message still
    shows them active. Revocation only adds here; the `updates:expired` job updates the messages at
    chat.update's pace and removes each once updated, so the key vanishes when all are current."""
    return f"{PREFIX}slack:expired"


def expired_digested(channel: str) -> str:
    """String: ms up to which expiries in `channel` were counted in a digest reply. TTL 1 day."""
    return f"{PREFIX}slack:expired:digested:{channel}"


def expired_digest_slot(channel: str) -> str:
    """String: ms before which `channel` gets no further expiry digest (one a minute). TTL 1 min."""
    return f"{PREFIX}slack:expired:digest-slot:{channel}"


def expired_scan_slot() -> str:
    """String: while it exists, the expired messages are not scanned for digests again. TTL 5 s."""
    return f"{PREFIX}slack:expired:scan-slot"


def update_slot() -> str:
    """String: ms of the next free `chat.update` slot for catch-up updates, for the whole workspace
    (Slack's Tier 3: about 50 a minute). TTL slot + 60 s."""
    return f"{PREFIX}slack:update-slot"


def dm_channel(user_id: str) -> str:
    """String: the bot's DM channel with a Slack user (from conversations.open). TTL 1 day."""
    return f"{PREFIX}slack:dm:{user_id}"


def notice_lock(request_id: str) -> str:
    """String lock held while a request's DMs / reminders are sent. TTL 30 s."""
    return f"{PREFIX}lock:notice:{request_id}"


def notice(notice_id: str) -> str:
    """String (JSON): one owed Slack message waiting for its `notice:<id>` due item
    (workers/jobs/notify/notices.py). Deleted once posted; TTL 30 days."""
    return f"{PREFIX}notice:{notice_id}"


def undelivered_alerts() -> str:
    """Sorted set due member (`bgalert:<id>`, `notice:<id>`) → ms since the alert is owed; a
    member leaves when Slack took the alert. Read by metrics and App Home."""
    return f"{PREFIX}alerts:undelivered"


def socket_envelope(envelope_id: str) -> str:
    """String: a Socket Mode envelope already handled (replay guard). TTL 10 min."""
    return f"{PREFIX}slack:envelope:{envelope_id}"


def refusals(event: str, actor: str) -> str:
    """Hash start (ms), n: refusals of one kind by one actor in the current window. TTL one window."""
    return f"{PREFIX}refusals:{event}:{actor}"


def refusals_suppressed() -> str:
    """Hash [event, actor] (JSON) → refusals not written to the audit trail in a window that is
    over or running. A field leaves when its summary entry is written."""
    return f"{PREFIX}refusals:suppressed"


def refusals_due() -> str:
    """Sorted set [event, actor] (JSON) → end of the window (ms) whose suppressed refusals still
    need their summary entry. A member leaves when the summary is written."""
    return f"{PREFIX}refusals:due"


def audit_sinks() -> str:
    """Set: the names of the audit sinks `jit worker` streams to (rewritten at each worker start);
    /metrics reports the lag of each."""
    return f"{PREFIX}audit:sinks"


def audit_sink(name: str) -> str:
    """Hash {id, seq, acked_ms, failing_since_ms, attempts, last_error, alerted}: one sink's
    cursor (the stream id it has acknowledged, never moved back) and its outage, if any. Kept
    while the sink is configured; retention never trims past the lowest cursor."""
    return f"{PREFIX}audit:sink:{name}"


def audit_sink_lease(name: str) -> str:
    """String lock: the worker delivering to this sink (one at a time, so order holds). TTL a
    few seconds, renewed while it delivers; another worker takes over when it lapses."""
    return f"{PREFIX}audit:sink:{name}:lease"


def audit_cap_alerted() -> str:
    """String flag: the audit channel was told the hard cap dropped unsent events. TTL 1 h, so
    a lasting outage is re-alerted hourly, not on every trim."""
    return f"{PREFIX}audit:capalerted"


def gate(gate_id: str) -> str:
    """Hash: one deployment GitHub or GitLab holds for jit's decision (bot/store/gates.py): where to
    answer, the run it binds, its request, what the platform was told. TTL request retention + 1 day."""
    return f"{PREFIX}gate:{gate_id}"


def gate_run(digest: str) -> str:
    """String: the gate id of the run a job's OIDC token names (digest of its binding). TTL as the gate."""
    return f"{PREFIX}gate:run:{digest}"


def gate_run_group(digest: str) -> str:
    """Set of gate ids held in one GitHub run attempt (a cancelled run cancels them all). TTL as the gate."""
    return f"{PREFIX}gate:group:{digest}"


def gate_delivery(platform: str, delivery_id: str) -> str:
    """String: a webhook delivery already handled (X-GitHub-Delivery, X-Gitlab-Event-UUID): a replay
    is refused. TTL 8 days (GitHub redelivers for 3)."""
    return f"{PREFIX}gate:seen:{platform}:{delivery_id}"


def github_installation_token(installation_id: str) -> str:
    """String: a GitHub App installation token, sealed (Fernet). TTL: until 5 minutes before it expires."""
    return f"{PREFIX}github:token:{installation_id}"


def gate_lock(gate_id: str) -> str:
    """String lock (redis-py Lock) held while one job tells the platform about a gate. TTL 60 s."""
    return f"{PREFIX}lock:gate:{gate_id}"


def usage(request_id: str) -> str:
    """String: what the target saw of the grant's use (bot/core/usage.py), sealed (Fernet). Set once,
    at the revoke that recorded it (a second revoke never replaces it). TTL request retention."""
    return f"{PREFIX}usage:{request_id}"


def token_checks(request_id: str) -> str:
    """Hash `<resource server>:n|active|first|last` → count / ms: `/v1/introspect` calls about this
    request's token, by resource server. TTL request retention, renewed on each check."""
    return f"{PREFIX}usage:checks:{request_id}"


def token_checks_suppressed() -> str:
    """Hash [request id, server] (JSON) → checks not written to the audit trail one by one (past the
    first few) in a window that is over or running. A field leaves when its summary entry is written."""
    return f"{PREFIX}usage:suppressed"


def token_checks_due() -> str:
    """Sorted set [request id, server] (JSON) → end of the window (ms) whose suppressed checks
    still need their summary entry. A member leaves when the summary is written."""
    return f"{PREFIX}usage:suppressed:due"
