"""The Slack Web API methods jit calls, answered from the sandbox's state in Slack's own shapes."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from bot.sandbox.state import TRIGGER_TTL_S, SlackState, view_object
from bot.sandbox.workspace import BOT_ID, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID

Answer = dict[str, Any]
#: Form fields slack_sdk sends as JSON text when it uses a form body.
JSON_FIELDS = ("blocks", "attachments", "view", "metadata")


def error(code: str, **extra: Any) -> Answer:
    """Slack's refusal: HTTP 200 with `ok: false`."""
    return {"ok": False, "error": code, **extra}


def parse_params(query: str, body: bytes, content_type: str) -> tuple[dict[str, Any], str | None]:
    """(arguments, body token) from a query string and a form or JSON body, as Slack reads them.
    A token in a JSON body does not count (Slack wants it in the Authorization header then)."""
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    ctype = content_type.split(";")[0].strip().lower()
    body_token = params.pop("token", None)
    if not body:
        return params, body_token
    if ctype == "application/json":
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("a JSON body must be an object")
        data.pop("token", None)
        params.update(data)
        return params, body_token
    form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    body_token = form.pop("token", None) or body_token
    for key in JSON_FIELDS:
        if isinstance(form.get(key), str) and form[key][:1] in "[{":
            form[key] = json.loads(form[key])
    params.update(form)
    return params, body_token


# ---------------------------------------------------------------------- auth and people


def auth_test(s: SlackState, p: dict[str, Any]) -> Answer:
    return {
        "ok": True,
        "url": f"https://{TEAM_DOMAIN}.slack.com/",
        "team": TEAM_DOMAIN,
        "user": "jit",
        "team_id": TEAM_ID,
        "user_id": BOT_USER_ID,
        "bot_id": BOT_ID,
        "is_enterprise_install": False,
    }


def user_object(s: SlackState, user_id: str) -> dict[str, Any] | None:
    person = s.workspace.person(user_id)
    if person is None:
        return None
    return {
        "id": person.id,
        "team_id": TEAM_ID,
        "name": person.name,
        "deleted": False,
        "real_name": person.real_name,
        "tz": "Etc/UTC",
        "is_admin": False,
        "is_owner": False,
        "is_bot": False,
        "is_app_user": False,
        "updated": 1700000000,
        "profile": {"real_name": person.real_name, "display_name": person.name, "email": person.email},
    }


def users_info(s: SlackState, p: dict[str, Any]) -> Answer:
    user = user_object(s, str(p.get("user") or ""))
    return {"ok": True, "user": user} if user else error("user_not_found")


def users_lookup_by_email(s: SlackState, p: dict[str, Any]) -> Answer:
    email = str(p.get("email") or "").lower()
    person = next((x for x in s.workspace.people if x.email == email), None) if email else None
    return {"ok": True, "user": user_object(s, person.id)} if person else error("users_not_found")


def usergroups_users_list(s: SlackState, p: dict[str, Any]) -> Answer:
    group = p.get("usergroup")
    if not group:
        return error("invalid_arguments")
    if group not in s.workspace.groups:
        return error("no_such_subteam")
    return {"ok": True, "users": list(s.workspace.groups[group])}


# ---------------------------------------------------------------------- messages


def chat_post_message(s: SlackState, p: dict[str, Any]) -> Answer:
    channel = s.channel_for(p.get("channel"))
    if channel is None:
        return error("channel_not_found")
    if not (p.get("text") or p.get("blocks") or p.get("attachments")):
        return error("no_text")
    thread = p.get("thread_ts") or None
    if thread and thread not in s.messages:
        return error("thread_not_found")
    ts = s.next_ts()
    s.messages[ts] = {
        "channel": channel,
        "ts": ts,
        "text": str(p.get("text") or ""),
        "blocks": copy.deepcopy(p.get("blocks")),
        "attachments": copy.deepcopy(p.get("attachments")),
        "metadata": copy.deepcopy(p.get("metadata")),
        "thread_ts": thread,
        "edited_ts": None,
    }
    return {"ok": True, "channel": channel, "ts": ts, "message": s.message_object(s.messages[ts])}


