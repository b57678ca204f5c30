"""Safe policy reloads: SIGHUP and file changes, invalid files rejected, in-flight requests
keep the rules they were created under."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time

import pytest
import redis as redislib
from fakes.slack import block_action
from policy_rules_support import entries
from procs import Stack, wait_until
from support import WEB_TOKEN, policy_text
from test_policy_file import alias_bomb

from bot.core import errors as E
from bot.core.errors import PolicyError
from bot.policy_reload import PolicyReloader, install_sighup
from bot.wiring import build, parse_policy


def changed_policy(text: str) -> str:
    """Who approves deploy-prod changes (U0LEAD2 out, one approval), `quick` is removed,
    `fresh` is added, and deploy-prod's grant command changes."""
    text = text.replace(
        "approvers: [U0LEAD1, U0LEAD2, U0ALICE, S0PRODLEADS]\n    approvals_required: 2",
        "approvers: [U0LEAD1, U0ALICE, U0NEWLEAD, S0PRODLEADS]\n    approvals_required: 1",
    )
    text = text.replace('"grant"]\n      revoke_command', '"grant", "--v2"]\n      revoke_command', 1)
    text = text.replace("actions: [deploy-prod, read-secret, quick]", "actions: [deploy-prod, read-secret, fresh]")
    start = text.index("  quick:")
    quick = text[start:]
    return text[:start] + quick.replace("  quick:", "  fresh:", 1).replace(
        "A short-lived grant for timing tests", "Something new"
    )


def invalid_policy(text: str) -> str:
    return text.replace("actions:\n  deploy-prod:\n", "actions:\n  deploy-prod:\n    colour: blue\n", 1)


@pytest.fixture
def reloader(rt):
    rt.record_policy_loaded()  # as `jit worker` does at start
    return PolicyReloader(rt)


def notices(slack, channel="C0APPROVALS"):
    return [
        c.params["text"]
        for c in slack.calls("chat.postMessage")
        if c.params["channel"] == channel and "blocks" not in c.params
    ]


# ------------------------------------------------------------------ valid and invalid files


def test_a_valid_change_is_loaded_audited_and_announced(rt, jit, reloader, policy_file, slack):
    old = rt.policy.sha256
    policy_file.write_text(changed_policy(policy_file.read_text()))

    assert reloader.reload("file") == "loaded"
    assert rt.policy.sha256 != old and "fresh" in rt.policy.actions and "quick" not in rt.policy.actions

    loaded = entries(rt, "policy.loaded")
    assert [e["details"]["sha256"] for e in loaded] == [old, rt.policy.sha256]
    d = loaded[-1]["details"]
    assert d["previous_sha256"] == old and d["trigger"] == "file"
    changes = d["changes"]
    assert changes["actions_added"] == ["fresh"] and changes["actions_removed"] == ["quick"]
    assert changes["approvers"]["deploy-prod"] == {"added": ["U0NEWLEAD"], "removed": ["U0LEAD2"]}
    assert changes["changed"]["deploy-prod"] == ["approvals_required", "grant"]

    # the notice takes its turn in the audit channel (one post a second)
    jit.drain(lambda: any(f"`{rt.policy.sha256[:16]}`" in t for t in notices(slack)), what="the notice")
    text = "\n".join(notices(slack))
    assert f"`{rt.policy.sha256[:16]}`" in text and f"was `{old[:16]}`" in text
    assert "approvers added to `deploy-prod`: <@U0NEWLEAD>" in text
    assert "approvers removed from `deploy-prod`: <@U0LEAD2>" in text
    assert "actions added: `fresh`" in text and "actions removed: `quick`" in text

    assert reloader.reload("file") == "unchanged"
    assert len(entries(rt, "policy.loaded")) == 2


