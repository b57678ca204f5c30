"""What people do at the page (click, submit a modal, type a slash command, open Home), sent to jit as Slack would."""

from __future__ import annotations

import copy
import secrets
import urllib.error
from typing import Any

from bot.sandbox import payloads
from bot.sandbox.payloads import FORM, JSON, Answer, SignedSender
from bot.sandbox.state import SlackState
from bot.sandbox.web_api import apply_update, chat_post_message
from bot.sandbox.workspace import Person

#: Response URLs remembered (Slack's live for 30 minutes; the newest are plenty here).
MAX_RESPONSE_URLS = 500


class Refused(Exception):
    """The page asked for something that is not there (no such user, button or view)."""


class People:
    """The people of the workspace, acting through the page. Buttons are looked up in the
    sandbox's own copy of the message or view: the page says which button, never what it holds."""

    def __init__(self, state: SlackState, jit: SignedSender, base_url: str) -> None:
        self.state = state
        self.jit = jit
        self.base_url = base_url.rstrip("/")
        self.responses: dict[str, dict[str, Any]] = {}  # response_url key → what it answers for

    # ------------------------------------------------------------------ helpers

    def person(self, user_id: object) -> Person:
        person = self.state.workspace.person(str(user_id))
        if person is None:
            raise Refused("no such user")
        return person

    def _response_url(self, **target: Any) -> str:
        key = secrets.token_urlsafe(18)
        with self.state.lock:
            self.responses[key] = target
            for old in list(self.responses)[:-MAX_RESPONSE_URLS]:
                del self.responses[old]
        return f"{self.base_url}/response/{key}"

    def _send(self, person: Person, what: str, body: bytes, content_type: str) -> Answer | None:
        try:
            answer = self.jit.send(body, content_type)
        except (urllib.error.URLError, OSError) as e:
            self.state.note(person.id, f"jit did not answer the {what}: {type(e).__name__}")
            return None
        if answer.seconds > payloads.SLACK_ANSWER_S:
            self.state.note(
                person.id,
                f"jit answered the {what} after {answer.seconds:.1f} s; Slack gives up after 3 s and shows an error",
            )
        if answer.status != 200:
            why = answer.body[:200].decode("utf-8", "replace").strip()
            self.state.note(person.id, f"jit refused the {what}: HTTP {answer.status} {why}")
        return answer

    # ------------------------------------------------------------------ clicks

    def click(self, user_id: object, where: dict[str, Any], block_index: object, element_index: object) -> None:
        """A button click in a message, an ephemeral message, a modal or the Home tab."""
        person = self.person(user_id)
        trigger = self.state.issue_trigger(person.id)
        s = self.state
        with s.lock:
            kind = where.get("kind")
            if kind == "message":
                msg = s.messages.get(str(where.get("ts")))
                if msg is None or not s.visible_to(msg["channel"], person.id):
                    raise Refused("no such message")
                blocks, channel, ts = msg.get("blocks") or [], msg["channel"], msg["ts"]
            elif kind == "ephemeral":
                eph = next((e for e in s.ephemerals if e["ts"] == where.get("ts") and e["user"] == person.id), None)
                if eph is None:
                    raise Refused("no such message")
                blocks, channel, ts = eph.get("blocks") or [], eph["channel"], eph["ts"]
            elif kind in ("modal", "home"):
                view = self._view_of(person, kind, where.get("view_id"))
                blocks = view["blocks"]
            else:
                raise Refused("no such place")
            block_id, element = _button(blocks, block_index, element_index)
            action = payloads.button_action(block_id, element)
            if kind == "message":
                payload = payloads.block_actions(
                    person,
                    action,
                    trigger,
                    message=s.message_object(msg),
                    channel=(channel, s.channels.get(channel, channel)),
                    message_ts=ts,
                    response_url=self._response_url(user=person.id, channel=channel, ts=ts),
                )
            elif kind == "ephemeral":
                payload = payloads.block_actions(
                    person,
                    action,
                    trigger,
                    channel=(channel, s.channels.get(channel, channel)),
                    message_ts=ts,
                    response_url=self._response_url(user=person.id, channel=channel),
                )
            else:
                payload = payloads.block_actions(person, action, trigger, view=copy.deepcopy(view))
        self._send(person, f"click on “{_label(element)}”", payloads.form_payload(payload), FORM)

    def _view_of(self, person: Person, kind: str, view_id: object) -> dict[str, Any]:
        s = self.state
        if kind == "home":
            view = s.home.get(person.id)
        else:
            view = s.views.get(str(view_id)) if s.view_owner.get(str(view_id)) == person.id else None
        if view is None or (view_id is not None and view["id"] != view_id):
            raise Refused("no such view")
        return view

    # ------------------------------------------------------------------ modals

    def submit(self, user_id: object, view_id: object, values: object) -> None:
        """The modal's submit button: a `view_submission` with what was typed; jit's answer closes
        the modal, shows errors next to the inputs, or replaces the view."""
        person = self.person(user_id)
        s = self.state
        with s.lock:
            view = copy.deepcopy(self._view_of(person, "modal", view_id))
        typed = _typed_values(view, values)
        payload = payloads.view_submission(person, view, typed, s.issue_trigger(person.id))
        answer = self._send(person, "modal submission", payloads.form_payload(payload), FORM)
        if answer is None or answer.status != 200:
            return
        reply = answer.json() or {}
        with s.lock:
            if view["id"] not in s.views:
                return
            action = reply.get("response_action")
            if action == "errors" and isinstance(reply.get("errors"), dict):
                s.view_errors[view["id"]] = {str(k): str(v) for k, v in reply["errors"].items()}
            elif action == "update" and isinstance(reply.get("view"), dict):
                s.replace_view(view["id"], reply["view"])
            elif action == "clear":
                s.close_views(person.id)
            else:
                s.close_view(view["id"])
            s.touch()

    def close(self, user_id: object, view_id: object) -> None:
        person = self.person(user_id)
        with self.state.lock:
            self._view_of(person, "modal", view_id)
            self.state.close_view(str(view_id))
            self.state.touch()

    # ------------------------------------------------------------------ slash commands and Home

    def command(self, user_id: object, channel_id: object, line: object) -> None:
        """`/jit status` typed in a channel: the command's form, signed; the ack body is shown to
        the person alone (ephemeral) unless it says `in_channel`."""
        person = self.person(user_id)
        s = self.state
        text = str(line or "").strip()
        command, _, rest = text.partition(" ")
        with s.lock:
            channel = str(channel_id)
            if channel not in s.channels or not s.visible_to(channel, person.id):
                raise Refused("no such channel")
            name = s.channels[channel]
        if not command.startswith("/") or command == "/":
            s.note(person.id, "The sandbox sends slash commands only: try /jit status or /jit audit")
            return
        body = payloads.slash_command(
            person,
            command,
            rest.strip(),
            (channel, name),
            self._response_url(user=person.id, channel=channel, command=text),
            s.issue_trigger(person.id),
        )
        answer = self._send(person, f"command {command}", body, FORM)
        if answer is None or answer.status != 200:
            return
        reply = answer.json()
        if reply is None:
            plain = answer.body.decode("utf-8", "replace").strip()
            reply = {"text": plain} if plain else None
        if reply:
            self._show(person.id, channel, reply, text)

    def open_home(self, user_id: object) -> None:
        """Opening the app's Home tab: an `app_home_opened` event (jit publishes the view)."""
        person = self.person(user_id)
        with self.state.lock:
            dm = self.state.dm_of(person.id)
            view = copy.deepcopy(self.state.home.get(person.id))
            self.state.touch()
        self._send(person, "Home tab event", payloads.app_home_opened(person, dm, view), JSON)

    def respond(self, key: str, body: dict[str, Any]) -> bool:
        """A POST to a `response_url`: a message for the person who acted, or a change to the message
        they clicked in (`replace_original`, `delete_original`)."""
        target = self.responses.get(key)
        if target is None:
            return False
        s = self.state
        with s.lock:
            msg = s.messages.get(target.get("ts") or "")
            if msg is not None and _truthy(body.get("delete_original")):
                del s.messages[msg["ts"]]
            elif msg is not None and _truthy(body.get("replace_original")):
                apply_update(s, msg, body)
            else:
                self._show(target["user"], target["channel"], body, target.get("command"))
            s.touch()
        return True

    def _show(self, user: str, channel: str, reply: dict[str, Any], command: str | None) -> None:
        s = self.state
        with s.lock:
            if reply.get("response_type") == "in_channel":
                chat_post_message(s, {"channel": channel, "text": reply.get("text"), "blocks": reply.get("blocks")})
            else:
                s.add_ephemeral(
                    {
                        "channel": channel,
                        "user": user,
                        "ts": s.next_ts(),
                        "text": str(reply.get("text") or ""),
                        "blocks": reply.get("blocks") if isinstance(reply.get("blocks"), list) else None,
                        "thread_ts": None,
                        "source": "command",
                        "command": command,
                    }
                )
            s.touch()