def _own_message(s: SlackState, p: dict[str, Any], ts_field: str = "ts") -> dict[str, Any] | None:
    msg = s.messages.get(str(p.get(ts_field) or ""))
    return msg if msg is not None and msg["channel"] == p.get("channel") else None


def chat_update(s: SlackState, p: dict[str, Any]) -> Answer:
    if not p.get("channel"):
        return error("channel_not_found")
    msg = _own_message(s, p)
    if msg is None:
        return error("message_not_found")
    if "text" not in p and "blocks" not in p and "attachments" not in p:
        return error("no_text")
    apply_update(s, msg, p)
    return {
        "ok": True,
        "channel": msg["channel"],
        "ts": msg["ts"],
        "text": msg["text"],
        "message": s.message_object(msg),
    }


def apply_update(s: SlackState, msg: dict[str, Any], p: dict[str, Any]) -> None:
    if "text" in p:
        msg["text"] = str(p["text"] or "")
    for key in ("blocks", "attachments", "metadata"):
        if key in p:
            msg[key] = copy.deepcopy(p[key])
    msg["edited_ts"] = s.next_ts()


def chat_delete(s: SlackState, p: dict[str, Any]) -> Answer:
    msg = _own_message(s, p)
    if msg is None:
        return error("message_not_found")
    del s.messages[msg["ts"]]
    return {"ok": True, "channel": msg["channel"], "ts": msg["ts"]}


def chat_post_ephemeral(s: SlackState, p: dict[str, Any], *, source: str = "jit") -> Answer:
    channel = s.channel_for(p.get("channel"))
    if channel is None:
        return error("channel_not_found")
    user = str(p.get("user") or "")
    if s.workspace.person(user) is None:
        return error("user_not_in_channel")
    if not (p.get("text") or p.get("blocks") or p.get("attachments")):
        return error("no_text")
    ts = s.next_ts()
    s.add_ephemeral(
        {
            "channel": channel,
            "user": user,
            "ts": ts,
            "text": str(p.get("text") or ""),
            "blocks": copy.deepcopy(p.get("blocks")),
            "thread_ts": p.get("thread_ts") or None,
            "source": source,
        }
    )
    return {"ok": True, "message_ts": ts}


def chat_get_permalink(s: SlackState, p: dict[str, Any]) -> Answer:
    msg = _own_message(s, p, "message_ts")
    if msg is None:
        return error("message_not_found")
    link = f"https://{TEAM_DOMAIN}.slack.com/archives/{msg['channel']}/p{msg['ts'].replace('.', '')}"
    return {"ok": True, "channel": msg["channel"], "permalink": link}


# ---------------------------------------------------------------------- conversations


def conversations_open(s: SlackState, p: dict[str, Any]) -> Answer:
    users = p.get("users")
    if isinstance(users, str):
        users = [u.strip() for u in users.split(",") if u.strip()]
    if not users:
        return error("users_list_not_supplied")
    if len(users) != 1:
        return error("not_supported")  # group DMs: jit opens none
    if s.workspace.person(users[0]) is None:
        return error("user_not_found")
    return {"ok": True, "no_op": False, "already_open": False, "channel": {"id": s.dm_of(users[0])}}


def conversations_info(s: SlackState, p: dict[str, Any]) -> Answer:
    cid = str(p.get("channel") or "")
    if cid not in s.channels:
        return error("channel_not_found")
    dm = cid.startswith("D")
    return {
        "ok": True,
        "channel": {"id": cid, "name": s.channels[cid], "is_channel": not dm, "is_im": dm, "is_private": dm},
    }


