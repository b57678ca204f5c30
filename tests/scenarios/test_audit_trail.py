"""The audit trail: every step is recorded, any tampering shows, retention keeps it verifiable,
the chain head reaches the audit channel, and `jit audit verify|export` work from the shell."""

from __future__ import annotations

import json
import threading
import time

import pytest
from freezegun import freeze_time
from support import SECRET_KEY

from bot.cli import main as jit_cli
from bot.core.crypto import AuditSigner
from bot.store import keys
from bot.store.audit import anchor_message


def events(rt) -> list[dict]:
    return [e.body for e in rt.audit.entries()]


def rewrite_stream(r, change) -> None:
    """Edit the Redis stream directly, as someone with Redis access could: `change` gets the
    rows [(id, fields)] and returns the rows to write back under the same stream key."""
    rows = r.xrange(keys.audit_stream())
    rows = change([(sid, dict(f)) for sid, f in rows])
    r.delete(keys.audit_stream())
    for sid, fields in rows:
        r.xadd(keys.audit_stream(), fields, id=sid)


def some_history(rt, n: int = 6) -> None:
    for i in range(n):
        rt.audit.append(
            "test.event",
            request_id=f"req{i:04d}",
            action="deploy-prod",
            actor="U0LEAD1",
            details={"i": i},
        )


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = jit_cli(list(argv))
    return code, capsys.readouterr().out


# ------------------------------------------------------------------------- what is recorded


def test_a_request_leaves_every_step_in_the_trail_and_no_secret(jit, slack):
    rt = jit.rt
    rt.record_policy_loaded()
    created = jit.ask("read-secret", reason="rotate the signing key", context={"repository": "acme/web"})
    rid = created["id"]
    jit.work()
    jit.approve_and_wait(rid, "U0STRANGER")  # not an approver: refused, and recorded
    jit.approve_and_wait(rid, "U0LEAD1")
    jit.work()
    cred = jit.credential(rid)
    assert cred.status_code == 200
    token = cred.get_json()["credential"]["token"]
    assert jit.release(rid).status_code in (200, 202)
    jit.work()
    jit.approve_and_wait(rid, "U0ALICE")  # a click on a finished request: refused, and recorded

    trail = events(rt)
    by_event = {}
    for e in trail:
        by_event.setdefault(e["event"], []).append(e)
    assert by_event["policy.loaded"][0]["details"]["sha256"] == rt.policy.sha256
    made = by_event["request.created"][0]
    assert made["request_id"] == rid and made["actor"] == "pipeline:web-ci"
    assert made["details"]["reason"] == "rotate the signing key"
    assert made["details"]["context"] == {"repository": "acme/web"}
    refused = [e for e in by_event["approval.refused"] if e["actor"] == "U0STRANGER"]
    assert refused and refused[0]["outcome"] == "refused" and refused[0]["details"]["why"] == "not an approver"
    late = [e for e in by_event["approval.refused"] if e["actor"] == "U0ALICE"]
    assert late and "already" in late[0]["details"]["why"]
    assert by_event["approval.given"][0]["actor"] == "U0LEAD1"
    assert by_event["grant.issued"][0]["request_id"] == rid
    assert by_event["credential.fetched"][0]["actor"] == "pipeline:web-ci"
    assert by_event["grant.revoked"][0]["actor"] == "pipeline:web-ci"
    for e in trail:
        assert e["time"].endswith("Z") and len(e["time"]) == len("2026-01-01T00:00:00.000Z")
        assert set(e) >= {
            "time",
            "event",
            "request_id",
            "action",
            "actor",
            "outcome",
            "details",
            "seq",
            "prev",
        }

    raw = json.dumps(rt.redis.xrange(keys.audit_stream()))
    assert token not in raw and created["request_token"] not in raw
    assert rt.audit.verify() == (len(trail), None)

    # the per-request index returns exactly this request's events, in order
    mine = [e.body["event"] for e in rt.audit.entries_for_request(rid)]
    assert mine == [e["event"] for e in trail if e["request_id"] == rid]
    assert rt.redis.ttl(keys.audit_by_request(rid)) > 0


def test_details_never_keep_secret_fields(rt):
    entry = rt.audit.append(
        "test.event",
        details={
            "token": "t0p",
            "nested": {"password": "pw", "ok": 1},
            "Authorization": "Bearer x",
        },
    )
    assert entry.body["details"] == {"nested": {"ok": 1}}


def test_request_history_falls_back_to_a_scan_when_its_index_is_gone(rt):
    some_history(rt, 4)
    rt.redis.delete(keys.audit_by_request("req0002"))
    assert [e.body["details"]["i"] for e in rt.audit.entries_for_request("req0002")] == [2]


# ------------------------------------------------------------------------- tampering


