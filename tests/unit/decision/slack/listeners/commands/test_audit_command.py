"""bot/decision/slack/listeners/commands/audit.py: `/jit audit …` — auditors and approvers only;
every read is itself audited, and so is every refused one."""

from __future__ import annotations

from unit_support import ask, block_text

from bot.decision.slack.listeners.commands import audit
from bot.decision.slack.views.audit_view import REFUSED


def read_events(rt, name: str) -> list[dict]:
    return [e.body for e in rt.audit.entries() if e.body["event"] == name]


def test_someone_who_is_neither_auditor_nor_approver_is_refused_and_it_is_audited(rt):
    ask(rt)
    blocks = audit.answer(rt, "U0STRANGER", "20")
    assert block_text(blocks) == REFUSED
    (refused,) = read_events(rt, "audit.read_refused")
    assert refused["actor"] == "U0STRANGER" and refused["details"]["args"] == "20"
    assert read_events(rt, "audit.read") == []


def test_an_approver_reads_the_trail_and_the_read_is_recorded(rt):
    rid = ask(rt)
    text = block_text(audit.answer(rt, "U0LEAD1", ""))
    assert rid in text and "request.created" in text
    (read,) = read_events(rt, "audit.read")
    assert read["actor"] == "U0LEAD1" and read["details"]["returned"] >= 1


def test_an_auditor_in_a_group_reads_one_request(rt):
    mine, other = ask(rt), ask(rt)
    rt.decisions.approve(mine, "U0LEAD1")
    text = block_text(audit.answer(rt, "U0AUDITOR", mine))  # in S0SECURITY
    assert mine in text and "approval.given" in text and other not in text


def test_a_query_it_cannot_read_shows_the_usage(rt):
    text = block_text(audit.answer(rt, "U0LEAD1", "since:soon"))
    assert "`since:` takes a duration" in text and "Usage: `/jit audit" in text
