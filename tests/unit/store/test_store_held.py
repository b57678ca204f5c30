"""bot/store/requests.py: a pipeline's held grants — an active grant joins the set in the same step
that makes it active; the ones that ended leave it when it is read."""

from __future__ import annotations

from bot.core.model import Status
from bot.store import keys

HELD = keys.held_grants("web-ci", "deploy-prod")


def grant(bare, rid: str, held: str = HELD):
    bare.create(rid)
    t = bare.t0 + 1000
    assert bare.approve(rid, "U0LEAD1", t).result == "approved"
    token = bare.kicks.token(f"grant:{rid}")
    assert bare.store.begin_grant(rid, token, t).result == "ok"
    return bare.store.finish_grant(
        rid, token, t, t + 60_000, "blob", t, issued=bare.event("grant.issued"), late=bare.event("late"), held=held
    )


def test_an_active_grant_is_held_until_it_ends(bare):
    assert grant(bare, "req1").ok and grant(bare, "req2").ok
    assert bare.r.smembers(HELD) == {"req1", "req2"}
    assert 0 < bare.r.ttl(HELD) <= 3600
    assert sorted(r.id for r in bare.store.active_for("web-ci", "deploy-prod")) == ["req1", "req2"]
    bare.store.revoke("req1", "U0LEAD1", bare.t0 + 2000, bare.event("grant.revoke_requested"))
    assert [r.id for r in bare.store.active_for("web-ci", "deploy-prod")] == ["req2"]
    assert bare.r.smembers(HELD) == {"req2"}  # pruned when read
    assert bare.store.active_for("other-ci", "deploy-prod") == []


def test_without_a_held_key_nothing_is_indexed(bare):
    assert grant(bare, "req1", held="").ok
    assert bare.status("req1") == Status.ACTIVE
    assert not bare.r.exists(HELD)
