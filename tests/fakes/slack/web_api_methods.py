"""The Web API methods the fake answers, one function per Slack method, over SlackFake's state."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .wire import Reply, error_body, truthy

if TYPE_CHECKING:
    from .web_api import SlackFake


def _auth_test(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "url": f"https://{fake.team_domain}.slack.com/",
        "team": fake.team_domain,
        "user": "jit",
        "team_id": fake.team_id,
        "user_id": fake.bot_user_id,
        "bot_id": fake.bot_id,
        "is_enterprise_install": False,
    }


def _chat_post_message(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any] | Reply:
    channel = fake._resolve_channel(p.get("channel"))
    if channel is None:
        return error_body("channel_not_found")
    if not (p.get("text") or p.get("blocks") or p.get("attachments")):
        return error_body("no_text")
    retry = fake._channel_limited(channel)
    if retry is not None:
        return Reply(429, error_body("ratelimited"), {"Retry-After": str(retry)})
    ts = fake._next_ts()
    msg = {
        "channel": channel,
        "ts": ts,
        "text": p.get("text", ""),
        "blocks": copy.deepcopy(p.get("blocks")),
        "attachments": copy.deepcopy(p.get("attachments")),
        "metadata": copy.deepcopy(p.get("metadata")),
        "thread_ts": p.get("thread_ts") or None,
        "user": fake.bot_user_id,
        "bot_id": fake.bot_id,
        "edited": 0,
        "edited_ts": None,
    }
    fake._messages[ts] = msg
    return {"ok": True, "channel": channel, "ts": ts, "message": fake._message_obj(msg)}


def _conversations_history(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    """Top-level messages of a channel, newest first; `metadata` only with include_all_metadata."""
    channel = fake._resolve_channel(p.get("channel"))
    if channel is None:
        return error_body("channel_not_found")
    oldest = float(p.get("oldest") or 0)
    latest = float(p.get("latest") or "inf")
    limit = int(p.get("limit") or 100)
    with_meta = truthy(p.get("include_all_metadata"))
    found = [
        m
        for m in fake._messages.values()
        if m["channel"] == channel and not m.get("thread_ts") and oldest < float(m["ts"]) <= latest
    ]
    found.sort(key=lambda m: float(m["ts"]), reverse=True)
    out = []
    for m in found[:limit]:
        obj = fake._message_obj(m)
        if not with_meta:
            obj.pop("metadata", None)
        out.append(obj)
    return {
        "ok": True,
        "messages": out,
        "has_more": len(found) > limit,
        "pin_count": 0,
        "response_metadata": {"next_cursor": ""},
    }


def _find_message(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any] | None:
    ts, channel = p.get("ts"), p.get("channel")
    msg = fake._messages.get(ts) if ts else None
    if msg is None or msg["channel"] != fake._resolve_channel(channel):
        return None
    return msg


def _chat_update(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("channel"):
        return error_body("channel_not_found")
    msg = _find_message(fake, p)
    if msg is None:
        return error_body("message_not_found")
    if "text" not in p and "blocks" not in p and "attachments" not in p:
        return error_body("no_text")
    fake._apply_update(msg, p)
    return {
        "ok": True,
        "channel": msg["channel"],
        "ts": msg["ts"],
        "text": msg["text"],
        "message": fake._message_obj(msg),
    }


def _chat_post_ephemeral(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    channel = fake._resolve_channel(p.get("channel"))
    if channel is None:
        return error_body("channel_not_found")
    if not p.get("user"):
        return error_body("user_not_found")
    if not (p.get("text") or p.get("blocks") or p.get("attachments")):
        return error_body("no_text")
    ts = fake._next_ts()
    fake._ephemerals.append(
        {
            "channel": channel,
            "user": p["user"],
            "message_ts": ts,
            "text": p.get("text", ""),
            "blocks": copy.deepcopy(p.get("blocks")),
            "thread_ts": p.get("thread_ts") or None,
        }
    )
    return {"ok": True, "message_ts": ts}


def _chat_delete(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("channel"):
        return error_body("channel_not_found")
    msg = _find_message(fake, p)
    if msg is None:
        return error_body("message_not_found")
    fake._deleted[msg["ts"]] = fake._messages.pop(msg["ts"])
    return {"ok": True, "channel": msg["channel"], "ts": msg["ts"]}


def _view_obj(fake: SlackFake, view: dict[str, Any], view_id: str, root: str | None = None) -> dict[str, Any]:
    out = {
        "id": view_id,
        "team_id": fake.team_id,
        "type": view.get("type", "modal"),
        "blocks": copy.deepcopy(view.get("blocks", [])),
        "private_metadata": view.get("private_metadata", ""),
        "callback_id": view.get("callback_id", ""),
        "state": {"values": {}},
        "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
        "title": view.get("title"),
        "clear_on_close": bool(view.get("clear_on_close", False)),
        "notify_on_close": bool(view.get("notify_on_close", False)),
        "close": view.get("close"),
        "submit": view.get("submit"),
        "previous_view_id": None,
        "root_view_id": root or view_id,
        "app_id": fake.app_id,
        "external_id": view.get("external_id", ""),
        "app_installed_team_id": fake.team_id,
        "bot_id": fake.bot_id,
    }
    return out


def _views_open(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("trigger_id") and not p.get("interactivity_pointer"):
        return error_body(
            "invalid_arguments",
            response_metadata={"messages": ["[ERROR] missing required field: trigger_id"]},
        )
    view = p.get("view")
    if not isinstance(view, dict):
        return error_body(
            "invalid_arguments",
            response_metadata={"messages": ["[ERROR] missing required field: view"]},
        )
    view_id = f"V{next(fake._ids):010d}"
    obj = _view_obj(fake, view, view_id)
    fake._views[view_id] = obj
    return {"ok": True, "view": copy.deepcopy(obj)}


def _views_update(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    view = p.get("view")
    if not isinstance(view, dict):
        return error_body("invalid_arguments")
    current = None
    if p.get("view_id"):
        current = fake._views.get(p["view_id"])
    elif p.get("external_id"):
        current = next((v for v in fake._views.values() if v["external_id"] == p["external_id"]), None)
    if current is None:
        return error_body("not_found")
    if p.get("hash") and p["hash"] != current["hash"]:
        return error_body("hash_conflict")
    obj = _view_obj(fake, view, current["id"], current["root_view_id"])
    fake._views[current["id"]] = obj
    return {"ok": True, "view": copy.deepcopy(obj)}


def _views_publish(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    user_id, view = p.get("user_id"), p.get("view")
    if not user_id:
        return error_body("invalid_arguments")
    if not isinstance(view, dict):
        return error_body("invalid_arguments")
    if view.get("type") != "home":
        return error_body("invalid_arguments", response_metadata={"messages": ["[ERROR] view type must be home"]})
    prev = fake._home.get(user_id)
    if prev and p.get("hash") and p["hash"] != prev["hash"]:
        return error_body("hash_conflict")
    view_id = prev["id"] if prev else f"V{next(fake._ids):010d}"
    obj = _view_obj(fake, view, view_id)
    fake._home[user_id] = obj
    return {"ok": True, "view": copy.deepcopy(obj)}


def _usergroups_users_list(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    group = p.get("usergroup")
    if not group:
        return error_body("invalid_arguments")
    if group not in fake.usergroups:
        return error_body("no_such_subteam")
    return {"ok": True, "users": list(fake.usergroups[group])}


def _users_info(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    user = p.get("user")
    if not user or user not in fake.users:
        return error_body("user_not_found")
    return {"ok": True, "user": fake._user_obj(user)}


def _users_lookup_by_email(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    email = (p.get("email") or "").lower()
    for uid in fake.users:
        user = fake._user_obj(uid)
        if email and str(user["profile"].get("email", "")).lower() == email:
            return {"ok": True, "user": user}
    return error_body("users_not_found")


def _conversations_open(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if p.get("channel"):
        return {"ok": True, "channel": {"id": p["channel"]}}
    users = p.get("users")
    if isinstance(users, str):
        users = [u.strip() for u in users.split(",") if u.strip()]
    if not users:
        return error_body("users_list_not_supplied")
    if len(users) == 1:
        return {
            "ok": True,
            "no_op": False,
            "already_open": False,
            "channel": {"id": fake.dm_channel(users[0])},
        }
    key = ",".join(sorted(users))
    return {"ok": True, "channel": {"id": "G" + fake.dm_channel(key)[1:]}}


METHODS: dict[str, Callable[[SlackFake, dict[str, Any]], dict[str, Any] | Reply]] = {
    "auth.test": _auth_test,
    "chat.postMessage": _chat_post_message,
    "chat.update": _chat_update,
    "chat.postEphemeral": _chat_post_ephemeral,
    "chat.delete": _chat_delete,
    "views.open": _views_open,
    "views.update": _views_update,
    "views.publish": _views_publish,
    "usergroups.users.list": _usergroups_users_list,
    "users.info": _users_info,
    "users.lookupByEmail": _users_lookup_by_email,
    "conversations.open": _conversations_open,
    "conversations.history": _conversations_history,
}
