"""Break glass: one named approver, alone, with a written justification; security hears at once."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from fakes.slack import view_submission
from policy_rules_support import EXEC_GRANT, entries, rules_policy_text
from support import WEB_TOKEN

from bot.core import errors as E
from bot.core.errors import BreakGlassOnly, NotBreakGlassApprover
from bot.decision.slack.views.blocks import (
    BREAK_GLASS,
    JUSTIFICATION_BLOCK,
    JUSTIFICATION_INPUT,
    request_blocks,
)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def closed_now() -> str:
    """A window that is closed now and for the whole test: one hour, three days from today."""
    return f"{DAYS[(datetime.now(UTC).weekday() + 3) % 7]} 10:00-11:00 UTC"


@pytest.fixture
def rules(policy_file, state_dir):
    text = rules_policy_text(str(state_dir)).replace("deploy-env, change-db]", "deploy-env, change-db, hotfix]")
    policy_file.write_text(
        text
        + f"""  hotfix:
    description: Patch production by hand
    windows: ["{closed_now()}"]
    approvers: [U0LEAD1, U0LEAD2]
    approvals_required: 2
    ttl: {{default: 1h, max: 2h}}
"""
        + EXEC_GRANT
    )
    return policy_file


def ask(jit, action="deploy-prod", **body):
    """deploy-prod: no windows, two approvals; asked for 1h (the break-glass max is 10m)."""
    body = {"action": action, "reason": "db is down", "ttl": "1h", **body}
    return jit.ask(token=WEB_TOKEN, **body)["id"]


def until(check, what: str, jit=None, timeout: float = 20.0):
    """Poll (running due jobs when given the harness) until `check()` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if jit is not None:
            jit.work()
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def open_modal(jit, slack, rid, user):
    trigger = f"{int(time.time())}.{rid}.trigger"
    resp = jit.click(BREAK_GLASS, rid, user, trigger_id=trigger, button_text="Break glass")
    assert resp.status_code == 200
    call = slack.wait_for(lambda c: c.method == "views.open" and c.params["trigger_id"] == trigger, timeout=15)
    return call.params["view"]


def submit(jit, view, user, text):
    values = {JUSTIFICATION_BLOCK: {JUSTIFICATION_INPUT: text}}
    return jit.post_slack(view_submission(view["callback_id"], view["private_metadata"], values, user))


def test_break_glass_approves_alone_cuts_the_ttl_and_alerts_security(rules, jit, slack):
    rid = ask(jit)  # ttl 1h, two approvals required
    jit.work()
    view = open_modal(jit, slack, rid, "U0ONCALL")
    assert view["title"]["text"] == "Break glass" and "10m" in json.dumps(view["blocks"])

    short = submit(jit, view, "U0ONCALL", "  urgent ")
    assert short.status_code == 200 and short.get_json()["response_action"] == "errors"
    assert "justification" in short.get_json()["errors"][JUSTIFICATION_BLOCK]
    assert jit.status(rid).get_json()["status"] == "pending"

    why = "INC-4711: primary database is down, restoring from snapshot"
    ok = submit(jit, view, "U0ONCALL", why)
    assert ok.status_code == 200 and not ok.data  # plain ack closes the modal

    body = until(lambda: (b := jit.status(rid).get_json())["status"] == "active" and b, "active", jit)
    assert body["ttl"] == 600  # cut from 1h to break_glass.max_ttl
    assert body["decided_by"] == "U0ONCALL" and body["approvals"]["count"] == 1
    assert len(jit.grants(rid)) == 1

    alert = slack.wait_for(lambda c: c.method == "chat.postMessage" and c.params["channel"] == "C0SECURITY")
    text = alert.params["text"]
    assert "Break glass" in text and "<@U0ONCALL>" in text and why in text and rid in text
    assert "cut to the break-glass max" in text and "/jit audit break-glass" in text

    approved = entries(jit.rt, "request.approved", rid)
    assert len(approved) == 1
    d = approved[0]["details"]
    assert d["break_glass"] is True and d["follow_up_review"] is True
    assert d["justification"] == why and d["ttl_seconds"] == 600 and d["requested_ttl_seconds"] == 3600
    # what `/jit audit break-glass` lists: entries whose details carry break_glass: true
    marked = [e for e in entries(jit.rt) if e["details"].get("break_glass") is True]
    assert [e["event"] for e in marked] == ["request.approved"]

    # the channel message says who broke glass and why
    facts = jit.rt.decisions.message_facts(jit.rt.store.get(rid))
    rendered = json.dumps(request_blocks(jit.rt.store.get(rid), **facts))
    assert "Break glass" in rendered and "U0ONCALL" in rendered and "INC-4711" in rendered


def test_a_member_of_the_break_glass_group_may_break_glass(rules, jit):
    rid = ask(jit)
    out = jit.rt.decisions.break_glass(rid, "U0AUDITOR", "restore service after outage")  # via S0SECURITY
    assert out.result == "approved"


