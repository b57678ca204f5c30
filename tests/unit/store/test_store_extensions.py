"""bot/store/requests.py, extensions: the expiry and the scheduled revocation move together, only
later, within max_total; an approval round; the re-issued credential — against a real Redis."""

from __future__ import annotations

import pytest

from bot.core.model import Status
from bot.store import keys
from bot.store.due import DueQueue

MIN = 60_000
HOUR = 60 * MIN


def active(bare, rid="req1"):
    bare.in_status(Status.ACTIVE, rid)
    return int(bare.hash(rid)["expires_ms"])


def extend(bare, old, add=10 * MIN, max_total=HOUR, t=None, rid="req1"):
    return bare.store.extend(
        rid, old, add, max_total, "pipeline:web-ci", t or bare.t0 + 2000, bare.event("grant.extended")
    )


def test_an_extension_moves_expiry_and_revocation_together_and_rearms_the_warning(bare):
    old = active(bare)
    DueQueue(bare.r).schedule("warn:req1", old - 5 * MIN)
    bare.store.set_fields("req1", warned_ms="123")
    out = extend(bare, old)
    assert (out.result, out.count) == ("ok", old + 10 * MIN)
    assert int(bare.hash()["expires_ms"]) == old + 10 * MIN
    due = bare.due()
    assert due["expire:req1"] == old + 10 * MIN  # one member, at the new end: never both
    assert "warn:req1" not in due and "warned_ms" not in bare.hash()  # owed again (the slack: job re-arms it)
    assert set(bare.kicks.members) == {"reissue:req1", "slack:req1"}
    assert bare.events() == ["grant.extended"]
    assert bare.hash()["extensions"] == "1" and bare.hash()["extended_by"] == "pipeline:web-ci"


@pytest.mark.parametrize("start", [s for s in Status if s != Status.ACTIVE])
def test_only_an_active_grant_is_extended(bare, start):
    bare.in_status(start)
    before = bare.snapshot()
    out = extend(bare, 0)
    assert out.result == "not_active" and out.status == start.value
    assert bare.snapshot() == before and bare.kicks.calls == [] and bare.outbox() == []


def test_refusals_change_nothing(bare):
    old = active(bare)
    before = bare.snapshot()
    assert extend(bare, old - 1).result == "stale"  # the expiry moved since the caller read it
    assert extend(bare, old, add=HOUR).result == "over"  # past max_total from the grant's start
    assert extend(bare, old, add=0).result == "invalid"  # an extension only ever adds time
    assert extend(bare, old, t=old).result == "not_active"  # its time is up: expiry wins
    assert extend(bare, old, rid="nosuch").result == "missing"
    assert bare.snapshot() == before and bare.kicks.calls == [] and bare.outbox() == []


def test_an_approval_round_applies_on_the_last_distinct_approval(bare):
    old = active(bare)
    ask = bare.store.extend_ask(
        "req1", old, 10 * MIN, HOUR, "pipeline:web-ci", "slow", 2, "r1", bare.t0 + 2000, bare.event("asked")
    )
    assert (ask.result, ask.status) == ("ok", "r1")
    assert int(bare.hash()["expires_ms"]) == old and bare.due()["expire:req1"] == old  # nothing moves yet
    again = bare.store.extend_ask("req1", old, 10 * MIN, HOUR, "x", "", 2, "r2", bare.t0 + 2000, bare.event("asked"))
    assert (again.result, again.status) == ("open", "r1")
    other = bare.store.extend_ask("req1", old, 20 * MIN, HOUR, "x", "", 2, "r3", bare.t0 + 2000, bare.event("asked"))
    assert other.result == "busy"

    def approve(user, round_id="r1", expect_old=old):
        return bare.store.extend_approve(
            "req1",
            expect_old,
            HOUR,
            user,
            round_id,
            bare.t0 + 3000,
            given=bare.event("given"),
            extended=bare.event("ext"),
        )

    assert approve("U0LEAD1", round_id="r0").result == "stale"
    assert (approve("U0LEAD1").result, approve("U0LEAD1").result) == ("recorded", "duplicate")
    assert int(bare.hash()["expires_ms"]) == old
    done = approve("U0LEAD2")
    assert (done.result, done.count) == ("approved", 2)
    assert int(bare.hash()["expires_ms"]) == old + 10 * MIN and bare.due()["expire:req1"] == old + 10 * MIN
    assert "ext_round" not in bare.hash() and not bare.r.exists(keys.extension_approvals("req1"))
    assert bare.hash()["extended_by"] == "pipeline:web-ci"
    assert approve("U0LEAD3", expect_old=old + 10 * MIN).result == "no_round"


def test_a_reissued_credential_is_kept_only_for_the_current_window(bare):
    old = active(bare)
    assert bare.store.reissued("req1", old - 1, "older", bare.t0 + 2000, bare.event("r")).result == "stale"
    assert bare.r.get(keys.credential("req1")) == "sealed-credential"
    assert bare.store.reissued("req1", old, "newer", bare.t0 + 2000, bare.event("credential.reissued")).ok
    assert bare.r.get(keys.credential("req1")) == "newer"
    bare.store.revoke("req1", "U0LEAD1", bare.t0 + 3000, bare.event("grant.revoke_requested"))
    assert bare.store.reissued("req1", old, "late", bare.t0 + 4000, bare.event("r")).result == "decided"
    assert bare.r.get(keys.credential("req1")) == "newer"