def _button(blocks: list[Any], block_index: object, element_index: object) -> tuple[str, dict[str, Any]]:
    """(block_id, button) at these positions: an `actions` block's element or a section's accessory."""
    try:
        block = blocks[int(block_index)]  # type: ignore[arg-type]
        if block.get("type") == "actions":
            element = block["elements"][int(element_index)]  # type: ignore[arg-type]
        else:
            element = block["accessory"]
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        raise Refused("no such button") from None
    if not isinstance(element, dict) or element.get("type") != "button":
        raise Refused("no such button")
    # Slack gives a block without a block_id one of its own; a stable one here
    block_id = block.get("block_id") or f"sandbox-{int(block_index)}"  # type: ignore[arg-type]
    return str(block_id), element


def _typed_values(view: dict[str, Any], values: object) -> dict[str, dict[str, str]]:
    """What was typed, for the view's own text inputs only (block and action ids from the view)."""
    typed = values if isinstance(values, dict) else {}
    out: dict[str, dict[str, str]] = {}
    for block in view.get("blocks") or []:
        element = block.get("element") or {}
        if block.get("type") != "input" or element.get("type") != "plain_text_input":
            continue
        block_id, action_id = str(block.get("block_id", "")), str(element.get("action_id", ""))
        text = (typed.get(block_id) or {}).get(action_id) if isinstance(typed.get(block_id), dict) else None
        out[block_id] = {action_id: str(text) if isinstance(text, str) else ""}
    return out


def _label(element: dict[str, Any]) -> str:
    text = element.get("text")
    return str(text.get("text", "")) if isinstance(text, dict) else "a button"


def _truthy(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


__all__ = ["People", "Refused"]