def test_an_invalid_file_is_rejected_and_the_old_policy_stays(rt, jit, reloader, policy_file, slack):
    old = rt.policy.sha256
    policy_file.write_text(invalid_policy(policy_file.read_text()))

    assert reloader.reload("file") == "rejected"
    assert rt.policy.sha256 == old
    rejected = entries(rt, "policy.rejected")
    assert len(rejected) == 1
    d = rejected[0]["details"]
    assert d["in_force_sha256"] == old and any("colour" in e and "unknown key" in e for e in d["errors"])
    assert d["errors"][0].startswith(f"{policy_file}:")

    jit.drain(lambda: [t for t in notices(slack) if "Policy file rejected" in t], what="the notice")
    posted = [t for t in notices(slack) if "Policy file rejected" in t]
    assert len(posted) == 1 and "colour" in posted[0] and old[:16] in posted[0]

    # the old policy keeps working
    assert jit.ask("quick")["status"] == "pending"
    # polling the same bad file again neither re-parses nor re-reports it
    assert reloader.reload("file") == "rejected" and reloader.reload("sighup") == "rejected"
    jit.work()
    assert len(entries(rt, "policy.rejected")) == 1
    assert len([t for t in notices(slack) if "Policy file rejected" in t]) == 1

    # fixing the file loads it
    policy_file.write_text(changed_policy(policy_text(str(policy_file.parent / "grants"))))
    assert reloader.reload("file") == "loaded"


def test_an_alias_bomb_is_rejected_on_reload(rt, reloader, policy_file):
    old = rt.policy.sha256
    policy_file.write_text(alias_bomb())
    assert reloader.reload("file") == "rejected"
    assert rt.policy.sha256 == old
    errors = entries(rt, "policy.rejected")[0]["details"]["errors"]
    assert errors == [f"{policy_file}:1: YAML anchors and aliases are not allowed in a policy"]


def test_an_unreadable_file_is_rejected(rt, reloader, policy_file):
    old = rt.policy.sha256
    policy_file.unlink()
    assert reloader.reload("file") == "rejected"
    assert rt.policy.sha256 == old
    assert "cannot read policy file" in entries(rt, "policy.rejected")[0]["details"]["errors"][0]


def test_many_processes_reloading_one_file_record_it_once(rt, reloader, policy_file, jit_env):
    others = [build(rt.settings) for _ in range(3)]
    for o in others:
        assert o.policy.sha256 == rt.policy.sha256
    policy_file.write_text(invalid_policy(policy_file.read_text()))
    for r in [rt, *others]:
        assert PolicyReloader(r).reload("file") == "rejected"
    assert len(entries(rt, "policy.rejected")) == 1

    policy_file.write_text(changed_policy(policy_text(str(policy_file.parent / "grants"))))
    for r in [rt, *others]:
        assert PolicyReloader(r).reload("file") == "loaded"
    assert len(entries(rt, "policy.loaded")) == 2  # the start and this one
    assert len({r.policy.sha256 for r in [rt, *others]}) == 1


# ------------------------------------------------------------------ files being written


def stricter_at_the_end(text: str) -> tuple[str, str]:
    """A policy whose last line makes `quick` need two approvals, and its prefix without that
    line: a valid policy with weaker rules, as a reader catching the file halfway sees it."""
    text = text.replace("approvers: [U0LEAD1]\n", "approvers: [U0LEAD1, U0LEAD2]\n")
    full = text + "    approvals_required: 2\n"
    half = full[: full.rindex("    approvals_required: 2\n")]
    assert parse_policy(half).action("quick").approvals_required == 1
    assert parse_policy(full).action("quick").approvals_required == 2
    return full, half


