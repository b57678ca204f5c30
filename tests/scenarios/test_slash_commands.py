"""`/jit …` slash commands, sent signed in Slack's form format, answered in the ack body."""

from __future__ import annotations

import json

import pytest
from fakes.slack import slash_command
from freezegun import freeze_time
from support import OTHER_TOKEN

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000


def slash(jit, text: str, user: str) -> dict:
    resp = jit.post_slack(slash_command(text, user))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["response_type"] == "ephemeral"
    within_slack_limits(body)
    return body


def within_slack_limits(body: dict) -> None:
    blocks = body.get("blocks") or []
    assert len(blocks) <= MAX_BLOCKS
    for b in blocks:
        assert len((b.get("text") or {}).get("text", "")) <= MAX_SECTION_TEXT
        for el in b.get("elements", []):
            assert len(el.get("text", "")) <= MAX_SECTION_TEXT


def text_of(body: dict) -> str:
    parts = [body.get("text", "")]
    for b in body.get("blocks") or []:
        parts.append((b.get("text") or {}).get("text", ""))
        parts += [el.get("text", "") for el in b.get("elements", []) if isinstance(el.get("text"), str)]
    return "\n".join(parts)


def audit_events(rt, name: str) -> list[dict]:
    return [e.body for e in rt.audit.entries() if e.body["event"] == name]


def make_active(jit, n: int = 1, reason: str = "read it") -> list[str]:
    ids = [jit.ask("read-secret", reason=f"{reason} {i}")["id"] for i in range(n)]
    for rid in ids:
        jit.rt.decisions.approve(rid, "U0LEAD1")
    jit.work()
    assert all(jit.rt.store.get(rid).status == "active" for rid in ids)
    return ids


# ------------------------------------------------------------------------- help


@pytest.mark.parametrize("text", ["help", "", "frobnicate now"])
def test_help_and_unknown_subcommands_get_the_usage(jit, text):
    body = slash(jit, text, "U0STRANGER")
    assert "/jit status" in body["text"] and "/jit audit" in body["text"] and "/jit revoke" in body["text"]
    if text.startswith("frob"):
        assert "frobnicate" in body["text"]


# ------------------------------------------------------------------------- status


def test_status_lists_pending_and_active_newest_first(jit):
    older = jit.ask("deploy-prod", reason="release 4.1")["id"]
    newer = jit.ask("deploy-prod", reason="release <4.2> & more")["id"]
    jit.rt.decisions.approve(newer, "U0LEAD1")
    [active] = make_active(jit)

    # someone with no part in these requests sees none of them (defaults.status_visibility)
    assert "Nothing pending" in text_of(slash(jit, "status", "U0STRANGER"))
    body = slash(jit, "status", "U0LEAD1")  # an approver of both actions
    text = text_of(body)
    assert "*Pending* (2)" in text and "*Active grants* (1)" in text
    assert text.index(newer) < text.index(older)
    line = next(b["text"]["text"] for b in body["blocks"] if newer in b.get("text", {}).get("text", ""))
    for needle in (
        "deploy-prod",
        "web-ci",
        "1 of 2 approvals",
        "ago",
        "release &lt;4.2&gt; &amp; more",
    ):
        assert needle in line, needle
    active_line = next(b["text"]["text"] for b in body["blocks"] if active in b.get("text", {}).get("text", ""))
    assert "read-secret" in active_line and "left" in active_line


def test_status_with_nothing_open(jit):
    assert "Nothing pending" in text_of(slash(jit, "status", "U0LEAD1"))


def test_status_caps_long_lists_and_counts_the_rest(jit):
    for i in range(45):
        jit.ask("deploy-prod", reason=f"release {i} " + "x" * 450)
    make_active(jit, 27)
    body = slash(jit, "status", "U0LEAD1")
    text = text_of(body)
    assert "*Pending* (45)" in text and "*Active grants* (27)" in text
    assert "…and 25 more pending" in text and "…and 7 more active" in text
    assert "release 44" in text and "release 0 " not in text  # newest first, the oldest cut