def test_an_ordinary_approver_cannot_break_glass(rules, jit, slack):
    rid = ask(jit)
    jit.work()
    assert jit.click(BREAK_GLASS, rid, "U0LEAD1", trigger_id="1.2.3", button_text="Break glass").status_code == 200
    note = until(lambda: slack.ephemerals(user="U0LEAD1"), "the refusal", jit)
    assert "not a break-glass approver" in note[0]["text"]
    assert not [c for c in slack.calls("views.open") if c.params.get("trigger_id") == "1.2.3"]
    with pytest.raises(NotBreakGlassApprover):
        jit.rt.decisions.break_glass(rid, "U0LEAD1", "I really want to do it now")
    assert jit.status(rid).get_json()["status"] == "pending"
    refused = entries(jit.rt, "break_glass.refused", rid)
    assert refused and refused[0]["details"]["why"] == "not a break-glass approver"


def test_a_justification_is_mandatory(rules, jit):
    rid = ask(jit)
    for blank in ("", "   ", "too short"):
        with pytest.raises(E.BadRequest, match="justification"):
            jit.rt.decisions.break_glass(rid, "U0ONCALL", blank)
    assert jit.status(rid).get_json()["status"] == "pending"


def test_a_break_glass_request_outside_the_window_needs_a_break_glass_approver(rules, jit, slack):
    assert jit.ask("hotfix", expect=403)["error"] == "outside_window"
    rid = ask(jit, "hotfix", break_glass=True, ttl="5m")
    jit.work()
    req = jit.rt.store.get(rid)

    # the message offers only Deny and Break glass
    blocks = request_blocks(req, **jit.rt.decisions.message_facts(req))
    buttons = [e["text"]["text"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert buttons == ["Deny", "Break glass"]
    assert "Break glass requested" in json.dumps(blocks)

    # ordinary approvers cannot approve it, not even all of them
    for lead in ("U0LEAD1", "U0LEAD2"):
        with pytest.raises(BreakGlassOnly):
            jit.rt.decisions.approve(rid, lead)
    assert jit.approve(rid, "U0LEAD1").status_code == 200
    note = until(lambda: slack.ephemerals(user="U0LEAD1"), "the refusal", jit)
    assert "only a break-glass approver" in note[0]["text"]
    assert jit.status(rid).get_json()["status"] == "pending"

    jit.rt.decisions.break_glass(rid, "U0ONCALL", "INC-99: payments outage, need schema fix")
    body = until(lambda: (b := jit.status(rid).get_json())["status"] == "active" and b, "active", jit)
    assert body["ttl"] == 300  # already under the break-glass max: unchanged
    alert = slack.wait_for(lambda c: c.method == "chat.postMessage" and c.params["channel"] == "C0SECURITY")
    assert "outside the change windows" in alert.params["text"]
    d = entries(jit.rt, "request.approved", rid)[0]["details"]
    assert d["outside_window"] is True and d["break_glass_requested"] is True


def test_ordinary_approvers_may_still_deny_a_break_glass_request(rules, jit):
    rid = ask(jit, "hotfix", break_glass=True)
    assert jit.rt.decisions.deny(rid, "U0LEAD1", "not an emergency").ok
    assert jit.status(rid).get_json()["status"] == "denied"


def test_the_alert_is_posted_once_however_often_its_job_runs(rules, jit, slack):
    from workers.jobs.notify.notices import send_break_glass_alert

    rid = ask(jit)
    jit.rt.decisions.break_glass(rid, "U0ONCALL", "restore service after outage")
    jit.work()
    send_break_glass_alert(jit.rt, rid)
    send_break_glass_alert(jit.rt, rid)
    alerts = [c for c in slack.calls("chat.postMessage") if c.params["channel"] == "C0SECURITY"]
    assert len(alerts) == 1


def test_break_glass_on_a_decided_request_is_refused(rules, jit):
    rid = ask(jit)
    jit.rt.decisions.break_glass(rid, "U0ONCALL", "restore service after outage")
    with pytest.raises(E.AlreadyDecided):
        jit.rt.decisions.break_glass(rid, "U0AUDITOR", "restore service after outage")
    assert len(entries(jit.rt, "request.approved", rid)) == 1


def test_pending_messages_offer_the_break_glass_button(rules, jit):
    rid = ask(jit)
    req = jit.rt.store.get(rid)
    blocks = request_blocks(req, **jit.rt.decisions.message_facts(req))
    buttons = [e["text"]["text"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert buttons == ["Approve", "Deny", "Break glass"]
    # an action without break glass (the common policy has none) shows no such button
    plain = request_blocks(req, "", ["U0LEAD1"])
    assert "Break glass" not in json.dumps(plain)
