"""SIGTERM (docker stop, a deploy, Ctrl-C): in-flight work finishes or is picked up again; none is lost."""

from __future__ import annotations

import json
import signal
import threading

import pytest
import redis as redislib
import requests
from fakes.slack import block_action
from procs import Stack, wait_until
from support import WEB_TOKEN

from bot.store import keys


@pytest.fixture
def stack():
    with Stack() as s:
        s.serve()
        yield s


def approve_slow_grant(stack: Stack, seconds: float) -> tuple[str, str]:
    """A pipeline asks, an approver clicks, and the grant command takes `seconds`."""
    (stack.state_dir / "slow-grant").write_text(str(seconds))
    r = stack.ask("quick", WEB_TOKEN, ttl="1m", reason="shutdown test")
    assert r.status_code == 201, r.text
    rid, rtok = r.json()["id"], r.json()["request_token"]
    ts = stack.message_ts(rid)
    resp = stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    assert resp.status_code == 200
    return rid, rtok


def grant_in_flight(stack: Stack, rid: str) -> bool:
    """The grant has begun (its backend is being called), whichever thread or RQ job runs it."""
    return bool(redislib.Redis.from_url(stack.redis.url).hexists(f"jit:req:{rid}", "grant_inflight"))


def test_sigterm_to_a_worker_lets_the_grant_in_hand_finish(stack):
    """What `docker stop` and Kubernetes do: SIGTERM to the worker's main process only."""
    worker = stack.worker(concurrency=2)  # the job may run in the main process or a forked child
    rid, rtok = approve_slow_grant(stack, 4)
    wait_until(lambda: grant_in_flight(stack, rid), timeout=30, message="the grant to start")
    assert not (stack.state_dir / f"{rid}.grant").exists()  # still sleeping in the grant command

    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(60) == 0, worker.log()

    # the worker finished the grant before it exited: no other worker runs
    grants = (stack.state_dir / f"{rid}.grant").read_text().splitlines()
    assert len(grants) == 1
    body = stack.get(rid, rtok).json()
    assert body["status"] == "active"
    assert stack.get(rid, rtok, path="/credential").status_code == 200


def test_sigterm_to_the_whole_process_group_loses_no_grant(stack):
    """Ctrl-C in a terminal or a control-group kill also stops the grant command itself: the
    attempt fails, stays in the due queue, and the next worker to start completes it."""
    worker = stack.worker(concurrency=1)
    rid, rtok = approve_slow_grant(stack, 4)
    wait_until(lambda: grant_in_flight(stack, rid), timeout=30, message="the grant to start")

    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(60) == 0, worker.log()
    # the grant command died with the group (approved, to be retried) — unless the signal
    # came before the job had started it, in which case the job finished: either way, not lost
    assert stack.get(rid, rtok).json()["status"] in ("approved", "active")

    (stack.state_dir / "slow-grant").unlink()
    stack.worker(concurrency=1)
    body = stack.wait_status(rid, rtok, {"active"}, timeout=60)
    assert body["status"] == "active"
    assert len((stack.state_dir / f"{rid}.grant").read_text().splitlines()) == 1


def long_poll_in_background(stack: Stack, rid: str, rtok: str, wait: int) -> tuple[threading.Thread, dict]:
    """A pipeline waiting on its request: the thread, and what it got (status and body, or error)."""
    result: dict = {}

    def long_poll():
        try:
            resp = stack.get(rid, rtok, wait=wait)
            result["status"], result["body"] = resp.status_code, resp.json()
        except Exception as e:  # noqa: BLE001 - the assertion reports it
            result["error"] = repr(e)

    t = threading.Thread(target=long_poll)
    t.start()
    return t, result


def test_sigterm_to_serve_finishes_the_requests_in_flight(stack):
    r = stack.ask("quick", WEB_TOKEN, reason="long-poll during shutdown")
    rid, rtok = r.json()["id"], r.json()["request_token"]
    watcher = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    from bot.store import keys

    # a client that keeps an idle keep-alive connection open (as HTTP pools and load balancers do)
    idle = requests.Session()
    assert idle.get(stack.url + "/healthz", timeout=10).status_code == 200

    t, result = long_poll_in_background(stack, rid, rtok, wait=5)
    # the first long-poll of a fresh server opens its wake-up subscription: it is now in flight
    wait_until(
        lambda: watcher.pubsub_numsub(keys.changed_channel())[0][1] >= 1,
        timeout=30,
        message="the long-poll to be waiting",
    )
    serve = stack.procs[0]
    serve.signal(signal.SIGTERM)
    t.join(60)
    assert result.get("status") == 200, result
    assert result["body"]["status"] == "pending"  # answered with the status it had, not cut off
    # the idle connection does not hold the exit until the graceful timeout (65 s)
    assert serve.popen.wait(40) == 0, serve.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.url + "/healthz", timeout=5)
    idle.close()


def test_ctrl_c_to_serve_answers_the_waiting_pipeline_and_says_what_it_does(stack):
    """Ctrl-C reaches the whole process group (master and workers): the long-poll is answered
    with its status rather than cut off, the server says it is stopping, then that it stopped."""
    r = stack.ask("read-secret", WEB_TOKEN, reason="Ctrl-C while a pipeline waits")
    rid, rtok = r.json()["id"], r.json()["request_token"]
    watcher = redislib.Redis.from_url(stack.redis.url)
    t, result = long_poll_in_background(stack, rid, rtok, wait=60)
    wait_until(lambda: watcher.zcard("jit:longpolls:pipeline:web-ci") >= 1, timeout=30, message="the long-poll")
    serve = stack.procs[0]
    serve.signal(signal.SIGINT)
    assert serve.popen.wait(50) == 0, serve.log()  # well before the 60 s long-poll would have ended
    t.join(30)
    assert result.get("status") == 200, result
    assert result["body"]["status"] == "pending"
    log = serve.log()
    assert "jit: stopping — requests in flight finish, open long-polls are answered now with their status" in log
    assert log.rstrip().endswith("jit: stopped") and "Traceback" not in log


def test_sigterm_to_the_server_writes_the_counts_it_held_and_chains_every_event(stack):
    """`jit serve` counts in the process and chains the audit trail from a thread of its own: what
    it held when told to stop reaches Redis before it exits (a deploy loses no count)."""
    serve = stack.procs[0]
    created = []
    for _ in range(20):
        r = stack.ask("quick", WEB_TOKEN, reason="counted at the stop")
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
    serve.popen.send_signal(signal.SIGTERM)  # within the second the counts are held for
    assert serve.popen.wait(60) == 0, serve.log()

    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    counts = {json.loads(f)[2][1]: int(v) for f, v in r.hgetall(keys.metrics()).items() if '"jit_requests_total"' in f}
    assert counts.get("created") == len(created)
    assert r.llen(keys.audit_outbox()) == 0  # every event chained before the exit
    chained = [json.loads(e["data"]) for _, e in r.xrange(keys.audit_stream())]
    assert sorted(e["request_id"] for e in chained if e["event"] == "request.created") == sorted(created)
