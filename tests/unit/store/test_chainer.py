"""bot/store/chainer.py and AuditLog.flush_soon: in `jit serve` and `jit worker` a writer stores its
state change and audit event and goes on; a thread of the process chains the trail for everyone."""

from __future__ import annotations

import multiprocessing
import threading
import time

from unit_support import ask

from bot.store import keys
from bot.store.chainer import Chainer


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_create_is_chained_by_the_chainer_not_by_the_writer(rt, monkeypatch):
    stop = rt.audit.chain_in_background()
    flushed_by: list[str] = []
    flush = rt.audit.flush

    def recording(*a, **kw):
        flushed_by.append(threading.current_thread().name)
        return flush(*a, **kw)

    monkeypatch.setattr(rt.audit, "flush", recording)
    rt.audit._chainer._flush = recording  # the chainer was given the unwrapped method
    try:
        rids = [ask(rt, "read-secret") for _ in range(5)]
        wait_until(lambda: rt.redis.llen(keys.audit_outbox()) == 0)
        assert flushed_by and set(flushed_by) == {"jit-audit-chainer"}  # (a reader below chains too)
        created = {e.body["request_id"] for e in rt.audit.latest(50) if e.body["event"] == "request.created"}
        assert set(rids) <= created
    finally:
        stop()
    assert rt.audit.verify()[1] is None


def test_without_a_chainer_the_writer_chains_at_once(rt):
    rid = ask(rt, "read-secret")
    assert rt.redis.llen(keys.audit_outbox()) == 0  # no wait: chained before the create returned
    assert any(e.body["request_id"] == rid for e in rt.audit.latest(10))


def test_stop_chains_what_is_left(rt):
    stop = rt.audit.chain_in_background()
    ask(rt, "read-secret")  # the chainer's thread is running, and has chained this
    wait_until(lambda: rt.redis.llen(keys.audit_outbox()) == 0)
    # an event stored while the thread was stopping, and not woken for
    rt.redis.rpush(keys.audit_outbox(), '{"body":' + rt.audit.event_body("test.left", actor="test") + ',"patch":{}}')
    stop()
    assert rt.redis.llen(keys.audit_outbox()) == 0
    assert rt.audit.latest(1)[0].body["event"] == "test.left"
    assert rt.audit.verify()[1] is None


def test_a_failed_flush_is_tried_again_until_it_succeeds():
    calls: list[float] = []
    done = threading.Event()

    def flaky() -> int:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("Redis away")
        done.set()
        return 1

    chainer = Chainer(flaky)
    chainer.wake()  # once: the retries come from the failures
    assert done.wait(10)
    chainer.stop()
    assert len(calls) >= 3 and calls[1] - calls[0] >= 0.4  # backed off, not spinning


def _wake_and_wait(chainer: Chainer) -> None:
    chainer.wake()
    time.sleep(1)


def test_a_forked_process_gets_a_chainer_thread_of_its_own():
    ran = multiprocessing.get_context("fork").Queue()
    chainer = Chainer(lambda: ran.put(multiprocessing.current_process().pid) or 0)
    chainer.wake()
    parent_pid = ran.get(timeout=10)
    proc = multiprocessing.get_context("fork").Process(target=_wake_and_wait, args=(chainer,))
    proc.start()
    proc.join(10)
    child_pid = ran.get(timeout=10)
    assert child_pid == proc.pid != parent_pid  # the child's wake ran in the child, by its own thread
    chainer.stop()