def test_status_of_one_request_in_full_with_its_history(jit):
    rid = jit.ask("deploy-prod", reason="release 4.3", context={"repository": "acme/web"})["id"]
    jit.work()
    jit.approve_and_wait(rid, "U0STRANGER")
    jit.approve_and_wait(rid, "U0LEAD1")
    jit.work()
    body = slash(jit, f"status {rid}", "U0LEAD2")
    text = text_of(body)
    for needle in (
        rid,
        "deploy-prod",
        "web-ci",
        "release 4.3",
        "acme/web",
        "1 of 2",
        "<@U0LEAD1>",
        "Waiting for approval",
        "*History*",
    ):
        assert needle in text, needle
    history = text[text.index("*History*") :]
    assert history.index("request.created") < history.index("approval.refused") < history.index("approval.given")
    assert "not an approver" in history


def test_status_of_an_unknown_request(jit):
    text = text_of(slash(jit, "status nosuchrequest0", "U0LEAD1"))
    assert "No request `nosuchrequest0`" in text
    text = text_of(slash(jit, "status <!channel>", "U0LEAD1"))
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text


def test_status_of_a_request_with_a_long_history_stays_inside_slack_limits(jit):
    rid = jit.ask("deploy-prod")["id"]
    for i in range(150):
        jit.rt.audit.append(
            "approval.refused",
            request_id=rid,
            action="deploy-prod",
            actor=f"U0SPAM{i:03d}",
            outcome="refused",
            details={"why": "not an approver " + "y" * 200},
        )
    body = slash(jit, f"status {rid}", "U0LEAD1")
    text = text_of(body)
    assert "latest 60" in text and "U0SPAM149" in text and "U0SPAM089" not in text


# ------------------------------------------------------------------------- revoke


def test_revoke_by_an_approver_ends_the_grant(jit, slack):
    [rid] = make_active(jit)
    body = slash(jit, f"revoke {rid}", "U0ALICE")
    assert rid in body["text"] and "Revoking" in body["text"]
    jit.work()
    assert jit.rt.store.get(rid).status == "revoked"
    assert jit.credential(rid).status_code == 410
    revoked = audit_events(jit.rt, "grant.revoked")
    assert revoked and revoked[-1]["actor"] == "U0ALICE"


def test_revoke_refusals(jit):
    [rid] = make_active(jit)
    body = slash(jit, f"revoke {rid}", "U0STRANGER")
    assert "not an approver" in body["text"]
    assert jit.rt.store.get(rid).status == "active"
    assert audit_events(jit.rt, "revoke.refused")[-1]["actor"] == "U0STRANGER"
    assert "Usage" in slash(jit, "revoke", "U0LEAD1")["text"]
    assert "no longer exists" in slash(jit, "revoke 0000000000000000", "U0LEAD1")["text"]
    # another pipeline: web-ci asking read-secret again would get its active grant back
    pending = jit.ask("read-secret", token=OTHER_TOKEN)["id"]
    assert (
        "Only an active grant can be revoked; this request is pending."
        in slash(jit, f"revoke {pending}", "U0LEAD1")["text"]
    )


# ------------------------------------------------------------------------- audit


def test_audit_is_refused_politely_to_others_and_the_refusal_is_audited(jit):
    jit.ask("deploy-prod")
    body = slash(jit, "audit 5", "U0STRANGER")
    text = text_of(body)
    assert "only auditors and approvers" in text and "request.created" not in text
    refused = audit_events(jit.rt, "audit.read_refused")
    assert len(refused) == 1 and refused[0]["actor"] == "U0STRANGER" and refused[0]["outcome"] == "refused"
    assert refused[0]["details"]["args"] == "5"


@pytest.mark.parametrize("reader", ["U0AUDITOR", "U0AUDITOR2", "U0LEAD2", "U0LEAD3"])
def test_auditors_and_approvers_read_the_trail(jit, reader):
    rid = jit.ask("deploy-prod")["id"]
    text = text_of(slash(jit, "audit", reader))
    assert "request.created" in text and rid in text and "chain head" in text
    assert audit_events(jit.rt, "audit.read")[-1]["actor"] == reader


