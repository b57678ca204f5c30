"""The `jit` command: serve, worker, policy check, audit, request/release, dev, bench."""

from __future__ import annotations

import argparse
import os
import sys


def _settings():
    from bot.settings import load_settings

    return load_settings()


def _runtime(policy_file: str | None = None):
    from bot.wiring import Runtime, install

    rt = Runtime(_settings(), policy_path=policy_file)
    install(rt)
    return rt


# ------------------------------------------------------------------------- serve

#: gunicorn limits of `jit serve` (see cmd_serve): seconds an idle keep-alive connection stays open;
#: bytes in the request line; header fields; bytes in one header field (an OIDC token fits).
KEEPALIVE_S = 5
LIMIT_REQUEST_LINE = 2048
LIMIT_REQUEST_FIELDS = 32
LIMIT_REQUEST_FIELD_SIZE = 8190


def cmd_serve(args: argparse.Namespace) -> int:
    # Long-polls hold a connection each: gevent greenlets make thousands cheap. Patch before
    # anything imports sockets.
    from gevent import monkey

    monkey.patch_all()

    from gunicorn.app.base import BaseApplication

    from bot import logs

    rt = _runtime()
    logs.setup(rt.settings.jit_log_level)
    rt.load_policy_or_exit()

    class JitServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            # gevent, closing idle keep-alive connections at shutdown (bot/web/gevent_worker.py)
            self.cfg.set("worker_class", "bot.web.gevent_worker.GracefulGeventWorker")
            self.cfg.set("workers", args.workers)
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

        def load(self):
            from bot.wiring import Runtime, install
            from bot.web.app import create_app

            worker_rt = Runtime(rt.settings, policy_path=rt.policy_path)
            install(worker_rt)
            # Each gunicorn worker watches the policy file itself. SIGHUP to the master makes
            # gunicorn boot fresh workers, which load the file here (or, if it is invalid now,
            # keep the last recorded policy): see bot/policy_reload.py.
            from bot.policy_reload import PolicyReloader

            reloader = PolicyReloader(worker_rt)
            reloader.load_initial()
            try:
                worker_rt.record_policy_loaded("start")
            except Exception:  # noqa: BLE001 - Redis down at boot: the next load records it
                pass
            reloader.start()
            flask_app = create_app(worker_rt)
            if worker_rt.settings.slack_app_token is not None:
                # One Socket Mode connection per server process: Slack spreads envelopes
                # over all of an app's open sockets, and any process can handle any click.
                from bot.decision.slack.socket_mode import start_socket_mode

                flask_app.config["JIT_SOCKET_MODE"] = start_socket_mode(worker_rt)
            return flask_app

    slack_in = "Socket Mode and /slack/events" if rt.settings.slack_app_token else "/slack/events"
    print(f"jit: serving on http://{args.host}:{args.port} (Slack: {slack_in}, pipelines: /v1/requests)", file=sys.stderr)
    JitServer().run()
    return 0


# ------------------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.run import run_worker

    rt = _runtime()
    from bot import logs

    logs.setup(rt.settings.jit_log_level)
    rt.load_policy_or_exit()
    return run_worker(rt, concurrency=args.concurrency, burst=args.burst, scheduler=not args.no_scheduler)


# ------------------------------------------------------------------------- policy


def cmd_policy_check(args: argparse.Namespace) -> int:
    from bot.core.errors import PolicyError
    from bot.core.policy.load import load_policy

    path = args.file or os.environ.get("JIT_POLICY_FILE") or "jit-policy.yaml"
    try:
        policy = load_policy(path)
    except PolicyError as e:
        for line in e.errors:
            print(line)
        print(f"{len(e.errors)} error(s) in {path}", file=sys.stderr)
        return 1
    print(
        f"{path}: ok — {len(policy.actions)} action(s), {len(policy.pipelines)} pipeline(s), "
        f"sha256 {policy.sha256}"
    )
    for name, (_gtype, config) in policy.grants.items():
        for warning in config.warnings(os.environ):
            print(f"{path}: actions.{name}.grant: warning: {warning}")
    return 0