def conversations_history(s: SlackState, p: dict[str, Any]) -> Answer:
    """Top-level messages of a channel, newest first; `metadata` only with include_all_metadata."""
    cid = str(p.get("channel") or "")
    if cid not in s.channels:
        return error("channel_not_found")
    oldest, latest = float(p.get("oldest") or 0), float(p.get("latest") or "inf")
    limit = max(1, min(int(p.get("limit") or 100), 999))
    with_meta = str(p.get("include_all_metadata")).lower() in ("true", "1")
    found = [
        m
        for m in s.messages.values()
        if m["channel"] == cid and not m["thread_ts"] and oldest < float(m["ts"]) <= latest
    ]
    found.sort(key=lambda m: float(m["ts"]), reverse=True)
    out = []
    for m in found[:limit]:
        obj = s.message_object(m)
        if not with_meta:
            obj.pop("metadata", None)
        out.append(obj)
    return {"ok": True, "messages": out, "has_more": len(found) > limit, "response_metadata": {"next_cursor": ""}}


# ---------------------------------------------------------------------- views


def views_open(s: SlackState, p: dict[str, Any]) -> Answer:
    view = p.get("view")
    if not isinstance(view, dict) or view.get("type") != "modal":
        return error("invalid_arguments", response_metadata={"messages": ["[ERROR] a modal view is required"]})
    issued = s.triggers.pop(str(p.get("trigger_id") or ""), None)
    if issued is None:
        return error("invalid_trigger_id")  # unknown, or already exchanged for a view
    user, at = issued
    late = time.monotonic() - at
    if late > TRIGGER_TTL_S:
        s.note(
            user, f"jit opened this modal {late:.1f} s after the click; Slack refuses after 3 s (expired_trigger_id)"
        )
    view_id = s.new_view_id()
    s.views[view_id] = view_object(view, view_id)
    s.view_owner[view_id] = user
    return {"ok": True, "view": copy.deepcopy(s.views[view_id])}


def views_update(s: SlackState, p: dict[str, Any]) -> Answer:
    view = p.get("view")
    if not isinstance(view, dict):
        return error("invalid_arguments")
    current = s.views.get(str(p.get("view_id") or ""))
    if current is None and p.get("external_id"):
        current = next((v for v in s.views.values() if v["external_id"] == p["external_id"]), None)
    if current is None:
        return error("not_found")
    if p.get("hash") and p["hash"] != current["hash"]:
        return error("hash_conflict")
    s.views[current["id"]] = view_object(view, current["id"], current["root_view_id"])
    return {"ok": True, "view": copy.deepcopy(s.views[current["id"]])}


def views_publish(s: SlackState, p: dict[str, Any]) -> Answer:
    user, view = str(p.get("user_id") or ""), p.get("view")
    if s.workspace.person(user) is None:
        return error("user_not_found")
    if not isinstance(view, dict) or view.get("type") != "home":
        return error("invalid_arguments", response_metadata={"messages": ["[ERROR] view type must be home"]})
    previous = s.home.get(user)
    if previous and p.get("hash") and p["hash"] != previous["hash"]:
        return error("hash_conflict")
    s.home[user] = view_object(view, previous["id"] if previous else s.new_view_id())
    return {"ok": True, "view": copy.deepcopy(s.home[user])}


METHODS: dict[str, Callable[[SlackState, dict[str, Any]], Answer]] = {
    "auth.test": auth_test,
    "chat.postMessage": chat_post_message,
    "chat.update": chat_update,
    "chat.delete": chat_delete,
    "chat.postEphemeral": chat_post_ephemeral,
    "chat.getPermalink": chat_get_permalink,
    "conversations.open": conversations_open,
    "conversations.info": conversations_info,
    "conversations.history": conversations_history,
    "views.open": views_open,
    "views.update": views_update,
    "views.publish": views_publish,
    "users.info": users_info,
    "users.lookupByEmail": users_lookup_by_email,
    "usergroups.users.list": usergroups_users_list,
}


def call(s: SlackState, method: str, params: dict[str, Any]) -> Answer:
    """One Web API call (the caller has checked the token)."""
    handler = METHODS.get(method)
    if handler is None:
        return error("unknown_method", req_method=method)
    with s.lock:
        try:
            answer = handler(s, params)
        except (TypeError, ValueError, AttributeError):
            answer = error("invalid_arguments")
        if answer.get("ok"):
            s.touch()
        return answer