def test_an_edited_entry_is_named(rt, capsys):
    some_history(rt)

    def edit(rows):
        body = json.loads(rows[2][1]["data"])
        body["actor"] = "U0SOMEONEELSE"
        rows[2][1]["data"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return rows

    rewrite_stream(rt.redis, edit)
    _, broken = rt.audit.verify()
    assert broken.seq == 3 and "edited" in broken.reason
    code, out = cli(capsys, "audit", "verify")
    assert code == 1 and "BROKEN at entry 3" in out


def test_an_edit_with_a_recomputed_hash_is_named_by_its_signature(rt, capsys):
    from bot.store.audit import canonical, entry_hash

    some_history(rt)

    def forge(rows):
        body = json.loads(rows[2][1]["data"])
        body["details"] = {"i": 99}
        rows[2][1]["data"] = canonical(body)
        rows[2][1]["hash"] = entry_hash(body["prev"], body)
        return rows

    rewrite_stream(rt.redis, forge)
    # the edited entry itself: its hash is no longer the one jit signed
    _, broken = rt.audit.verify()
    assert broken.seq == 3 and "signature" in broken.reason
    code, out = cli(capsys, "audit", "verify")
    assert code == 1 and "entry 3" in out


def test_a_deleted_entry_is_named(rt, capsys):
    some_history(rt)
    sid = rt.redis.xrange(keys.audit_stream())[2][0]
    rt.redis.xdel(keys.audit_stream(), sid)
    _, broken = rt.audit.verify()
    assert broken.seq == 4 and "#3 was expected" in broken.reason
    code, out = cli(capsys, "audit", "verify")
    assert code == 1 and "BROKEN at entry 4" in out


def test_a_deleted_last_entry_is_caught_by_the_head(rt, capsys):
    some_history(rt)
    sid = rt.redis.xrevrange(keys.audit_stream(), count=1)[0][0]
    rt.redis.xdel(keys.audit_stream(), sid)
    _, broken = rt.audit.verify()
    assert broken.seq == 6 and "head" in broken.reason
    assert cli(capsys, "audit", "verify")[0] == 1


def test_a_swapped_pair_is_named(rt, capsys):
    some_history(rt)

    def swap(rows):
        (a_id, a), (b_id, b) = rows[2], rows[3]
        rows[2], rows[3] = (a_id, b), (b_id, a)  # same stream ids, contents exchanged
        return rows

    rewrite_stream(rt.redis, swap)
    _, broken = rt.audit.verify()
    assert broken.seq == 4 and "out of order" in broken.reason
    code, out = cli(capsys, "audit", "verify")
    assert code == 1 and "BROKEN at entry 4" in out


def test_an_intact_chain_verifies_from_the_cli(rt, capsys):
    some_history(rt)
    code, out = cli(capsys, "audit", "verify")
    head = rt.audit.head()
    assert code == 0 and "ok: 6 entries" in out and head["hash"] in out


def test_verify_while_events_are_appended_is_not_a_false_alarm(rt):
    some_history(rt, 3000)
    stop = threading.Event()

    def append():
        while not stop.is_set():
            rt.audit.append("test.concurrent", actor="jit")

    t = threading.Thread(target=append)
    t.start()
    try:
        results = [rt.audit.verify() for _ in range(3)]
    finally:
        stop.set()
        t.join()
    assert all(broken is None for _, broken in results)


# ------------------------------------------------------------------------- retention


def test_retention_trim_records_its_anchor_and_the_rest_still_verifies(rt, capsys):
    from workers.upkeep import AuditUpkeep

    with freeze_time("2020-01-01T00:00:00Z"):
        some_history(rt, 5)  # far beyond the default retention of 365 days
    rt.audit.append("test.recent", request_id="req0001", actor="U0LEAD1")
    old = rt.redis.xrange(keys.audit_stream())[4]
    old_hash = old[1]["hash"]

    assert AuditUpkeep(rt).trim() == 5
    anchor = rt.audit.anchor()
    signer = AuditSigner(SECRET_KEY)
    assert anchor == {
        "seq": "5",
        "hash": old_hash,
        "id": old[0],
        "kid": signer.kid,
        "sig": signer.sign(anchor_message(5, old_hash)),
    }
    trail = events(rt)
    assert [e["event"] for e in trail] == ["test.recent", "audit.trimmed"]
    assert trail[1]["details"]["anchor_hash"] == old_hash and trail[1]["details"]["removed"] == 5
    assert rt.audit.verify() == (2, None)
    assert cli(capsys, "audit", "verify")[0] == 0
    # a second trim finds nothing more and leaves the anchor alone
    assert AuditUpkeep(rt).trim() == 0 and rt.audit.anchor() == anchor
    # the per-request history skips what retention removed
    assert [e.body["event"] for e in rt.audit.entries_for_request("req0001")] == ["test.recent"]

    # tampering after a trim is still caught: drop the first entry that remains
    rt.redis.xdel(keys.audit_stream(), rt.redis.xrange(keys.audit_stream())[0][0])
    _, broken = rt.audit.verify()
    assert broken is not None and broken.seq == 7


def test_racing_trims_keep_a_matching_anchor(rt):
    from datetime import UTC, datetime, timedelta

    from bot.core.clock import to_ms

    base = datetime(2020, 1, 1, tzinfo=UTC)
    for day in range(40):  # one entry a day, so every cut below removes a different amount
        with freeze_time(base + timedelta(days=day)):
            rt.audit.append("test.old", actor="jit", details={"day": day})
    some_history(rt, 3)
    cuts = [to_ms(base + timedelta(days=d, hours=12)) for d in (5, 30, 12, 38, 20, 1, 25, 33)]
    barrier = threading.Barrier(len(cuts))

    def trim(cut):
        barrier.wait()
        rt.audit.trim(cut)

    threads = [threading.Thread(target=trim, args=(c,)) for c in cuts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rt.audit.count() == 3 + 1 and rt.audit.anchor()["seq"] == "39"
    assert rt.audit.verify() == (4, None)


# ------------------------------------------------------------------------- chain head in Slack


def is_head_post(call) -> bool:
    return call.params.get("channel") == "C0AUDIT" and "chain head" in call.params.get("text", "")


@pytest.fixture
def audit_policy(rt, policy_file):
    policy_file.write_text(
        policy_file.read_text() + "audit:\n  channel: C0AUDIT\n  post_head_every: 2s\n  retention: 30d\n"
    )
    rt._policy = None  # read the file again
    assert rt.policy.audit_channel() == "C0AUDIT"
    return rt


def test_two_workers_post_the_chain_head_once_per_interval(audit_policy, slack, capsys):
    from bot.wiring import build
    from workers.upkeep import AuditUpkeep

    rt = audit_policy
    some_history(rt, 3)
    other = build(rt.settings, policy_path=str(rt.settings.jit_policy_file))
    other._policy = rt.policy
    upkeeps = [AuditUpkeep(rt), AuditUpkeep(other)]
    barrier = threading.Barrier(2)
    posted: list[bool] = []

    def tick(u):
        barrier.wait()
        posted.append(u.post_head())

    threads = [threading.Thread(target=tick, args=(u,)) for u in upkeeps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(posted) == [False, True]
    posts = [c for c in slack.calls("chat.postMessage") if is_head_post(c)]
    assert len(posts) == 1
    assert "#3" in posts[0].params["text"]
    head3 = rt.redis.xrange(keys.audit_stream())[2][1]["hash"]
    assert head3 in posts[0].params["text"]
    recorded = [e for e in events(rt) if e["event"] == "audit.head_posted"]
    assert len(recorded) == 1 and recorded[0]["details"]["seq"] == 3 and recorded[0]["details"]["hash"] == head3

    assert upkeeps[0].post_head() is False and upkeeps[1].post_head() is False  # same interval

    # the next interval: one more post, with the new head
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(u.post_head() for u in upkeeps):
        time.sleep(0.2)
    posts = [c for c in slack.calls("chat.postMessage") if is_head_post(c)]
    assert len(posts) == 2 and "#4" in posts[1].params["text"]

    # the post carries the head's signature, so it is a checkpoint anyone can check offline
    sig3 = rt.redis.xrange(keys.audit_stream())[2][1]["sig"]
    assert f"--checkpoint 3:{head3}:{sig3}`" in posts[0].params["text"]
    assert cli(capsys, "audit", "verify", "--checkpoint", f"3:{head3}:{sig3}")[0] == 0

    # the posted heads check the trail from the shell; a rewritten trail fails them
    assert cli(capsys, "audit", "verify", "--checkpoint", f"3:{head3}")[0] == 0
    code, out = cli(capsys, "audit", "verify", "--checkpoint", f"3:{'0' * 64}")
    assert code == 1 and "checkpoint #3" in out


def test_a_failed_head_post_is_retried_at_the_next_tick(audit_policy, slack):
    from workers.upkeep import AuditUpkeep

    some_history(audit_policy, 1)
    slack.fail_with(500, methods="chat.postMessage", times=1)
    upkeep = AuditUpkeep(audit_policy)
    assert upkeep.post_head() is False
    assert upkeep.post_head() is True
    assert len([c for c in slack.calls("chat.postMessage") if c.ok and is_head_post(c)]) == 1


def test_a_failed_head_post_never_releases_another_workers_lock(audit_policy, slack, monkeypatch):
    """Worker A's post is slow; its lock expires and worker B takes the next one and posts.
    When A's post then fails, A must not delete B's lock (a third post would follow)."""
    from bot.wiring import build
    from workers.upkeep import AuditUpkeep

    rt = audit_policy
    some_history(rt, 2)
    other = build(rt.settings, policy_path=str(rt.settings.jit_policy_file))
    other._policy = rt.policy
    a, b = AuditUpkeep(rt), AuditUpkeep(other)
    b_result = []

    def slow_then_failing_post(**kwargs):
        rt.redis.delete(keys.audit_head_posted())  # A's lock runs out while Slack is slow
        b_result.append(b.post_head())  # B takes the next interval's lock and posts
        raise TimeoutError("Slack did not answer in time")

    monkeypatch.setattr(rt.slack, "chat_postMessage", slow_then_failing_post)
    assert a.post_head() is False and b_result == [True]
    held = rt.redis.pttl(keys.audit_head_posted())
    assert held > 1000, "B's lock was deleted by A"
    assert b.post_head() is False  # still B's interval
    assert len([c for c in slack.calls("chat.postMessage") if c.ok and is_head_post(c)]) == 1


def test_a_head_jit_did_not_sign_is_posted_as_a_warning_not_as_a_checkpoint(audit_policy, slack):
    from audit_support import append_forged

    from workers.upkeep import AuditUpkeep

    some_history(audit_policy, 2)
    append_forged(audit_policy.redis)
    assert AuditUpkeep(audit_policy).post_head() is True
    (post,) = [c for c in slack.calls("chat.postMessage") if c.ok and is_head_post(c)]
    assert "NOT carry a valid signature" in post.params["text"] and "--checkpoint" not in post.params["text"]


def test_the_upkeep_loop_trims_and_posts_on_its_own(audit_policy, slack):
    from workers.upkeep import AuditUpkeep

    rt = audit_policy
    with freeze_time("2020-01-01T00:00:00Z"):
        some_history(rt, 2)
    upkeep = AuditUpkeep(rt, tick_s=0.1)
    thread = upkeep.start()
    try:
        slack.wait_for(
            lambda c: c.method == "chat.postMessage" and is_head_post(c),
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not rt.audit.anchor():
            time.sleep(0.05)
    finally:
        upkeep.stop()
        thread.join(10)
    assert rt.audit.anchor()["seq"] == "2"
    assert rt.audit.verify()[1] is None


# ------------------------------------------------------------------------- export


def test_export_writes_json_lines_filtered_by_request_and_time(rt, capsys, tmp_path):
    with freeze_time("2020-01-01T00:00:00Z"):
        rt.audit.append("test.old", request_id="aaaa1111", actor="U0LEAD1")
    some_history(rt, 3)
    rt.audit.append("test.more", request_id="req0001", actor="U0LEAD2")

    code, out = cli(capsys, "audit", "export")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["hash"] and r["prev"] for r in rows)
    assert rows[1]["prev"] == rows[0]["hash"]

    code, out = cli(capsys, "audit", "export", "--request", "req0001")
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["test.event", "test.more"]

    code, out = cli(capsys, "audit", "export", "--since", "2h")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [2, 3, 4, 5]

    target = tmp_path / "audit.jsonl"
    code, out = cli(
        capsys,
        "audit",
        "export",
        "--since",
        "2021-01-01T00:00:00Z",
        "--request",
        "req0001",
        "--output",
        str(target),
    )
    assert code == 0 and out == ""
    assert [json.loads(line)["seq"] for line in target.read_text().splitlines()] == [3, 5]

    with pytest.raises(SystemExit):
        jit_cli(["audit", "export", "--since", "yesterday-ish"])


# ------------------------------------------------------------------------- through `jit worker`


def test_two_jit_workers_post_the_chain_head_once(tmp_path):
    import redis as redislib
    from procs import Stack, wait_until
    from support import policy_text

    policy = policy_text(str(tmp_path)) + "audit:\n  channel: C0AUDIT\n  post_head_every: 1h\n"
    with Stack(policy=policy) as stack:
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        workers = [stack.worker(concurrency=1), stack.worker(concurrency=1)]
        wait_until(lambda: r.scard("rq:workers") == 2, timeout=60, message="both workers up")
        post = stack.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and "chain head" in c.params.get("text", ""),
            timeout=30,
        )
        time.sleep(1.0)  # the assertion is on absence: let a second, wrong post arrive
        posts = [c for c in stack.slack.calls("chat.postMessage") if "chain head" in c.params.get("text", "")]
        assert len(posts) == 1 and posts[0].params["channel"] == "C0AUDIT"
        assert all(w.alive for w in workers)
        head = [json.loads(f["data"]) for _, f in r.xrange(keys.audit_stream())]
        assert head[0]["event"] == "policy.loaded"
        assert f"#{head[0]['seq']}" in post.params["text"]
        assert r.pttl(keys.audit_head_posted()) > 3_500_000
