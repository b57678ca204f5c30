"""App Home: a live dashboard — what waits for the viewer, what is live, and for auditors the trail."""

from __future__ import annotations

import json
import time

from fakes.slack import app_home_opened, block_action
from support import OTHER_TOKEN

MAX_HOME_BLOCKS = 100


def open_home(jit, user: str, tab: str = "home"):
    resp = jit.post_slack(app_home_opened(user, tab=tab))
    assert resp.status_code == 200
    jit.work()  # a worker publishes the view


def wait_home(slack, user: str, predicate=lambda view: True, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = slack.home(user)
        if view is not None and predicate(view):
            return view
        time.sleep(0.05)
    raise AssertionError(f"App Home for {user} never matched; last: {json.dumps(view)[:2000]}")


def text_of(view: dict) -> str:
    out = []
    for b in view["blocks"]:
        out.append((b.get("text") or {}).get("text", ""))
        out += [el.get("text", "") for el in b.get("elements", []) if isinstance(el.get("text"), str)]
    return "\n".join(out)


def buttons(view: dict) -> list[tuple[str, str]]:
    found = []
    for b in view["blocks"]:
        for el in b.get("elements", []) + ([b["accessory"]] if "accessory" in b else []):
            if el.get("type") == "button":
                found.append((el["action_id"], el["value"]))
    return found


def test_an_approver_sees_what_waits_for_them_with_buttons(jit, slack):
    waiting = jit.ask("deploy-prod", reason="release 5.0")["id"]
    mine = jit.ask("deploy-prod", reason="my own", requested_by="alice@example.com")["id"]
    done_by_me = jit.ask("deploy-prod", reason="already approved")["id"]
    jit.rt.decisions.approve(done_by_me, "U0ALICE")
    not_mine = jit.ask("read-secret", token=OTHER_TOKEN, reason="other team")["id"]
    active = jit.ask("read-secret", reason="live one")["id"]
    jit.rt.decisions.approve(active, "U0LEAD1")
    jit.work()

    open_home(jit, "U0ALICE")
    view = wait_home(slack, "U0ALICE")
    assert view["type"] == "home" and len(view["blocks"]) <= MAX_HOME_BLOCKS
    text = text_of(view)
    assert "release 5.0" in text and "other team" in text  # U0ALICE approves both actions
    assert "my own" not in text and "already approved" not in text.split("Active grants")[0]
    assert ("jit_approve", waiting) in buttons(view) and ("jit_deny", waiting) in buttons(view)
    assert ("jit_approve", not_mine) in buttons(view)
    assert all(rid not in (mine, done_by_me) for a, rid in buttons(view) if a == "jit_approve")
    assert "live one" not in text  # active grants are listed by id, action and time left
    active_block = next(b for b in view["blocks"] if active in (b.get("text") or {}).get("text", ""))
    assert "left" in active_block["text"]["text"] and active_block["accessory"]["action_id"] == "jit_revoke"
    assert "Audit trail" not in text  # not an auditor


def test_approving_from_home_counts_and_refreshes_home(jit, slack):
    rid = jit.ask("read-secret", reason="from home")["id"]
    jit.work()
    open_home(jit, "U0LEAD1")
    view = wait_home(slack, "U0LEAD1", lambda v: ("jit_approve", rid) in buttons(v))

    resp = jit.post_slack(block_action("jit_approve", rid, "U0LEAD1", view=view))
    assert resp.status_code == 200
    deadline = time.monotonic() + 30
    while jit.rt.store.get(rid).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    jit.work()
    assert jit.rt.store.get(rid).status == "active"
    view = wait_home(slack, "U0LEAD1", lambda v: ("jit_approve", rid) not in buttons(v))
    assert ("jit_revoke", rid) in buttons(view)


def test_a_stranger_sees_nothing_to_approve_and_no_trail(jit, slack):
    jit.ask("deploy-prod")
    open_home(jit, "U0STRANGER")
    view = wait_home(slack, "U0STRANGER")
    text = text_of(view)
    assert "Nothing is waiting for your approval" in text and "Audit trail" not in text
    assert not [b for b in buttons(view) if b[0] in ("jit_approve", "jit_deny", "jit_revoke")]


def test_an_auditor_sees_the_latest_events_and_the_chain_head(jit, slack):
    rid = jit.ask("deploy-prod", reason="audit me")["id"]
    jit.work()  # the request's message is posted: clicks come from it
    jit.approve_and_wait(rid, "U0STRANGER")
    jit.work()
    open_home(jit, "U0AUDITOR")  # a member of the S0SECURITY auditors group
    view = wait_home(slack, "U0AUDITOR")
    text = text_of(view)
    head = jit.rt.audit.head()
    assert "Audit trail" in text and f"#{head['seq']}" in text and head["hash"] in text
    assert "request.created" in text and "approval.refused" in text and rid in text
    assert "Nothing is waiting for your approval" in text  # auditors do not approve


def test_home_is_republished_for_recent_viewers_when_a_request_changes(jit, slack):
    open_home(jit, "U0LEAD1")
    wait_home(slack, "U0LEAD1", lambda v: "Nothing is waiting" in text_of(v))
    publishes = len(slack.calls("views.publish"))
    rid = jit.ask("read-secret", reason="fresh one")["id"]
    jit.work()  # the request's message is posted, and open Home tabs are refreshed
    view = wait_home(slack, "U0LEAD1", lambda v: ("jit_approve", rid) in buttons(v))
    assert "fresh one" in text_of(view)
    assert len(slack.calls("views.publish")) > publishes
    # people who never opened Home get nothing published
    assert slack.home("U0ALICE") is None
    assert all(c.params["user_id"] == "U0LEAD1" for c in slack.calls("views.publish"))


def test_the_messages_tab_publishes_nothing(jit, slack):
    open_home(jit, "U0LEAD1", tab="messages")
    jit.ask("read-secret")
    jit.work()
    # the assertion is on absence: give a wrongly started publish the chance to show
    time.sleep(0.5)
    assert slack.calls("views.publish") == []


def test_home_stays_inside_slacks_block_limit_with_many_requests(jit, slack):
    for i in range(60):
        jit.ask("read-secret", reason=f"busy {i}")
    active = [jit.ask("deploy-prod", reason=f"grant {i}")["id"] for i in range(25)]
    for rid in active:
        jit.rt.decisions.approve(rid, "U0LEAD1")
        jit.rt.decisions.approve(rid, "U0LEAD2")
    jit.work()
    open_home(jit, "U0ALICE")
    view = wait_home(slack, "U0ALICE")
    assert len(view["blocks"]) <= MAX_HOME_BLOCKS
    text = text_of(view)
    assert "…and 40 more waiting for you" in text and "…and 10 more active grants" in text
    assert "busy 59" in text and "busy 0\n" not in text
    for b in view["blocks"]:
        assert len((b.get("text") or {}).get("text", "")) <= 3000
