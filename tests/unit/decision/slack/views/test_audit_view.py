"""bot/decision/slack/views/audit_view.py: the `/jit audit` query language and what a filtered
answer says about itself (test_slack_rendering.py covers hostile text in the entries)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from unit_support import block_text

from bot.decision.slack.views.audit_view import MAX_N, AuditQuery, QueryError, audit_blocks, parse_query


def test_every_filter_reads():
    q = parse_query("5 <@U0LEAD1|boss> action:deploy-prod since:2h break-glass 0123456789abcdef")
    assert q == AuditQuery(
        n=5,
        request_id="0123456789abcdef",
        actor="U0LEAD1",
        action="deploy-prod",
        since=timedelta(hours=2),
        break_glass=True,
    )
    assert parse_query("@U0LEAD2").actor == "U0LEAD2" and parse_query("U0LEAD2").actor == "U0LEAD2"
    assert parse_query("") == AuditQuery()


def test_a_count_over_the_max_is_clamped_and_says_so():
    q = parse_query("999")
    assert (q.n, q.clamped) == (MAX_N, True)
    assert parse_query("0").n == 1
    title = block_text(audit_blocks(q, [{"event": "x", "time": ""}], {}, False, 10))
    assert f"(at most {MAX_N} at a time)" in title


@pytest.mark.parametrize(
    "args, says",
    [
        ("action:", "`action:` needs an action name"),
        ("since:soon", "`since:` takes a duration"),
        ("@bob", "I can't tell who `@bob` is"),
        ("what?", "I don't understand `what?`"),
    ],
)
def test_what_it_cannot_read_is_named(args, says):
    with pytest.raises(QueryError, match="^" + says.replace("?", r"\?")):
        parse_query(args)


BODY = {
    "request_id": "0123456789abcdef",
    "actor": "U0LEAD1",
    "action": "deploy-prod",
    "details": {"break_glass": True},
}


@pytest.mark.parametrize(
    "q",
    [
        AuditQuery(request_id="fedcba9876543210"),
        AuditQuery(actor="U0LEAD2"),
        AuditQuery(action="read-secret"),
    ],
)
def test_each_filter_drops_what_does_not_match(q):
    assert AuditQuery().matches(BODY)
    assert not q.matches(BODY)


def test_break_glass_matches_only_a_break_glass_entry():
    q = AuditQuery(break_glass=True)
    assert q.matches(BODY)
    assert not q.matches({**BODY, "details": {"break_glass": "true"}}), "only jit's own boolean"
    assert not q.matches({**BODY, "details": {}}) and not q.matches({"event": "x"})


def test_an_empty_filtered_answer_says_what_was_searched_for():
    q = parse_query("@U0LEAD1 action:deploy-prod since:90m break-glass")
    assert block_text(audit_blocks(q, [], {}, False, 10)) == (
        "No audit events matching by <@U0LEAD1>, action `deploy-prod`, since 1h 30m ago, break-glass only."
    )


def test_a_search_cut_short_says_so_and_shows_the_chain_head():
    blocks = audit_blocks(AuditQuery(), [{"event": "x", "time": ""}], {"seq": "7", "hash": "ab" * 32}, True, 20_000)
    text = block_text(blocks)
    assert "searched the latest 20,000 events only" in text
    assert "chain head #7 `abababababababab`" in text
