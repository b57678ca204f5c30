"""bot/decision/slack/listeners/commands/status.py: `/jit status [id]` shows only what the asker
may see — its approvers, auditors and requester — and audits a refused look."""

from __future__ import annotations

from unit_support import ask, block_text

from bot.decision.slack.listeners.commands import status


def test_the_overview_lists_only_requests_the_asker_may_see(rt):
    prod = ask(rt, "deploy-prod", reason="release 4.2")
    secret = ask(rt, "read-secret", reason="rotate the key")  # approvers U0LEAD1, U0ALICE
    lead2 = block_text(status.answer(rt, "U0LEAD2", "")["blocks"])
    assert prod in lead2 and secret not in lead2
    auditor = block_text(status.answer(rt, "U0AUDITOR2", "")["blocks"])
    assert prod in auditor and secret in auditor
    stranger = block_text(status.answer(rt, "U0STRANGER", "")["blocks"])
    assert prod not in stranger and "Nothing pending" in stranger


def test_one_request_in_full_with_its_history(rt):
    rid = ask(rt)
    rt.decisions.approve(rid, "U0LEAD1")
    text = block_text(status.answer(rt, "U0LEAD2", rid)["blocks"])
    assert rid in text and "release 4.2" in text
    assert "`approval.given`" in text and "<@U0LEAD1>" in text, "its history, from the audit trail"
    assert "1 of 2" in text


def test_a_stranger_is_refused_one_request_and_the_refusal_is_audited(rt):
    rid = ask(rt)
    answer = status.answer(rt, "U0STRANGER", rid)
    assert answer == {"text": "Only this request's approvers, auditors and requester can see it."}
    refused = [e.body for e in rt.audit.entries_for_request(rid) if e.body["event"] == "status.refused"]
    assert refused and refused[0]["actor"] == "U0STRANGER"


def test_the_requester_may_see_their_own_request(rt, repolicy):
    repolicy(rt, ("  alice: U0ALICE\n", "  alice: U0ALICE\n  bob: U0BOB\n"))
    rid = ask(rt, "read-secret", requested_by="bob")  # U0BOB approves nothing
    assert rid in block_text(status.answer(rt, "U0BOB", rid)["blocks"])
    assert "blocks" not in status.answer(rt, "U0CAROL", rid)


def test_an_unknown_request_reads_as_not_found(rt):
    assert "No request `0123456789abcdef`" in block_text(status.answer(rt, "U0LEAD1", "0123456789abcdef")["blocks"])
