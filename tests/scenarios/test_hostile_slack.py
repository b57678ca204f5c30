"""Hostile requests to the Slack endpoint: refused with 401/400, nothing changes, and audited
whenever Slack vouches for the user."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qsl, urlencode

import pytest
from fakes.slack import TEAM_ID, app_home_opened, block_action, sign, slash_command, view_submission
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_state import snapshot
from support import SIGNING_SECRET, WEB_TOKEN

# Keys a refused request may legitimately write: its own signature (replay guard), the count of
# its actor's refusals (bot/store/refusals.py: bounds how many reach the audit trail), and the
# home workspace, learned from auth.test the first time a Slack request needs it.
IGNORED = ("jit:slack:seen:", "jit:refusals:", "jit:slack:team")


def settle(jit, done, timeout: float = 30.0):
    """Run due work until `done()` holds (Slack posts are paced per channel, so poll)."""
    deadline = time.monotonic() + timeout
    while True:
        jit.work()
        if done():
            return
        assert time.monotonic() < deadline, "work did not settle"
        time.sleep(0.1)


def pending(jit, action="deploy-prod"):
    rid = jit.ask(action)["id"]
    settle(jit, lambda: jit.rt.store.get(rid).message_ts)
    return rid


def refusals(jit) -> list[dict]:
    return [e.body for e in jit.rt.audit.entries() if e.body["event"] == "slack.refused"]


class Unchanged:
    """Asserts that Redis (requests, approvals, due queue, RQ queues, audit) did not move."""

    def __init__(self, jit, audited: int = 0) -> None:
        self.jit = jit
        self.audited = audited

    def __enter__(self):
        self.before = snapshot(self.jit.rt.redis, IGNORED + ("jit:audit",))
        self.audit_len = self.jit.rt.audit.count()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        assert snapshot(self.jit.rt.redis, IGNORED + ("jit:audit",)) == self.before
        assert self.jit.rt.audit.count() == self.audit_len + self.audited
        return False


def test_forged_signature_is_401_and_changes_nothing(jit):
    rid = pending(jit)
    ts = jit.rt.store.get(rid).message_ts
    with Unchanged(jit):
        built = block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts)
        assert jit.post_slack(built, secret="not-the-signing-secret").status_code == 401
        # a valid signature over different bytes than those sent
        body, ctype = built
        headers = sign(SIGNING_SECRET, body + b"x", content_type=ctype)
        assert jit.http.post("/slack/events", data=body, headers=headers).status_code == 401
        # no signature at all
        assert jit.http.post("/slack/events", data=body, content_type=ctype).status_code == 401
    jit.work()
    assert jit.rt.store.get(rid).approvals == []


@pytest.mark.parametrize("skew", [-301, -3600, 301])
def test_stale_or_future_timestamp_is_401(jit, skew):
    rid = pending(jit)
    ts = jit.rt.store.get(rid).message_ts
    with Unchanged(jit):
        built = block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts)
        resp = jit.post_slack(built, timestamp=int(time.time()) + skew)
        assert resp.status_code == 401
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


def test_replayed_click_is_refused_and_never_counts_twice(jit):
    rid = pending(jit)  # needs two approvals, so a second count would show
    ts = jit.rt.store.get(rid).message_ts
    body, ctype = block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts)
    headers = sign(SIGNING_SECRET, body, content_type=ctype)
    assert jit.http.post("/slack/events", data=body, headers=headers).status_code == 200
    jit.work()
    assert jit.status(rid).get_json()["approvals"] == {"count": 1, "required": 2, "by": ["U0LEAD1"]}

    with Unchanged(jit, audited=1):
        replay = jit.http.post("/slack/events", data=body, headers=headers)
        assert replay.status_code == 401
    assert refusals(jit)[-1]["actor"] == "U0LEAD1"
    assert refusals(jit)[-1]["details"]["why"] == "replayed request"

    # The same click signed afresh (e.g. an attacker holding the secret, or Slack retrying):
    # accepted at the door, but the state still counts one approval per person.
    fresh = int(headers["X-Slack-Request-Timestamp"]) - 1  # another second: another signature
    assert jit.post_slack((body, ctype), timestamp=fresh).status_code == 200
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 1
    refused = [e.body for e in jit.rt.audit.entries() if e.body["event"] == "approval.refused"]
    assert refused and refused[-1]["details"]["why"] == "already approved by this user"
    assert jit.grants(rid) == []


def test_button_naming_another_request_is_400_and_audited(jit):
    a = pending(jit)
    b = pending(jit)
    ts_a = jit.rt.store.get(a).message_ts
    with Unchanged(jit, audited=1):
        built = block_action("jit_approve", b, "U0LEAD1", channel="C0PROD", message_ts=ts_a)
        assert jit.post_slack(built).status_code == 400
    last = refusals(jit)[-1]
    assert last["request_id"] == b and last["actor"] == "U0LEAD1" and last["outcome"] == "refused"
    for action_id in ("jit_deny", "jit_revoke"):
        assert jit.click(action_id, b, "U0LEAD1", message_ts=ts_a).status_code == 400
    jit.work()
    for rid in (a, b):
        assert jit.status(rid).get_json()["approvals"]["count"] == 0
        assert jit.status(rid).get_json()["status"] == "pending"
    assert jit.slack.calls("views.open") == []


@pytest.fixture
def pinned_team(request, jit_env, monkeypatch):
    """The workspace is known either from SLACK_TEAM_ID or learned from auth.test (Redis)."""
    if request.param == "setting":
        monkeypatch.setenv("SLACK_TEAM_ID", TEAM_ID)
    return request.param


@pytest.mark.parametrize("pinned_team", ["setting", "learned"], indirect=True)
def test_click_from_another_workspace_is_401_and_audited(pinned_team, jit):
    from bot.store import keys

    if pinned_team == "learned":
        jit.rt.redis.set(keys.slack_team(), TEAM_ID)
    else:
        assert jit.rt.settings.slack_team_id == TEAM_ID
    rid = pending(jit, "read-secret")
    ts = jit.rt.store.get(rid).message_ts
    with Unchanged(jit, audited=1):
        built = block_action("jit_approve", rid, "U0LEAD1", team_id="T0EVIL", channel="C0APPROVALS", message_ts=ts)
        assert jit.post_slack(built).status_code == 401
    last = refusals(jit)[-1]
    assert last["actor"] == "U0LEAD1" and last["details"] == {"why": "other workspace", "team": "T0EVIL"}
    with Unchanged(jit, audited=1):
        assert jit.post_slack(slash_command("status", "U0LEAD1", team_id="T0EVIL")).status_code == 401
    jit.work()
    assert jit.status(rid).get_json()["status"] == "pending"
    assert jit.grants(rid) == [] and jit.slack.calls("chat.postEphemeral") == []
    assert jit.slack.calls("auth.test") == []  # known already: Slack is not asked
    # the home workspace still works
    assert jit.approve(rid, "U0LEAD1").status_code == 200
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"


def test_click_from_another_workspace_is_refused_before_any_worker_learned_the_workspace(jit):
    """No SLACK_TEAM_ID and no worker has run auth.test yet: the server asks Slack itself."""
    from bot.store import keys

    rid = pending(jit, "read-secret")
    ts = jit.rt.store.get(rid).message_ts
    assert jit.rt.redis.get(keys.slack_team()) is None
    built = block_action("jit_approve", rid, "U0LEAD1", team_id="T0EVIL", channel="C0APPROVALS", message_ts=ts)
    assert jit.post_slack(built).status_code == 401
    assert refusals(jit)[-1]["details"] == {"why": "other workspace", "team": "T0EVIL"}
    assert jit.rt.redis.get(keys.slack_team()) == TEAM_ID  # learned, and kept like the worker does
    assert jit.post_slack(slash_command("status", "U0LEAD1", team_id="T0EVIL")).status_code == 401
    assert len(jit.slack.calls("auth.test")) == 1
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0
    assert jit.approve(rid, "U0LEAD1").status_code == 200  # the home workspace still works
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"


@pytest.mark.parametrize("fault", ["down", "invalid_auth"])
def test_slack_traffic_waits_with_503_while_the_workspace_cannot_be_known(jit, fault):
    from bot.store import keys

    rid = pending(jit, "read-secret")
    ts = jit.rt.store.get(rid).message_ts
    if fault == "down":
        jit.slack.fail_with(503, methods="auth.test")
    else:
        jit.slack.api_error("invalid_auth", methods="auth.test")
    home = block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
    foreign = block_action("jit_approve", rid, "U0LEAD1", team_id="T0EVIL", channel="C0APPROVALS", message_ts=ts)
    with Unchanged(jit):
        for built in (foreign, home, slash_command("status", "U0LEAD1")):
            resp = jit.post_slack(built)
            assert resp.status_code == 503, resp.data
            assert b"workspace" in resp.data
    assert jit.rt.redis.get(keys.slack_team()) is None
    # Slack retries; once auth.test answers, the same click goes through (it was not marked seen)
    jit.slack.clear_faults()
    assert jit.post_slack(home).status_code == 200
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"


def test_signed_payload_naming_no_workspace_is_refused(jit):
    rid = pending(jit, "read-secret")
    ts = jit.rt.store.get(rid).message_ts
    body, ctype = block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
    payload = json.loads(dict(parse_qsl(body.decode()))["payload"])
    payload.pop("team")
    payload["user"].pop("team_id")
    with Unchanged(jit, audited=1):
        assert jit.post_slack((urlencode({"payload": json.dumps(payload)}).encode(), ctype)).status_code == 401
    assert refusals(jit)[-1]["details"] == {"why": "no workspace"}
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


@pytest.mark.parametrize(
    "payload",
    ["{not json", "[1, 2]", '"a string"', "", "null", '{"type": "block_actions", "actions": [', "\udcff"],
)
def test_malformed_payload_is_400(jit, payload):
    rid = pending(jit)
    with Unchanged(jit):
        body = urlencode({"payload": payload}, errors="surrogateescape").encode()
        resp = jit.post_slack((body, "application/x-www-form-urlencoded"))
        assert resp.status_code == 400, resp.data
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


@pytest.mark.parametrize(
    "body,ctype", [(b"{oops", "application/json"), (b"[]", "application/json"), (b"<xml/>", "text/xml")]
)
def test_malformed_event_bodies_are_400(jit, body, ctype):
    pending(jit)
    with Unchanged(jit):
        assert jit.post_slack((body, ctype)).status_code == 400


def test_oversize_body_is_400_before_anything_else(jit):
    rid = pending(jit)
    ts = jit.rt.store.get(rid).message_ts
    body, ctype = block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts)
    big = body + b"&padding=" + b"x" * (600 * 1024)
    with Unchanged(jit):
        assert jit.post_slack((big, ctype)).status_code == 400
        assert jit.post_slack((big, ctype), secret="wrong").status_code == 400
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


# Signed payloads with a hostile structure: only Slack can send them, yet none may crash the
# endpoint or approve anything.
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
_json = st.recursive(
    _json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=10
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["block_actions", "view_submission", "shortcut", "message_action", "x"]),
    user=st.one_of(_json, st.fixed_dictionaries({"id": _json, "team_id": _json})),
    team=st.one_of(_json, st.fixed_dictionaries({"id": _json})),
    container=st.one_of(_json, st.fixed_dictionaries({"type": st.just("message"), "message_ts": _json})),
    actions=st.one_of(
        _json,
        st.lists(
            st.fixed_dictionaries(
                {"action_id": st.sampled_from(["jit_approve", "jit_deny", "jit_revoke", "other"]), "value": _json}
            ),
            max_size=2,
        ),
    ),
    view=_json,
)
def test_signed_hostile_payload_structures_never_crash(jit, kind, user, team, container, actions, view):
    if not hasattr(jit, "_fuzz_rid"):
        jit._fuzz_rid = pending(jit)
    rid = jit._fuzz_rid
    payload = {
        "type": kind,
        "user": user,
        "team": team,
        "container": container,
        "actions": actions,
        "view": view,
        "trigger_id": "1.2.3",
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    resp = jit.post_slack((body, "application/x-www-form-urlencoded"))
    assert resp.status_code < 500, (resp.status_code, payload)
    assert jit.rt.store.get(rid).approvals == []
    assert jit.rt.store.get(rid).status.value == "pending"


# ------------------------------------------------------------------------ mrkdwn injection

INJECTION = (
    "<!channel> <!here|here> <!everyone> <https://evil.example/x|click here> <@U0LEAD1> "
    "<!subteam^S0PRODLEADS> <#C0PROD> &amp;lt; "
)
LIVE_FORBIDDEN = ("<!channel", "<!here", "<!everyone", "<https://evil", "<#C0PROD", "|click here>")
#: The only live `<…>` forms jit itself writes: mentions of approvers and deciders, user groups,
#: localised dates, and the validated run URL.
OWN_TOKEN = re.compile(
    r"^(@[UW][A-Z0-9]+|!subteam\^S[A-Z0-9]+|!date\^\d+\^[^|<>]*\|[^<>]*|"
    r"https://ci\.example/run/1\|View the run on ci\.example)$"
)


def hostile(limit: int) -> str:
    text = INJECTION + "*bold* _it_ ~s~ `c` " * 200
    return text[:limit]


def texts(obj, out=None, kind=None):
    """Every mrkdwn text in a Slack payload, plus plain fallbacks (also parsed for mentions)."""
    out = [] if out is None else out
    if isinstance(obj, dict):
        if obj.get("type") == "mrkdwn" and isinstance(obj.get("text"), str):
            out.append(obj["text"])
        for k, v in obj.items():
            if k == "text" and isinstance(v, str) and obj.get("type") is None:
                out.append(v)  # chat.postMessage's top-level fallback text
            else:
                texts(v, out)
    elif isinstance(obj, list):
        for v in obj:
            texts(v, out)
    return out


def live_tokens(text: str) -> list[str]:
    return re.findall(r"<([^<>]*)>", text)


def check_limits(blocks: list[dict], max_blocks: int = 50) -> None:
    assert len(blocks) <= max_blocks
    for b in blocks:
        if b["type"] == "section":
            if "text" in b:
                assert len(b["text"]["text"]) <= 3000
            assert len(b.get("fields", [])) <= 10
            for f in b.get("fields", []):
                assert len(f["text"]) <= 2000
        elif b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
        elif b["type"] == "context":
            assert len(b["elements"]) <= 10
            for e in b["elements"]:
                assert len(e.get("text", "")) <= 3000
        elif b["type"] == "actions":
            assert len(b["elements"]) <= 25
            for e in b["elements"]:
                assert len(e["text"]["text"]) <= 75 and len(e.get("value", "")) <= 2000


def test_oversized_pipeline_text_is_refused_before_slack(jit):
    huge = hostile(10_000).ljust(10_000, "x")
    for body in (
        {"reason": huge},
        {"requested_by": huge},
        {"context": {"repository": huge}},
        {"context": {"environment": huge}},
    ):
        resp = jit.http.post(
            "/v1/requests",
            json={"action": "deploy-prod", "reason": "r", **body},
            headers={"Authorization": f"Bearer {WEB_TOKEN}"},
        )
        assert resp.status_code == 400, resp.get_json()
    jit.work()
    assert jit.rt.redis.keys("jit:req:*") == [] and jit.slack.calls("chat.postMessage") == []


def test_mrkdwn_injection_renders_harmlessly_within_limits(jit, slack):
    ctx = {k: hostile(500) for k in ("repository", "ref", "commit", "environment")}
    ctx["run_url"] = "https://ci.example/run/1"
    evil = jit.ask("deploy-prod", reason=hostile(500), requested_by=hostile(200), context=ctx)["id"]
    twin = jit.ask(
        "deploy-prod",
        reason="plain",
        requested_by="someone",
        context={**{k: "plain" for k in ctx}, "run_url": "https://ci.example/run/1"},
    )["id"]
    settle(jit, lambda: jit.rt.store.get(evil).message_ts and jit.rt.store.get(twin).message_ts)

    def message_tokens(rid):
        msg = slack.message(jit.rt.store.get(rid).message_ts)
        return sorted(re.sub(r"\d+", "N", t) for s in texts(msg["blocks"]) for t in live_tokens(s))

    # the hostile request renders exactly the live tokens a harmless one does: none of its own
    assert message_tokens(evil) == message_tokens(twin)
    evil_msg = json.dumps(slack.message(jit.rt.store.get(evil).message_ts)["blocks"])
    assert "&lt;!channel&gt;" in evil_msg and "&lt;https://evil.example/x|click here&gt;" in evil_msg
    assert "&amp;amp;lt;" in evil_msg  # pre-escaped text is escaped again, not passed through

    # approvals, a hostile deny reason, the status answer and the App Home render it too
    def shows(rid, text):
        return lambda: text in json.dumps(slack.message(jit.rt.store.get(rid).message_ts)["blocks"])

    assert jit.approve(evil, "U0LEAD1").status_code == 200
    settle(jit, shows(evil, "1 of 2"))
    assert message_tokens(evil) != message_tokens(twin)  # U0LEAD1's approval is now shown
    jit.approve(twin, "U0LEAD1")
    settle(jit, shows(twin, "1 of 2"))
    assert message_tokens(evil) == message_tokens(twin)
    assert jit.post_slack(app_home_opened("U0LEAD2")).status_code == 200  # lists evil as waiting
    settle(jit, lambda: slack.home("U0LEAD2"))
    assert jit.click("jit_deny", evil, "U0LEAD2", button_text="Deny").status_code == 200
    settle(jit, lambda: slack.calls("views.open"))
    view = slack.calls("views.open")[-1].params["view"]
    done = jit.post_slack(
        view_submission(
            view["callback_id"], view["private_metadata"], {"reason": {"reason_input": hostile(500)}}, "U0LEAD2"
        )
    )
    assert done.status_code == 200
    settle(jit, shows(evil, "Denied"))
    status = jit.post_slack(slash_command(f"status {evil}", "U0LEAD1"))
    assert status.status_code == 200
    answer = status.get_json()

    payloads = [c.params for c in slack.calls()] + [answer]
    seen = 0
    for p in payloads:
        blocks = p.get("blocks") or (p.get("view") or {}).get("blocks") or []
        check_limits(blocks, 100 if "view" in p else 50)
        for s in texts(p):
            for needle in LIVE_FORBIDDEN:
                assert needle not in s, (needle, s[:200])
            for token in live_tokens(s):
                assert OWN_TOKEN.match(token), token
            seen += 1
    assert seen > 20
    denied = json.dumps(slack.message(jit.rt.store.get(evil).message_ts)["blocks"])
    assert "&lt;!channel&gt;" in denied and "Denied" in denied
    assert "&lt;!channel&gt;" in json.dumps(answer)
    assert any("&lt;!channel&gt;" in json.dumps(p) for p in payloads if "view" in p and p["view"].get("type") == "home")


# ------------------------------------------------------------------------ nesting depth


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [100, 8000])
def test_deeply_nested_slack_json_is_400(jit, depth):
    """A signed body nested deeper than any Slack payload is refused before it is parsed:
    as a JSON event, and as the `payload=` field of a click."""
    rid = pending(jit)
    ts = jit.rt.store.get(rid).message_ts
    body, ctype = block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts)
    click = dict(parse_qsl(body.decode()))["payload"]
    deep_click = click[:-1] + ', "deep": ' + _deep(depth) + "}"
    event = (
        '{"type": "event_callback", "team_id": "' + TEAM_ID + '", '
        '"event": {"type": "app_home_opened", "user": "U0LEAD1", "deep": ' + _deep(depth) + "}}"
    )
    with Unchanged(jit):
        assert jit.post_slack((event.encode(), "application/json")).status_code == 400
        assert jit.post_slack((urlencode({"payload": deep_click}).encode(), ctype)).status_code == 400
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0
    assert jit.slack.home("U0LEAD1") is None
