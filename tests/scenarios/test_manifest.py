"""slack-app-manifest.yml asks for exactly the scopes, commands and events the code uses."""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path

import yaml
from slack_sdk import WebClient

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "slack-app-manifest.yml"
SOURCES = [p for d in ("bot", "workers") for p in sorted((ROOT / d).rglob("*.py"))]

#: Bot-token scopes each Slack API method needs (from each method's page on api.slack.com).
#: A method the code starts calling that is not listed here fails the test until it is added.
SCOPES: dict[str, set[str]] = {
    "auth.test": set(),
    "chat.postMessage": {"chat:write"},
    "chat.update": {"chat:write"},
    "chat.postEphemeral": {"chat:write"},
    "chat.delete": {"chat:write"},
    "chat.getPermalink": set(),
    "views.open": set(),
    "views.update": set(),
    "views.push": set(),
    "views.publish": set(),
    "usergroups.users.list": {"usergroups:read"},
    "usergroups.list": {"usergroups:read"},
    "users.info": {"users:read"},
    "users.lookupByEmail": {"users:read.email"},
    "conversations.open": {"im:write"},
    # approval channels may be public or private
    "conversations.history": {"channels:history", "groups:history"},
    "reactions.add": {"reactions:write"},
    # Socket Mode: called with the app-level token (scope connections:write on that token,
    # set when the token is generated, not in the manifest's bot scopes).
    "apps.connections.open": set(),
}
#: Scopes that come with a feature rather than an API call.
FEATURE_SCOPES = {"slash_commands": {"commands"}}


@cache
def client_methods() -> dict[str, str]:
    """WebClient method name (`chat_postMessage`) → Slack API method (`chat.postMessage`)."""
    out = {}
    for name, fn in inspect.getmembers(WebClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        m = re.search(r'api_call\(\s*"([a-zA-Z.]+)"', inspect.getsource(fn))
        if m:
            out[name] = m.group(1)
    return out


def methods_called() -> set[str]:
    """Every Slack API method the code names: `client.chat_update(…)`, `rt.slack.chat_update` passed
    as a function, or `api_call("chat.update")`."""
    known = client_methods()
    found = set()
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for attr in re.findall(r"\.([a-z]+_[A-Za-z_]+)\b", text):
            if attr in known:
                found.add(known[attr])
        found.update(re.findall(r'api_call\(\s*"([a-zA-Z.]+)"', text))
    return found


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def test_the_scan_finds_what_the_code_is_known_to_call():
    called = methods_called()
    # the approval message, its modal and the user-group lookup exist since the first version
    assert {"chat.postMessage", "views.open", "usergroups.users.list"} <= called
    assert "users.lookupByEmail" in called  # on-call approvers, matched to Slack by email
    assert client_methods()["usergroups_users_list"] == "usergroups.users.list"


def test_manifest_scopes_are_exactly_the_scopes_used():
    called = methods_called()
    unknown = sorted(called - SCOPES.keys())
    assert not unknown, f"add the scopes of {unknown} to SCOPES (and the manifest if they need any)"
    required = set().union(*(SCOPES[m] for m in called))
    m = manifest()
    for feature, scopes in FEATURE_SCOPES.items():
        if m["features"].get(feature):
            required |= scopes
    granted = set(m["oauth_config"]["scopes"]["bot"])
    assert granted == required, f"missing: {sorted(required - granted)}, unused: {sorted(granted - required)}"
    assert "user" not in m["oauth_config"]["scopes"]  # the app never acts as a user


def test_manifest_wires_commands_events_and_interactivity_to_the_bot():
    m = manifest()
    assert m["features"]["bot_user"]["display_name"]
    code = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)

    commands = {c["command"] for c in m["features"]["slash_commands"]}
    assert commands == set(re.findall(r'\.command\("(/[a-z-]+)"\)', code)) == {"/jit"}
    events = set(m["settings"]["event_subscriptions"]["bot_events"])
    assert (
        events
        == set(re.findall(r'\.event\("([a-z_]+)"\)', code))
        == {
            "app_home_opened",
            "subteam_members_changed",  # off-boarding: group membership is re-read at once
            "subteam_updated",
        }
    )
    assert m["features"]["app_home"]["home_tab_enabled"] is True
    assert m["settings"]["interactivity"]["is_enabled"] is True

    urls = [c["url"] for c in m["features"]["slash_commands"]]
    urls += [
        m["settings"]["event_subscriptions"]["request_url"],
        m["settings"]["interactivity"]["request_url"],
    ]
    for url in urls:  # the one endpoint bot/web/app.py serves for everything from Slack
        assert url.startswith("https://") and url.endswith("/slack/events"), url
    assert m["settings"]["socket_mode_enabled"] is False  # HTTP by default; docs say how to switch