def write_in_two_halves(path, first: str, rest: str, pause: float) -> None:
    """What an editor or `cat > file` does: truncate, write some, pause, write the rest."""
    with open(path, "w") as f:
        f.write(first)
        f.flush()
        time.sleep(pause)  # the pause being tested, not a synchronisation
        f.write(rest)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_file_written_in_two_halves_is_never_put_in_force_half_written(rt, policy_file):
    rt.record_policy_loaded()
    full, half = stricter_at_the_end(policy_file.read_text())
    reloader = PolicyReloader(rt, interval=0.01, settle=2.0)
    reloader.start()
    try:
        time.sleep(0.1)  # let it take the file's current state as loaded
        write_in_two_halves(policy_file, half, full[len(half) :], pause=0.2)
        wait_until(lambda: rt.policy.sha256 == sha(full), timeout=30, message="the full file loaded")
    finally:
        reloader.stop()
    # neither the empty file nor the weaker half was ever in force, stored or reported
    assert rt.policy_store.get(sha(half)) is None
    assert [e["details"]["sha256"] for e in entries(rt, "policy.loaded")][-1] == sha(full)
    assert sha(half) not in [e["details"]["sha256"] for e in entries(rt, "policy.loaded")]
    assert entries(rt, "policy.rejected") == []


def test_a_worker_booting_while_the_file_is_written_waits_for_the_whole_file(rt, policy_file):
    rt.record_policy_loaded()
    full, half = stricter_at_the_end(policy_file.read_text())
    writer = threading.Thread(target=write_in_two_halves, args=(policy_file, half, full[len(half) :], 0.2))
    writer.start()
    try:
        wait_until(lambda: policy_file.stat().st_size == len(half.encode()), message="half written")
        booting = build(rt.settings)
        assert PolicyReloader(booting, settle=2.0).load_initial().sha256 == sha(full)
    finally:
        writer.join(30)
    assert booting.policy.action("quick").approvals_required == 2
    assert entries(rt, "policy.rejected") == []


# ------------------------------------------------------------------ requests in flight


def test_requests_in_flight_follow_the_stricter_of_their_policy_and_the_new_one(rt, jit, reloader, policy_file):
    """Tightening applies to requests already waiting; loosening only to new ones."""
    before = jit.ask("deploy-prod")["id"]
    quick = jit.ask("quick")["id"]
    old_sha = rt.policy.sha256

    policy_file.write_text(changed_policy(policy_file.read_text()))
    assert reloader.reload("file") == "loaded"
    after = jit.ask("deploy-prod")["id"]
    assert jit.ask("quick", expect=404)["error"] == "unknown_action"

    # the old request: U0LEAD2 was removed (refused at once), U0NEWLEAD was added (not for it),
    # and it still needs the two approvals it was created with
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(before, "U0LEAD2")
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(before, "U0NEWLEAD")
    assert rt.decisions.approve(before, "U0LEAD1").result == "recorded"
    assert rt.decisions.approve(before, "U0ALICE").result == "approved"
    # the new request: the new rules
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(after, "U0LEAD2")
    assert rt.decisions.approve(after, "U0NEWLEAD").result == "approved"
    # an action the reload removed cannot be approved any more
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(quick, "U0LEAD1")

    # each request's grant backend comes from its own policy version
    old_cmd = rt.backend_for("deploy-prod", old_sha).config.grant_command
    new_cmd = rt.backend_for("deploy-prod", rt.store.get(after).policy_sha256).config.grant_command
    assert "--v2" not in old_cmd and "--v2" in new_cmd
    assert rt.backend_for("quick", rt.store.get(quick).policy_sha256).type == "exec"


def test_a_policy_version_is_read_back_from_redis_by_another_process(rt, jit, reloader, policy_file):
    rid = jit.ask("deploy-prod")["id"]
    policy_file.write_text(changed_policy(policy_file.read_text()))
    assert reloader.reload("file") == "loaded"

    fresh = build(rt.settings)  # a process started after the reload: never saw the old file
    assert fresh.policy.sha256 == rt.policy.sha256
    with pytest.raises(E.NotAnApprover):
        fresh.decisions.approve(rid, "U0NEWLEAD")
    # two approvals, as the version the request was created under (read back from Redis) says
    assert fresh.decisions.approve(rid, "U0LEAD1").result == "recorded"


# ------------------------------------------------------------------ watcher and signal