def test_audit_count_defaults_to_20_and_caps_at_100(jit):
    for i in range(150):
        jit.rt.audit.append("test.event", actor="jit", details={"reason": f"event-{i:03d} " + "z" * 100})
    text = text_of(slash(jit, "audit", "U0AUDITOR"))
    assert "20 events" in text and "event-149" in text and "event-130" in text and "event-129" not in text
    # each read is itself recorded (audit.read), and shows in the next read
    text = text_of(slash(jit, "audit 5", "U0AUDITOR"))
    assert "5 events" in text and text.count("`audit.read`") == 1
    assert "event-146" in text and "event-145" not in text
    text = text_of(slash(jit, "audit 500", "U0AUDITOR"))
    assert "100 events" in text and "at most 100" in text and text.count("`audit.read`") == 2
    assert "event-052" in text and "event-051" not in text


def test_audit_filters(jit):
    rt = jit.rt
    with freeze_time("2020-06-01T00:00:00Z"):
        rt.audit.append("test.ancient", request_id="aaaa0000aaaa0000", action="read-secret", actor="U0LEAD1")
    one = jit.ask("deploy-prod")["id"]
    two = jit.ask("read-secret")["id"]
    rt.decisions.approve(two, "U0LEAD1")
    jit.approve_and_wait(one, "U0STRANGER")
    rt.audit.append(
        "test.override",
        request_id=two,
        action="read-secret",
        actor="U0LEAD2",
        details={"break_glass": True, "reason": "site down"},
    )
    rt.audit.append("test.not_override", actor="U0LEAD2", details={"break_glass": "yes"})

    def events_for(args: str) -> list[str]:
        body = slash(jit, f"audit {args}", "U0AUDITOR")
        lines = [line for line in text_of(body).splitlines() if line.startswith("`20")]
        return [line.split("`")[3] for line in lines]  # `time` `event` …

    assert events_for(one) == ["approval.refused", "request.created"]
    assert set(events_for("<@U0LEAD1|lead1>")) == {
        "request.approved",
        "approval.given",
        "test.ancient",
    }
    assert set(events_for("<@U0LEAD1>")) == set(events_for("<@U0LEAD1|lead1>"))
    assert events_for("action:read-secret")[:2] == ["test.override", "request.approved"]
    assert "test.ancient" in events_for("action:read-secret")
    assert "test.ancient" not in events_for("action:read-secret since:2h")
    assert events_for("break-glass") == ["test.override"]
    assert events_for(f"break-glass {two} <@U0LEAD2>") == ["test.override"]
    assert events_for(f"{two} 1") == ["test.override"]
    assert events_for("<@U0NOBODY>") == []
    assert "No audit events matching by <@U0NOBODY>" in text_of(slash(jit, "audit <@U0NOBODY>", "U0AUDITOR"))


@pytest.mark.parametrize(
    "args, says",
    [
        ("since:soon", "`since:` takes a duration"),
        ("action:", "`action:` needs"),
        ("@alice", "pick the person"),
        ("what?!", "I don't understand"),
    ],
)
def test_audit_filter_mistakes_get_a_hint(jit, args, says):
    text = text_of(slash(jit, f"audit {args}", "U0AUDITOR"))
    assert says in text and "Usage" in text


def test_audit_answers_stay_inside_slack_limits_for_long_events(jit):
    for i in range(100):
        jit.rt.audit.append(
            "test.event",
            request_id=f"r{i:05d}x",
            action="deploy-prod",
            actor="pipeline:" + "p" * 300,
            details={"why": "<!channel> " + "w" * 500, "reason": "r" * 500, "error": "e" * 500},
        )
    body = slash(jit, "audit 100", "U0AUDITOR")
    text = text_of(body)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert text.count("`test.event`") == 100 and "more not shown" not in text
    assert json.dumps(body).count("r00099x") == 1


def test_what_does_not_fit_is_summarised_not_cut():
    from bot.decision.slack.views.audit_view import chunk_lines

    lines = [f"line {i:03d} " + "q" * 990 for i in range(200)]  # ~200 000 characters
    blocks = chunk_lines(lines, 48)
    assert len(blocks) == 48
    assert all(len(b["text"]["text"]) <= MAX_SECTION_TEXT for b in blocks)
    shown = sum(b["text"]["text"].count("line ") for b in blocks[:-1])
    assert blocks[-1]["text"]["text"] == f"…and {200 - shown} more not shown."
    assert "line 000" in blocks[0]["text"]["text"] and f"line {shown - 1:03d}" in blocks[-2]["text"]["text"]
