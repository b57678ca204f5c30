"""Everything jit renders for Slack, fed hostile text: nothing a pipeline, a backend or a user
typed can mention, link, format or add a line, and Slack's Block Kit limits hold.

Pure: every renderer is called directly (the few that read state get a small stand-in
runtime); no Redis, no HTTP. The walk below looks at every text object and every plain-text
fallback each renderer produces."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
from support import policy_text

from bot.core.errors import NotFound
from bot.core.model import AccessRequest, Status
from bot.decision.slack.listeners.commands import audit as audit_commands
from bot.decision.slack.listeners.commands import jit as jit_command
from bot.decision.slack.views import answers, audit_view, blocks, home, text
from bot.decision.slack.views.policy_notices import describe_changes, describe_rejection
from bot.decision.slack.views.usage import usage_line
from bot.store.audit import AuditEntry
from bot.wiring import parse_policy
from workers.jobs.notify import followups, pacing

RID = "0123456789abcdef"
RUN_URL = "https://ci.example/run/1"

HOSTILE = {
    "broadcast": "<!channel> <!here> <!everyone> <!here|here>",
    "mentions": "<@U123> <@U0LEAD1|boss> <!subteam^S0SECURITY> <#C0PROD>",
    "disguised link": "<https://evil.example/x|https://good.example/x>",
    "date": "<!date^0^{date}|Pre-approved>",
    "forged line": "release 4.2\n\n*Pre-approved by Security*\n> approved by @security",
    "other line breaks": "a\r\n*b*\u2028c\u2029d\x85e\x0bf\x0cg",
    "backticks": "main` *bold* `x ``` block ```",
    "quote": "> Pre-approved by Security",
    "format": "~strike~ _it_ *b* ~_*all*_~",
    "fullwidth": "＊b＊ ＿i＿ ～s～ ｀c｀ ＞q",
    "pre-escaped": "&lt;!channel&gt; &amp;lt;@U123&amp;gt; &#60;!here&#62;",
    "invisible": "ap\u200bpro\u200dved \u202eytiruceS\u202c \u2066x\u2069 \ufeff\u00ad\u2060\u3164\u115f",
    "emoji": ":white_check_mark: :lock: approved :rotating_light:",
    "huge": ("<!channel> *x*\n" * 700)[:10_000],
    "surrogates": "a\udcffb\ud800c\udfff",
    "zalgo": "Z" + "\u0336\u0337\u0338" * 20 + "algo",
    "bare url": "https://evil.example/login www.evil.example #general @here",
}
BENIGN = "x"

#: `<…>` tokens jit writes itself: mentions of the ids below, dates, the validated run link.
KNOWN_IDS = {"U0LEAD1", "U0LEAD2", "U0BG", "U0AUDITOR", "S0PRODLEADS"}
OWN_TOKEN = re.compile(
    r"@(?P<user>[UW][A-Z0-9]+)|!subteam\^(?P<group>S[A-Z0-9]+)|!date\^\d+\^[^|<>]*\|[^<>]*"
    r"|https://ci\.example/run/1\|View the run on ci\.example"
)
#: What hostile text must never leave in mrkdwn, whatever else happens to it.
LIVE_FRAGMENTS = (
    "<!channel",
    "<!here",
    "<!everyone",
    "<@U123",
    "<https://evil",
    "<!subteam^S0SECURITY",
    "<#C0PROD",
    "<!date^0",
    "&amp;lt;@U123",
    "main`",
    "\r",
    "\u2028",
    "\u2029",
    "\x85",
)
#: ... nor outside code spans, where Slack formats nothing.
FORMAT_FRAGMENTS = (
    "*Pre-approved",
    "*b*",
    "_it_",
    "~strike~",
    "*bold*",
    ":lock: approved",
    "white_check_mark: :lock",
    "*x*",
)


# ------------------------------------------------------------------ a stand-in runtime


def request(value: str, status: Status = Status.PENDING, **over: Any) -> AccessRequest:
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields: dict[str, Any] = dict(
        id=RID,
        action=value,
        pipeline=value,
        reason=value,
        ttl=timedelta(minutes=15),
        status=status,
        created_at=t,
        pending_until=t + timedelta(minutes=30),
        approvals_required=2,
        channel="C0PROD",
        requested_by=value,
        requester_slack_id="U0ALICE",
        context={k: value for k in ("repository", "ref", "commit", "environment", "run_url", "extra")},
        approvals=[(value, t), ("U0LEAD1", t)],
        decided_by=value,
        deny_reason=value,
        issued_at=t,
        expires_at=datetime.now(UTC) + timedelta(minutes=4),
        revoked_by=value,
        error=value,
    )
    fields.update(over)
    return AccessRequest(**fields)


def audit_body(value: str) -> dict[str, Any]:
    return {
        "time": "2026-01-02T03:04:05.000Z",
        "event": value,
        "request_id": value,
        "action": value,
        "actor": value,
        "outcome": value,
        "details": {k: value for k in ("why", "reason", "error", "backend", "source", "sha256")}
        | {"break_glass": True},
    }


class StandIn:
    """What the renderers read from a runtime, holding `value` wherever text can come from."""

    def __init__(self, value: str) -> None:
        reqs = [
            request(value, Status.PENDING, decided_by=None),
            request(value, Status.APPROVED, decided_by=None),
            request(value, Status.ACTIVE, decided_by="U0LEAD1"),
        ]
        entries = [AuditEntry(f"{i}-0", audit_body(value), "h") for i in range(12)]
        by_id = {RID: reqs[0]}
        self.redis = SimpleNamespace(
            zcard=lambda key: len(reqs) + 2000,
            zrangebyscore=lambda key, lo, hi, withscores=False: [("bgalert:" + RID, 0.0)],
        )
        self.store = SimpleNamespace(
            open_ids=lambda limit: [RID] * min(limit, len(reqs)),
            get_many=lambda ids: reqs,
            get=lambda rid: by_id.get(rid),
        )
        session = {
            "started_at": value,
            "duration_ms": 133_000,
            "exit_code": 0,
            "run": value,
            "runner": value,
            "output_lines": 3,
            "output_bytes": 10,
            "transcript_sha256": value,
            "transcript": value,
        }
        self.sessions = SimpleNamespace(read=lambda rid: session)
        self.audit = SimpleNamespace(
            entries_for_request=lambda rid, limit: entries[:limit],
            newest=lambda since_ms: iter(entries),
            latest=lambda n: entries[:n],
            head=lambda: {"seq": value, "hash": value},
            append=lambda *a, **k: None,
        )
        self.rules = SimpleNamespace(
            is_auditor=lambda user: True,
            is_approver=lambda action, user, req=None: True,
            may_view=lambda req, user: True,
            self_approval_allowed=lambda req: False,
        )
        self.revokes = SimpleNamespace(revoke_by_approver=self._revoke)
        self.reqs = reqs
        self.entries = entries
        self.policy = SimpleNamespace(actions={"deploy-prod": None}, action=lambda name: None)
        self._reqs = by_id

    def _revoke(self, rid: str, user: str) -> AccessRequest:
        if rid not in self._reqs:
            raise NotFound()
        return self._reqs[rid]


# ------------------------------------------------------------------ every renderer


def renderings(value: str) -> list[tuple[str, Any]]:
    """(name, output) of every renderer, with `value` in every slot text can come from."""
    out: list[tuple[str, Any]] = []
    for status in Status:
        req = request(value, status)
        out.append(
            (
                f"request {status.value}",
                blocks.request_blocks(req, value, ["U0LEAD1", "S0PRODLEADS", value]),
            )
        )
        out.append((f"summary {status.value}", blocks.request_summary(req)))
        out.append((f"status line {status.value}", blocks.status_line(req)))
        for outcome in followups.DM_OUTCOMES:
            out.append((f"dm {outcome} {status.value}", followups.dm_text(req, outcome)))
    req = request(value, Status.PENDING)
    linked = request(value, context={"repository": value, "run_url": RUN_URL})
    out += [
        ("request with a run link", blocks.request_blocks(linked)),
        (
            "status with a run link",
            answers.status(linked, []),
        ),
        (
            "request auto",
            blocks.request_blocks(request(value, Status.ACTIVE, decided_by="auto"), auto_rule=value),
        ),
        (
            "request break glass",
            blocks.request_blocks(request(value, Status.ACTIVE), break_glass_by="U0BG", justification=value),
        ),
        (
            "request break glass by",
            blocks.request_blocks(request(value, Status.ACTIVE), break_glass_by=value),
        ),
        (
            "request break glass asked",
            blocks.request_blocks(req, break_glass=True, break_glass_requested=True),
        ),
        ("deny modal", blocks.deny_modal(req, "C0PROD", "1.2")),
        ("break glass modal", blocks.break_glass_modal(req, "C0PROD", "1.2", max_ttl=value)),
        ("break glass alert", blocks.break_glass_alert(req, "U0BG", value, True, 99999)),
        ("break glass alert by", blocks.break_glass_alert(req, value, value, False, None)),
        ("revoke failure alert", blocks.revoke_failure_alert(3, value)),
        ("reminder", followups.reminder_text(req, ["U0LEAD1", "S0PRODLEADS", value])),
        ("warning", followups.warning_text(request(value, Status.ACTIVE))),
        ("digest", pacing.digest_blocks([req] * 25)),
        ("pending line", answers.pending_line(req)),
        ("active line", answers.active_line(request(value, Status.ACTIVE))),
        ("event line", audit_view.event_line(audit_body(value))),
        # what a target saw: client-chosen names (application_name, client name), key and command names
        (
            "usage on the message",
            blocks.request_blocks(
                request(value, Status.REVOKED),
                usage=usage_line(
                    {value: {"count": 3, "active": 1}},
                    {
                        "sessions": 1,
                        "session_list": [{"client_addr": value, "application_name": value}],
                        "statements": 1,
                        "statements_source": value,
                        "connections": 1,
                        "connection_list": [{"addr": value, "name": value}],
                        "denied": 2,
                        "denied_commands": [value],
                        "output_keys": [value],
                        "errors": [value],
                    },
                ),
            ),
        ),
        (
            "usage event line",
            audit_view.event_line(
                {
                    **audit_body(value),
                    "event": "session.usage",
                    "details": {
                        "checks": {value: {"count": 1, "active": 0}},
                        "session_list": [{"client_addr": value, "application_name": value}],
                        "sessions": 1,
                        "output_keys": [value],
                    },
                }
            ),
        ),
        (
            "token check line",
            audit_view.event_line(
                {**audit_body(value), "event": "session.token_checked", "details": {"resource_server": value}}
            ),
        ),
        ("policy rejected", describe_rejection(value, "ab" * 32, "cd" * 32, [value] * 30, value)),
    ]
    rt = StandIn(value)
    bodies = [e.body for e in rt.entries]
    out += [
        ("overview", answers.overview(rt.reqs, 2000)),
        ("status one", answers.status(rt.reqs[0], bodies)),
        ("status unknown id", answers.not_found(value)),
        (
            "home",
            home.home_view(
                home.HomeView(
                    waiting=rt.reqs,
                    active=rt.reqs,
                    may_revoke={RID},
                    open_total=2003,
                    open_read=3,
                    auditor=True,
                    at_ms=1_796_000_000_000,
                    latest=bodies,
                    head={"seq": value, "hash": value},
                    late_alerts=[("bgalert:" + RID, 0)],
                )
            ),
        ),
        ("audit", audit_commands.answer(rt, "U0LEAD1", f"{RID} 100")),
        ("audit all", audit_commands.answer(rt, "U0LEAD1", "50")),
        ("audit bad filter", audit_commands.answer(rt, "U0LEAD1", value)),
        ("audit bad user", audit_commands.answer(rt, "U0LEAD1", "@" + value)),
        ("audit bad action", audit_commands.answer(rt, "U0LEAD1", "action:" + value)),
    ]
    for i, args in enumerate(
        (
            f"status {value}",
            f"status {RID}",
            f"audit {value}",
            f"revoke {value}",
            f"revoke {RID}",
            value,
            "",
        )
    ):
        out.append((f"/jit answer {i}", jit_command.answer(rt, "U0LEAD1", args)))
    policy = parse_policy(policy_text("/tmp/jit-grants"), source=value)
    diff = {
        "actions_added": [value],
        "actions_removed": [value],
        "pipelines_added": [value],
        "pipelines_removed": [value],
        "changed": {value: [value, "ttl"]},
        "approvers": {
            value: {
                "added": [f"{value}:U0LEAD1", value],
                "removed": ["U0LEAD2", f"break-glass:{value}"],
            }
        },
        "auditors": {"added": [value], "removed": ["U0AUDITOR"]},
    }
    out += [
        ("policy loaded", describe_changes(policy, "ef" * 32, diff, value)),
        ("policy first load", describe_changes(policy, None, {"first_load": True}, value)),
    ]
    return out


# ------------------------------------------------------------------ walking what was rendered


def walk(output: Any) -> tuple[list[str], list[dict], list[list[dict]], str]:
    """(mrkdwn strings, plain_text objects, block lists, surface) of one rendering."""
    mrkdwn: list[str] = []
    plains: list[dict] = []
    lists: list[list[dict]] = []
    surface = "message"
    if isinstance(output, str):
        return [output], [], [], surface
    if isinstance(output, tuple):  # (fallback text, blocks)
        output = {"text": output[0], "blocks": output[1]}
    if isinstance(output, list):
        output = {"blocks": output}
    if output.get("type") in ("modal", "home"):
        surface = "view"
    if isinstance(output.get("text"), str):
        mrkdwn.append(output["text"])  # chat.postMessage / ack text: Slack parses it as mrkdwn

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            if obj.get("type") == "mrkdwn":
                assert obj.get("verbatim") is True, obj  # nothing auto-linked or auto-mentioned
                mrkdwn.append(obj["text"])
            elif obj.get("type") == "plain_text":
                plains.append(obj)
            for k, v in obj.items():
                if k == "blocks" and isinstance(v, list):
                    lists.append(v)
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit({k: v for k, v in output.items() if k != "text"})
    return mrkdwn, plains, lists, surface


def outside_code(s: str) -> str:
    """`s` with the contents of its code blocks and code spans taken out (their lines kept)."""
    s = re.sub(r"```(.*?)```", lambda m: "```" + "\n" * m[1].count("\n") + "```", s, flags=re.S)
    return re.sub(r"`[^`\n]*`", "`C`", s)


def skeleton(texts: list[str]) -> Counter:
    """The markup of some mrkdwn: its live tokens, format markers, lines and quoted lines."""
    c: Counter = Counter()
    for s in texts:
        for tok in re.findall(r"<([^<>]*)>", s):
            c["token " + re.sub(r"\d+", "N", tok)] += 1
        bare = outside_code(s)
        for marker in "*_~`":
            c[marker] += bare.count(marker)
        c["emoji codes"] += len(re.findall(r":[a-z0-9_+-]+:", bare))
        lines = bare.split("\n")
        c["lines"] += len(lines)
        c["quoted lines"] += sum(1 for ln in lines if ln.lstrip().startswith((">", "&gt;")))
    return c


def invisible(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return (cat[0] in "CZ" and ch not in " \n" and cat not in ("Co", "Cn")) or ch in "\u3164\u115f"


def check_limits(output_blocks: list[dict], surface: str) -> None:
    assert len(output_blocks) <= (100 if surface == "view" else 50)
    for b in output_blocks:
        if b["type"] == "section":
            if "text" in b:
                assert 1 <= text.width(b["text"]["text"]) <= 3000
            assert len(b.get("fields", [])) <= 10
            for f in b.get("fields", []):
                assert 1 <= text.width(f["text"]) <= 2000
            if b.get("accessory", {}).get("type") == "button":
                assert text.width(b["accessory"]["text"]["text"]) <= 75
        elif b["type"] == "header":
            assert 1 <= text.width(b["text"]["text"]) <= 150
        elif b["type"] == "context":
            assert 1 <= len(b["elements"]) <= 10
            for e in b["elements"]:
                assert 1 <= text.width(e["text"]) <= 3000
        elif b["type"] == "actions":
            assert len(b["elements"]) <= 25
            for e in b["elements"]:
                assert 1 <= text.width(e["text"]["text"]) <= 75 and len(e["value"]) <= 2000
        elif b["type"] == "input":
            assert text.width(b["label"]["text"]) <= 2000
            assert text.width(b["element"]["placeholder"]["text"]) <= 150


BENIGN_RENDERINGS = renderings(BENIGN)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_renders_inert_everywhere(name):
    hostile = HOSTILE[name]
    rendered = renderings(hostile)
    assert [n for n, _ in rendered] == [n for n, _ in BENIGN_RENDERINGS]
    for (where, out), (_, twin) in zip(rendered, BENIGN_RENDERINGS, strict=True):
        mrkdwn, plains, lists, surface = walk(out)
        assert mrkdwn, where
        for s in mrkdwn:
            for frag in LIVE_FRAGMENTS:
                assert frag not in s, (where, frag, s[:300])
            for frag in FORMAT_FRAGMENTS:
                assert frag not in outside_code(s), (where, frag, s[:300])
            for tok in re.findall(r"<([^<>]*)>", s):
                m = OWN_TOKEN.fullmatch(tok)
                assert m, (where, tok)
                assert (m["user"] or m["group"] or "U0LEAD1") in KNOWN_IDS, (where, tok)
            assert not any(invisible(c) for c in s), (where, s[:300])
            assert not re.search(r"[\u0300-\u036f]{4}", s), (where, "combining marks pile up")
            assert text.width(s) <= 3000, (where, text.width(s))
        for p in plains:
            assert p.get("emoji") is False, (where, p)
            assert p["text"] and not any(invisible(c) or c == "\n" for c in p["text"]), (where, p)
        for bl in lists:
            check_limits(bl, surface)
        if isinstance(out, dict) and out.get("type") == "modal":
            assert all(1 <= text.width(out[k]["text"]) <= 24 for k in ("title", "submit", "close"))
        # Hostile text adds no markup: no token, marker, line or quote the same renderer does not
        # write for a harmless "x" (clipping may only take some away).
        extra = skeleton(mrkdwn) - skeleton(walk(twin)[0])
        assert not extra, (where, extra)


def test_every_renderer_is_covered_and_shows_the_text():
    # the hostile text is visible (escaped), not dropped: a reader can see what was typed
    shown = "\n".join(s for _, out in renderings(HOSTILE["broadcast"]) for s in walk(out)[0])
    assert "&lt;!channel&gt;" in shown and "&lt;!here|here&gt;" in shown
    pre = "\n".join(s for _, out in renderings(HOSTILE["pre-escaped"]) for s in walk(out)[0])
    assert "&amp;lt;!channel&amp;gt;" in pre  # escaped again: shows "&lt;!channel&gt;" as typed
    assert len(BENIGN_RENDERINGS) > 60


@pytest.mark.parametrize(
    "url",
    [
        "http://ci.example/run/1",
        "javascript:alert(1)",
        "https://good.example@evil.example/run",
        "https://evil.example/x|https://good.example/x",
        "https://evil.example/a>b",
        "https://g\u0456thub.com/run",  # a Cyrillic і
        "https://evil.example/run\n*x*",
        "//evil.example/run",
        "https:///run",
        "",
    ],
)
def test_only_https_run_urls_become_links(url):
    req = request("x", context={"run_url": url})
    for out in (
        blocks.request_blocks(req),
        answers.status(req, []),
        text.link(url, "View the run"),
    ):
        for s in walk(out)[0]:
            assert not re.search(r"<[^!@][^<>]*>", s), (url, s)  # mentions and dates only
            assert "View the run on" not in s


def test_an_https_run_url_is_a_link_that_names_its_host():
    req = request("x", context={"run_url": "https://github.com/acme/web/actions/runs/1?a=1&b=2"})
    ctx = [b for b in blocks.request_blocks(req) if b["type"] == "context"][0]["elements"][0]["text"]
    assert "<https://github.com/acme/web/actions/runs/1?a=1&amp;b=2|View the run on github.com>" in ctx
    assert text.link("https://ci.example:8443/r", "View the run") == (
        "<https://ci.example:8443/r|View the run on ci.example:8443>"
    )


def test_the_revoke_failure_alert_from_the_worker_is_literal(monkeypatch):
    from workers import jobs
    from workers.backends.base import GrantError

    sent: list[str] = []
    rt = MagicMock()
    rt.notices.queue = lambda channel, t, **kw: sent.append(t) or "notice:x"
    rt.settings.jit_revoke_alert_after = 3
    rt.store.get.return_value = request("x", Status.ACTIVE)
    stderr = "revoke: <!channel> see <https://evil.example|https://vault.example>\n*Revoked OK by Security*"
    jobs._failed(rt, "expire", RID, 3, GrantError(stderr))
    assert len(sent) == 1
    alert = sent[0]
    assert "Revoking this grant has failed 3 times" in alert and "&lt;!channel&gt;" in alert
    assert "\n" not in alert and "*Revoked" not in alert and re.findall(r"<[^<>]*>", alert) == []


# ------------------------------------------------------------------ the text functions themselves


def test_literal_clips_to_its_limit_without_cutting_an_entity():
    for limit in range(2, 40):
        out = text.literal("&<>" * 100, limit)
        assert text.width(out) <= limit and out.endswith("…")
        assert re.fullmatch(r"(&amp;|&lt;|&gt;)*…", out), out
    assert text.literal("a" * 10, 10) == "a" * 10 and text.literal("a" * 11, 10) == "a" * 9 + "…"
    assert text.width(text.literal("😀" * 100, 11)) <= 11  # an emoji counts two


def test_literal_turns_every_line_break_and_invisible_character_into_one_space():
    assert text.literal("a\n\n*b*\r\n\u2028c\u200b\u202ed\u2066e\t\tf", 100) == "a ∗b∗ c d e f"
    assert text.plain(" \n\u200b ", 10) == "—" and text.literal("\u200b", 10) == ""
    assert text.plain("a\udcffb", 10) == "a\ufffdb"  # a lone surrogate cannot reach Slack's JSON
    assert text.literal("> quoted", 20) == "› quoted"


def test_fit_never_cuts_an_entity_or_a_token():
    s = "ab &amp; <@U0LEAD1> <!date^1^{time}|x> tail"
    for limit in range(1, len(s) + 2):
        out = text.fit(s, limit)
        assert text.width(out) <= limit or limit < 2
        assert not re.search(r"&[a-z]*…$", out) and out.count("<") == out.count(">"), out


def test_mentions_only_for_slack_shaped_ids():
    assert text.mention("U0LEAD1") == "<@U0LEAD1>" and text.mention("W0ABC") == "<@W0ABC>"
    assert text.mention("S0PRODLEADS") == "<!subteam^S0PRODLEADS>"
    for bad in (
        "<@U123>",
        "U0LEAD1\n",
        "u0lead1",
        "Ux",
        "U0LEAD1|boss",
        "!channel",
        "pipeline:web-ci",
        "",
        None,
    ):
        assert "<" not in text.mention(bad), bad