def test_the_watcher_notices_a_changed_file(rt, reloader, policy_file):
    reloader.interval = 0.05
    reloader.start()
    try:
        time.sleep(0.2)  # let it take the file's current state as loaded
        policy_file.write_text(changed_policy(policy_file.read_text()))
        wait_until(lambda: "fresh" in rt.policy.actions, timeout=15, message="reload on file change")
    finally:
        reloader.stop()
    assert entries(rt, "policy.loaded")[-1]["details"]["trigger"] == "file"


def test_sighup_reloads_at_once(rt, reloader, policy_file):
    reloader.interval = 3600  # no polling: only the signal can trigger this reload
    previous = signal.getsignal(signal.SIGHUP)
    try:
        reloader.start()
        install_sighup(reloader)
        time.sleep(0.1)
        policy_file.write_text(changed_policy(policy_file.read_text()))
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: "fresh" in rt.policy.actions, timeout=15, message="reload on SIGHUP")
    finally:
        signal.signal(signal.SIGHUP, previous)
        reloader.stop()
    assert entries(rt, "policy.loaded")[-1]["details"]["trigger"] == "sighup"


def test_a_worker_booting_on_a_bad_file_keeps_the_last_recorded_policy(rt, reloader, policy_file):
    good = rt.policy.sha256
    policy_file.write_text(invalid_policy(policy_file.read_text()))
    booting = build(rt.settings)
    assert PolicyReloader(booting).load_initial().sha256 == good
    assert booting.policy.sha256 == good
    assert len(entries(rt, "policy.rejected")) == 1


def test_with_no_recorded_policy_a_bad_file_still_stops_start_up(rt, policy_file):
    policy_file.write_text(invalid_policy(policy_file.read_text()))
    with pytest.raises(PolicyError):
        PolicyReloader(build(rt.settings)).load_initial()


# ------------------------------------------------------------------ real processes


def test_running_processes_reload_without_a_restart():
    with Stack() as s:
        serve = s.serve()
        worker = s.worker(concurrency=2)
        r = redislib.Redis.from_url(s.redis.url, decode_responses=True)
        first = wait_until(lambda: r.get("jit:policy:current"), message="the start-up policy recorded")
        assert s.ask("fresh", WEB_TOKEN).status_code == 404

        # a file change reaches every gunicorn worker and `jit worker`, without a signal
        s.policy_file.write_text(changed_policy(s.policy_file.read_text()))
        wait_until(lambda: s.ask("fresh", WEB_TOKEN).status_code == 201, message="serve reloaded")
        second = wait_until(lambda: (v := r.get("jit:policy:current")) != first and v, message="recorded")

        # SIGHUP to gunicorn's master with a broken file: new workers keep the policy in force
        s.policy_file.write_text(invalid_policy(s.policy_file.read_text()))
        os.kill(serve.popen.pid, signal.SIGHUP)
        wait_until(
            lambda: any(json.loads(f["data"])["event"] == "policy.rejected" for _, f in r.xrange("jit:audit")),
            message="rejection recorded",
        )
        # the replacement worker booted on the policy in force, not on the broken file
        wait_until(lambda: "policy file rejected (start)" in serve.log(), message="a new worker booted")
        assert serve.alive and s.ask("fresh", WEB_TOKEN).status_code == 201
        assert r.get("jit:policy:current") == second

        # SIGHUP to `jit worker` (it forwards to its children): still alive, still working
        os.kill(worker.popen.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert worker.alive
        rid = s.ask("deploy-prod", WEB_TOKEN).json()
        ts = s.message_ts(rid["id"])
        s.slack_post(block_action("jit_approve", rid["id"], "U0LEAD1", channel="C0PROD", message_ts=ts))
        assert s.wait_status(rid["id"], rid["request_token"], {"active"})["status"] == "active"
        events = [json.loads(f["data"])["event"] for _, f in r.xrange("jit:audit")]
        assert events.count("policy.rejected") == 1 and events.count("policy.loaded") == 2
