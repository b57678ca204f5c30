"""What the sandbox's Slack holds: messages, ephemerals, modals, Home tabs, triggers; one lock, one version."""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
from typing import Any

from bot.sandbox.workspace import APP_ID, BOT_ID, BOT_USER_ID, TEAM_ID, Workspace

#: Slack refuses `views.open` with a trigger older than this; the sandbox opens it and says so.
TRIGGER_TTL_S = 3.0
#: Triggers no modal was opened with are forgotten after this.
TRIGGER_KEPT_S = 60.0
#: The page's notes (refused clicks, late answers) and ephemeral messages: only the newest are kept.
MAX_NOTES = 50
MAX_EPHEMERALS = 500


class SlackState:
    """All state behind the Web API and the page. Every change bumps `version` and wakes the
    pages waiting for one (`wait_for_change`)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.version = 0
        self.closed = False
        self._changed = threading.Condition(threading.RLock())
        self._ids = itertools.count(1)
        self._last_ts = 0
        self.channels: dict[str, str] = dict(workspace.channels)  # id → name (DMs too)
        self.dms: dict[str, str] = {}  # user → D… channel
        self.messages: dict[str, dict[str, Any]] = {}  # ts → message
        self.ephemerals: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}  # view id → view object (modals)
        self.view_owner: dict[str, str] = {}  # view id → the user who sees it
        self.view_errors: dict[str, dict[str, str]] = {}  # view id → block id → error (a submission's answer)
        self.home: dict[str, dict[str, Any]] = {}  # user → published Home view
        self.triggers: dict[str, tuple[str, float]] = {}  # trigger id → (user, issued at)
        self.notes: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ locking and waking

    @property
    def lock(self) -> threading.Condition:
        return self._changed

    def touch(self) -> None:
        """Something changed: pages waiting for a change are answered (call with the lock held)."""
        self.version += 1
        self._changed.notify_all()

    def wait_for_change(self, since: int, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self.version != since or self.closed, timeout)
            return self.version

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    # ------------------------------------------------------------------ ids

    def next_ts(self) -> str:
        """Unique, increasing, shaped like Slack's `1700000000.000100`."""
        micros = max(int(time.time() * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def new_view_id(self) -> str:
        return f"V0SANDBOX{next(self._ids):06d}"

    def issue_trigger(self, user: str) -> str:
        """A click's `trigger_id`: what `views.open` exchanges for a modal shown to `user`."""
        trigger = f"{next(self._ids)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
        now = time.monotonic()
        with self._changed:
            for old in [t for t, (_, at) in self.triggers.items() if now - at > TRIGGER_KEPT_S]:
                del self.triggers[old]
            self.triggers[trigger] = (user, now)
        return trigger

    # ------------------------------------------------------------------ channels

    def channel_for(self, channel: str | None) -> str | None:
        """The channel a post lands in: a known one, a DM (posting to a user id opens the DM), or
        a new public channel for an id the workspace did not have yet (a policy naming its own)."""
        if not channel:
            return None
        if channel[0] in "UW":
            return self.dm_of(channel) if self.workspace.person(channel) else None
        if channel in self.channels:
            return channel
        if channel[0] in "CG" and channel[1:].isalnum() and channel.isupper() and len(channel) <= 24:
            self.channels[channel] = channel.lower()
            self.note(
                None, f"jit posted to {channel}, which the sandbox did not have yet: it is shown as #{channel.lower()}"
            )
            return channel
        return None

    def dm_of(self, user: str) -> str:
        if user not in self.dms:
            dm = f"D{user[1:]}"
            self.dms[user] = dm
            self.channels[dm] = f"jit ↔ {self._name(user)}"
        return self.dms[user]

    def _name(self, user: str) -> str:
        person = self.workspace.person(user)
        return person.name if person else user

    def visible_to(self, channel: str, user: str) -> bool:
        """Channels are public; a DM only to the person it is with."""
        if channel.startswith("D"):
            return self.dms.get(user) == channel
        return True

    # ------------------------------------------------------------------ messages

    def message_object(self, m: dict[str, Any]) -> dict[str, Any]:
        """A message as Slack's API (and its payloads) show it."""
        out: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "text": m["text"],
            "ts": m["ts"],
        }
        for key in ("blocks", "attachments", "thread_ts", "metadata"):
            if m.get(key) is not None:
                out[key] = copy.deepcopy(m[key])
        if m.get("edited_ts"):
            out["edited"] = {"user": BOT_USER_ID, "ts": m["edited_ts"]}
        return out

    def add_ephemeral(self, ephemeral: dict[str, Any]) -> None:
        """A message only `ephemeral["user"]` sees (call with the lock held)."""
        self.ephemerals.append(ephemeral)
        del self.ephemerals[:-MAX_EPHEMERALS]

    def note(self, user: str | None, text: str) -> None:
        """Something the sandbox wants the person at the page to know (for `user`, or everyone)."""
        with self._changed:
            self.notes.append({"ts": self.next_ts(), "user": user, "text": text})
            del self.notes[:-MAX_NOTES]
            self.touch()

    # ------------------------------------------------------------------ modals (call with the lock held)

    def replace_view(self, view_id: str, view: dict[str, Any]) -> None:
        from_view = self.views[view_id]
        self.views[view_id] = view_object(view, view_id, from_view["root_view_id"])
        self.view_errors.pop(view_id, None)

    def close_view(self, view_id: str) -> None:
        self.views.pop(view_id, None)
        self.view_owner.pop(view_id, None)
        self.view_errors.pop(view_id, None)

    def close_views(self, user: str) -> None:
        for view_id in [v for v, owner in self.view_owner.items() if owner == user]:
            self.close_view(view_id)

    # ------------------------------------------------------------------ the page's view

    def snapshot(self, user: str) -> dict[str, Any]:
        """Everything `user` may see, for the page."""
        with self._changed:
            channels = [
                {"id": cid, "name": name, "dm": cid.startswith("D")}
                for cid, name in self.channels.items()
                if self.visible_to(cid, user)
            ]
            messages = [
                {**self.message_object(m), "channel": m["channel"]}
                for m in self.messages.values()
                if self.visible_to(m["channel"], user)
            ]
            ephemerals = [copy.deepcopy(e) for e in self.ephemerals if e["user"] == user]
            modal = next(
                (
                    {**copy.deepcopy(v), "errors": dict(self.view_errors.get(vid, {}))}
                    for vid, v in reversed(self.views.items())
                    if self.view_owner.get(vid) == user
                ),
                None,
            )
            return {
                "version": self.version,
                "me": user,
                "team": {"id": TEAM_ID, "bot_user_id": BOT_USER_ID},
                "people": [vars(p) for p in self.workspace.people],
                "groups": {
                    gid: {"handle": self.workspace.group_handles.get(gid, gid), "members": list(members)}
                    for gid, members in self.workspace.groups.items()
                },
                "channels": channels,
                "messages": messages,
                "ephemerals": ephemerals,
                "modal": modal,
                "home": copy.deepcopy(self.home.get(user)),
                "notes": [n for n in self.notes if n["user"] in (None, user)],
            }


def view_object(view: dict[str, Any], view_id: str, root: str | None = None) -> dict[str, Any]:
    return {
        "id": view_id,
        "team_id": TEAM_ID,
        "type": view.get("type", "modal"),
        "blocks": copy.deepcopy(view.get("blocks") or []),
        "private_metadata": str(view.get("private_metadata") or ""),
        "callback_id": str(view.get("callback_id") or ""),
        "state": {"values": {}},
        "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
        "title": copy.deepcopy(view.get("title")),
        "clear_on_close": bool(view.get("clear_on_close", False)),
        "notify_on_close": bool(view.get("notify_on_close", False)),
        "close": copy.deepcopy(view.get("close")),
        "submit": copy.deepcopy(view.get("submit")),
        "previous_view_id": None,
        "root_view_id": root or view_id,
        "app_id": APP_ID,
        "external_id": str(view.get("external_id") or ""),
        "app_installed_team_id": TEAM_ID,
        "bot_id": BOT_ID,
    }
