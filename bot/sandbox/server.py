"""The sandbox's HTTP server on 127.0.0.1: Slack's Web API for jit, and the page people click in."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bot.sandbox import web_api
from bot.sandbox.payloads import SignedSender
from bot.sandbox.people import People, Refused
from bot.sandbox.state import SlackState
from bot.sandbox.workspace import Workspace, starter_workspace

log = logging.getLogger("jit.sandbox")

MAX_API_BODY = 1024 * 1024
MAX_PAGE_BODY = 64 * 1024
#: How long the page's request for news waits before answering "nothing new".
PAGE_WAIT_S = 20.0
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
#: The page runs only its own script and style, talks only to this server, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Sandbox:
    """A local Slack for `jit dev`: jit calls its Web API (`api_url`, with `bot_token`), and people
    click at `url`; their clicks reach `events_url` signed with `signing_secret`. Without an
    `events_url` there is no page: jit's Slack calls are answered and go no further."""

    def __init__(
        self,
        events_url: str | None,
        signing_secret: str,
        bot_token: str,
        *,
        port: int = 0,
        workspace: Workspace | None = None,
    ) -> None:
        self.has_page = events_url is not None
        self.bot_token = bot_token
        self.page_token = secrets.token_urlsafe(24)  # a header only the page's own script sends
        self.state = SlackState(workspace or starter_workspace())
        self._server = _Server(("127.0.0.1", port), _handler_for(self))
        self.port = self._server.server_address[1]
        self.people = People(self.state, SignedSender(events_url or "", signing_secret), self.url)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What SLACK_API_URL is set to (slack_sdk appends the method name)."""
        return f"{self.url}/api/"

    def start(self) -> Sandbox:
        self._thread = threading.Thread(target=self._server.serve_forever, name="jit-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.close()  # pages waiting for news are answered
        self._server.shutdown()
        self._server.server_close()

    def allowed_host(self, host: str | None) -> bool:
        """Only the names this server is reached by: a page on another name (DNS rebinding) gets nothing."""
        return host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, no traceback; a page that went away while it was answered (a user switch, a
        closed tab) is not an error at all."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            log.error("jit sandbox: could not answer a request: %r", error)


def _handler_for(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = sandbox

    return Handler


class _Handler(BaseHTTPRequestHandler):
    owner: Sandbox
    server_version = "jit-sandbox/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: jit dev has its own output
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    # ------------------------------------------------------------------ routing

    def _serve(self, verb: str) -> None:
        if not self.owner.allowed_host(self.headers.get("Host")):
            self._send(421, {"ok": False, "error": "wrong_host"})
            return
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        try:
            if parts[0] == "api" and len(parts) == 2:
                self._api(parts[1], url.query)
            elif parts[0] == "response" and len(parts) == 2 and verb == "POST":
                self._response_url(parts[1])
            elif not self.owner.has_page:
                self._send(404, {"ok": False, "error": "not_found"})
            elif url.path == "/" and verb == "GET":
                self._page()
            elif parts[0] == "static" and len(parts) == 2 and parts[1] in STATIC and verb == "GET":
                self._static(parts[1])
            elif parts[0] == "ui" and len(parts) == 2:
                self._ui(verb, parts[1], url.query)
            else:
                self._send(404, {"ok": False, "error": "not_found"})
        except Refused as e:
            self._send(404, {"ok": False, "error": str(e)})
        except TooLarge:
            self._send(413, {"ok": False, "error": "too_large"})
        except ValueError:
            self._send(400, {"ok": False, "error": "invalid_json"})

    def _body(self, limit: int) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit or length < 0:
            raise TooLarge
        return self.rfile.read(length) if length else b""

    # ------------------------------------------------------------------ jit's side

    def _api(self, method: str, query: str) -> None:
        body = self._body(MAX_API_BODY)
        try:
            params, body_token = web_api.parse_params(query, body, self.headers.get("Content-Type", ""))
        except (ValueError, UnicodeDecodeError):
            self._send(200, web_api.error("invalid_json" if body[:1] in (b"{", b"[") else "invalid_form_data"))
            return
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else body_token
        if not token:
            self._send(200, web_api.error("not_authed"))
        elif not hmac.compare_digest(token.encode(), self.owner.bot_token.encode()):
            self._send(200, web_api.error("invalid_auth"))
        else:
            self._send(200, web_api.call(self.owner.state, method, params))

    def _response_url(self, key: str) -> None:
        body = self._body(MAX_API_BODY)
        data = json.loads(body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("an object is expected")
        if self.owner.people.respond(key, data):
            self._send(200, {"ok": True})
        else:
            self._send(404, {"ok": False, "error": "expired_url"})

    # ------------------------------------------------------------------ the page

    def _page(self) -> None:
        html = resources.files("bot.sandbox").joinpath("static/index.html").read_text(encoding="utf-8")
        html = html.replace("{{PAGE_TOKEN}}", self.owner.page_token)  # url-safe base64: nothing to escape
        self._send_bytes(200, html.encode(), "text/html; charset=utf-8", PAGE_HEADERS)

    def _static(self, name: str) -> None:
        data = resources.files("bot.sandbox").joinpath(f"static/{name}").read_bytes()
        self._send_bytes(200, data, f"{STATIC[name]}; charset=utf-8", PAGE_HEADERS)

    def _ui(self, verb: str, what: str, query: str) -> None:
        """The page's own calls: they carry the page's token in a header, which a page from anywhere
        else cannot send without asking first (and this server answers no such preflight)."""
        sent = self.headers.get("X-Sandbox-Token", "")
        if not hmac.compare_digest(sent.encode(), self.owner.page_token.encode()):
            self._send(403, {"ok": False, "error": "not_the_sandbox_page"})
            return
        people, state = self.owner.people, self.owner.state
        if verb == "GET" and what == "state":
            args = dict(parse_qsl(query))
            user = people.person(args.get("user") or state.workspace.people[0].id).id
            state.wait_for_change(int(args.get("since") or -1), PAGE_WAIT_S)
            self._send(200, state.snapshot(user))
            return
        if verb != "POST" or (self.headers.get("Content-Type") or "").split(";")[0] != "application/json":
            self._send(415, {"ok": False, "error": "json_only"})
            return
        data = json.loads(self._body(MAX_PAGE_BODY) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("an object is expected")
        user = data.get("user")
        if what == "click":
            people.click(user, data.get("where") or {}, data.get("block"), data.get("element"))
        elif what == "submit":
            people.submit(user, data.get("view_id"), data.get("values"))
        elif what == "close":
            people.close(user, data.get("view_id"))
        elif what == "command":
            people.command(user, data.get("channel"), data.get("text"))
        elif what == "home":
            people.open_home(user)
        else:
            raise Refused("no such thing to do")
        self._send(200, {"ok": True})

    # ------------------------------------------------------------------ answers

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json; charset=utf-8", headers or {})

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class TooLarge(Exception):
    """A body over the endpoint's cap."""