# ------------------------------------------------------------------------- audit


def _audit_log(keys_from: str | None = None):
    """The trail from REDIS_URL, with JIT_SECRET_KEY (+ previous) when set: the audit tools need
    nothing else, in particular no Slack settings."""
    from bot.store.audit import AuditKeys, AuditLog
    from bot.core.crypto import AuditSigner
    from bot.wiring import redis_from_url
    from bot.settings import Settings

    url = os.environ.get("REDIS_URL") or Settings.model_fields["redis_url"].default
    secret = os.environ.get("JIT_SECRET_KEY", "").strip()
    previous = [k.strip() for k in os.environ.get("JIT_PREVIOUS_SECRET_KEYS", "").split(",") if k.strip()]
    signer = AuditSigner(secret, previous) if secret else None
    keys = AuditKeys(_load_key_set(keys_from)) if keys_from else None
    return AuditLog(redis_from_url(url, decode_responses=True), signer=signer, keys=keys)


def _load_key_set(source: str) -> dict:
    """A JWKS from a file or an http(s) URL (jit serves it at /.well-known/jit-audit-keys.json)."""
    import json

    try:
        if source.startswith(("http://", "https://")):
            import requests

            resp = requests.get(source, timeout=10, allow_redirects=False)
            resp.raise_for_status()
            return resp.json()
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # requests' errors are OSErrors, bad JSON ValueErrors
        raise SystemExit(f"jit: cannot read audit keys from {source}: {e}") from None


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from bot.store.audit import Checkpoint, read_export

    try:
        checkpoints = [Checkpoint.parse(c) for c in args.checkpoint or []]
    except ValueError as e:
        raise SystemExit(f"jit: --checkpoint: {e}") from None
    log = _audit_log(args.keys)
    if log.keys is None:
        print("jit: no audit keys: set JIT_SECRET_KEY (and JIT_PREVIOUS_SECRET_KEYS after a rotation) "
              "or pass --keys FILE_OR_URL (the key set jit publishes at /.well-known/jit-audit-keys.json)",
              file=sys.stderr)
        return 2
    trimmed = []
    for path in args.trimmed or []:
        try:
            with open(path, encoding="utf-8") as f:
                trimmed += read_export(f, source=path)
        except (OSError, ValueError) as e:
            print(f"audit export NOT usable: {e}")
            return 1
    n, broken = log.verify(checkpoints, trimmed)
    if broken and broken.stream_id == "checkpoint":
        print(f"audit chain does NOT match {broken.reason}")
        return 1
    if broken:
        where = f"stream id {broken.stream_id}" if broken.stream_id[:1].isdigit() else broken.stream_id
        print(f"audit chain BROKEN at entry {broken.seq} ({where}): {broken.reason}")
        return 1
    head = log.head()
    anchor = log.anchor()
    since = f" (entries up to #{anchor['seq']} trimmed; anchored on {anchor['hash']})" if anchor else ""
    print(f"audit chain ok: {n} entries, head #{head.get('seq', 0)} {head.get('hash', '-')}, every entry "
          f"signed by a known key ({', '.join(log.keys.kids)}){since}")
    if trimmed:
        print(f"the {len(trimmed)} exported entries given join the trail")
    if checkpoints:
        print(f"audit chain matches {len(checkpoints)} checkpoint(s)")
    if waiting := log.pending():
        print(f"note: {waiting} event(s) wait in the audit outbox, not chained yet "
              "(a jit process holding JIT_SECRET_KEY chains them)")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from bot.store.audit import export_line
    from bot.core.clock import now, parse_duration, to_ms

    log = _audit_log()
    since_ms = None
    if args.since:
        since_ms = _parse_since(args.since, now, parse_duration, to_ms)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for e in log.entries(since_ms=since_ms):
            if args.request and e.body.get("request_id") != args.request:
                continue
            out.write(export_line(e) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _parse_since(value: str, now, parse_duration, to_ms) -> int:
    from datetime import datetime

    try:
        return to_ms(now() - parse_duration(value))
    except ValueError:
        pass
    try:
        return to_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise SystemExit(f"jit: --since takes a duration (2h) or an RFC 3339 time, not {value!r}") from None


# ------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jit", description="Just-in-time access for CI/CD pipelines, approved in Slack.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="the HTTP server: Slack endpoint and pipeline hook")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--workers", type=int, default=int(os.environ.get("JIT_WEB_WORKERS", "2")))
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="RQ workers plus the expiry scheduler")
    w.add_argument("--concurrency", type=int, default=int(os.environ.get("JIT_WORKER_CONCURRENCY", "2")))
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.add_argument("--no-scheduler", action="store_true", help="run jobs only, no expiry scheduler")
    w.set_defaults(func=cmd_worker)

    pol = sub.add_parser("policy", help="policy tools").add_subparsers(dest="policy_cmd", required=True)
    pc = pol.add_parser("check", help="validate a policy file")
    pc.add_argument("file", nargs="?")
    pc.set_defaults(func=cmd_policy_check)

    aud = sub.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit_cmd", required=True)
    av = aud.add_parser("verify", help="check every link and signature; exit 1 naming the first bad entry")
    av.add_argument("--checkpoint", action="append", metavar="SEQ:SHA256[:SIG]",
                    help="a chain head posted to the audit channel; the trail must still contain it")
    av.add_argument("--trimmed", action="append", metavar="FILE",
                    help="an earlier `jit audit export` holding entries retention removed from Redis")
    av.add_argument("--keys", metavar="FILE_OR_URL",
                    help="the audit key set (/.well-known/jit-audit-keys.json); default: from JIT_SECRET_KEY")
    av.set_defaults(func=cmd_audit_verify)
    ae = aud.add_parser("export", help="write the trail as JSON Lines (with hashes and signatures)")
    ae.add_argument("--since", help="a duration (2h) or an RFC 3339 time")
    ae.add_argument("--request", help="only this request id")
    ae.add_argument("--output", "-o", help="file to write (default: stdout)")
    ae.set_defaults(func=cmd_audit_export)

    # request, release and bench parse their own arguments: main() hands them the rest of the
    # line before this parser sees it. These entries only list them in `jit --help`.
    sub.add_parser("request", help="pipeline client: ask for access (jit request --help)", add_help=False)
    sub.add_parser("release", help="pipeline client: end a request (jit release --help)", add_help=False)

    d = sub.add_parser("dev", help="server, worker and Redis in one command, for trying it out")
    d.add_argument("--port", type=int, default=3000)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--example-policy", action="store_true", help="write a commented starter jit-policy.yaml")
    d.add_argument("--data-dir", default=".jit")
    d.set_defaults(func=lambda a: _dev(a))

    sub.add_parser("bench", help="run the benchmarks (jit bench --help)", add_help=False)
    return p


def _client(argv: list[str]) -> int:
    import jit_client  # stdlib urllib/ssl: never imported before `jit serve` lets gevent patch

    return jit_client.main(argv, prog="jit")


def _dev(args: argparse.Namespace) -> int:
    from bot import dev

    return dev.main(args)


def _bench(argv: list[str]) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(argv)


#: Commands with a parser of their own, each handed the rest of the command line untouched
#: (argparse.REMAINDER would refuse options before the first positional: `jit request --help`).
PASSTHROUGH = {
    "request": lambda rest: _client(["request", *rest]),
    "release": lambda rest: _client(["release", *rest]),
    "bench": lambda rest: _bench(rest),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        return int(PASSTHROUGH[argv[0]](argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
