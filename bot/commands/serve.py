"""`jit serve`: gunicorn with gevent workers, each holding the Flask app (hook, Slack, /metrics).

gevent must patch the standard library before anything opens a socket: bot/cli.py patches, then
imports this module.
"""

from __future__ import annotations

import atexit
import sys

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from bot import logs
from bot.decision.slack.socket_mode import start_socket_mode
from bot.policy_reload import PolicyReloader
from bot.settings import load_settings
from bot.web.app import create_app
from bot.wiring import build

#: gunicorn limits of `jit serve` (see cmd_serve): seconds an idle keep-alive connection stays open;
#: bytes in the request line; header fields; bytes in one header field (an OIDC token fits).
KEEPALIVE_S = 5
LIMIT_REQUEST_LINE = 2048
LIMIT_REQUEST_FIELDS = 32
LIMIT_REQUEST_FIELD_SIZE = 8190


STOPPING = "jit: stopping — requests in flight finish, open long-polls are answered now with their status"


class JitArbiter(Arbiter):
    """gunicorn's master, with Ctrl-C (SIGINT) stopping as gracefully as SIGTERM, and saying so.

    gunicorn reads SIGINT as "quit now": workers exit mid-request and a waiting pipeline's
    long-poll is cut off. Here both signals stop accepting, let requests in flight finish and
    answer open long-polls at once (bot/web/gevent_worker.py), within seconds."""

    def handle_term(self) -> None:
        print(STOPPING, file=sys.stderr, flush=True)
        super().handle_term()

    def handle_int(self) -> None:
        self.handle_term()


def _stopped(server: Arbiter) -> None:  # noqa: ARG001 - gunicorn's on_exit hook
    print("jit: stopped", file=sys.stderr, flush=True)


def serve(host: str, port: int, workers: int | None = None) -> int:
    rt = build(load_settings())
    workers = rt.settings.jit_web_workers if workers is None else workers
    logs.setup(rt.settings.jit_log_level)
    rt.load_policy_or_exit()

    class JitServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            # gevent, closing idle keep-alive connections at shutdown (bot/web/gevent_worker.py)
            self.cfg.set("worker_class", "bot.web.gevent_worker.GracefulGeventWorker")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_connections", 4000)
            self.cfg.set("timeout", 90)  # above the 60 s long-poll cap
            # SIGTERM: stop accepting, let requests in flight finish (long-polls answer within
            # their `wait`, at most 60 s), then exit.
            self.cfg.set("graceful_timeout", 65)
            self.cfg.set("logger_class", "bot.logs.GunicornLogger")  # its own lines as JSON too
            # An idle keep-alive connection is closed after this many seconds. The same timer
            # bounds how long a client may take to send a request line and headers (the gevent
            # worker reads them under it), so a slow or silent client cannot pin connections.
            self.cfg.set("keepalive", KEEPALIVE_S)
            # What one request may make the server hold before any of jit's code runs.
            self.cfg.set("limit_request_line", LIMIT_REQUEST_LINE)
            self.cfg.set("limit_request_fields", LIMIT_REQUEST_FIELDS)
            self.cfg.set("limit_request_field_size", LIMIT_REQUEST_FIELD_SIZE)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")
            self.cfg.set("on_exit", _stopped)

        def run(self) -> None:
            JitArbiter(self).run()

        def load(self):
            worker_rt = build(rt.settings, rt.policy_path)
            # Each gunicorn worker watches the policy file itself. SIGHUP to the master makes
            # gunicorn boot fresh workers, which load the file here (or, if it is invalid now,
            # keep the last recorded policy): see bot/policy_reload.py.
            reloader = PolicyReloader(worker_rt)
            reloader.load_initial()
            try:
                worker_rt.record_policy_loaded("start")
            except Exception:  # noqa: BLE001 - Redis down at boot: the next load records it
                pass
            reloader.start()
            # a create answers once its state and audit event are stored; a thread chains the
            # trail for all of this worker's requests (bot/store/chainer.py), and another writes
            # the counts in /metrics once a second rather than one round trip per request
            worker_rt.audit.chain_in_background()  # stops (chaining what is left) at exit
            atexit.register(worker_rt.metrics.hold())  # at exit, writes what it holds
            flask_app = create_app(worker_rt)
            if worker_rt.settings.slack_app_token is not None:
                # One Socket Mode connection per server process: Slack spreads envelopes
                # over all of an app's open sockets, and any process can handle any click.
                flask_app.config["JIT_SOCKET_MODE"] = start_socket_mode(worker_rt)
            return flask_app

    slack_in = "Socket Mode and /slack/events" if rt.settings.slack_app_token else "/slack/events"
    print(
        f"jit: serving on http://{host}:{port} with {workers} workers (Slack: {slack_in}, pipelines: /v1/requests)",
        file=sys.stderr,
    )
    JitServer().run()
    return 0
