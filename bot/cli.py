"""The `jit` command: serve, worker, policy check, audit, request/release, dev, bench."""

from __future__ import annotations

import argparse
import os
import sys


def _settings():
    from bot.settings import load_settings

    return load_settings()


def _runtime(policy_file: str | None = None):
    from bot.runtime import Runtime, install

    rt = Runtime(_settings(), policy_path=policy_file)
    install(rt)
    return rt


# ------------------------------------------------------------------------- serve


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
            self.cfg.set("worker_class", "gevent")
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_connections", 4000)
            self.cfg.set("timeout", 90)  # above the 60 s long-poll cap
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("keepalive", 75)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")

        def load(self):
            from bot.runtime import Runtime, install
            from bot.web import create_app

            worker_rt = Runtime(rt.settings, policy_path=rt.policy_path)
            install(worker_rt)
            return create_app(worker_rt)

    print(f"jit: serving on http://{args.host}:{args.port} (Slack: /slack/events, pipelines: /v1/requests)", file=sys.stderr)
    JitServer().run()
    return 0


# ------------------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.runner import run_worker

    rt = _runtime()
    from bot import logs

    logs.setup(rt.settings.jit_log_level)
    rt.load_policy_or_exit()
    return run_worker(rt, concurrency=args.concurrency, burst=args.burst, scheduler=not args.no_scheduler)


# ------------------------------------------------------------------------- policy


def cmd_policy_check(args: argparse.Namespace) -> int:
    from bot.domain.errors import PolicyError
    from bot.domain.policy import load_policy

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
    return 0


# ------------------------------------------------------------------------- audit


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from bot.domain.audit import AuditLog
    from bot.runtime import redis_from_url

    url = os.environ.get("REDIS_URL") or _settings().redis_url
    log = AuditLog(redis_from_url(url, decode_responses=True))
    n, broken = log.verify()
    if broken:
        print(f"audit chain BROKEN at entry {broken.seq} (stream id {broken.stream_id}): {broken.reason}")
        return 1
    head = log.head()
    print(f"audit chain ok: {n} entries, head {head.get('hash', '-')}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from bot.domain.audit import AuditLog, canonical
    from bot.domain.clock import now, parse_duration, to_ms
    from bot.runtime import redis_from_url

    url = os.environ.get("REDIS_URL") or _settings().redis_url
    log = AuditLog(redis_from_url(url, decode_responses=True))
    since_ms = None
    if args.since:
        since_ms = _parse_since(args.since, now, parse_duration, to_ms)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for e in log.entries(since_ms=since_ms):
            if args.request and e.body.get("request_id") != args.request:
                continue
            out.write(canonical({**e.body, "hash": e.hash}) + "\n")
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
    av = aud.add_parser("verify", help="walk the hash chain; exit 1 naming the first broken entry")
    av.set_defaults(func=cmd_audit_verify)
    ae = aud.add_parser("export", help="write the trail as JSON Lines")
    ae.add_argument("--since", help="a duration (2h) or an RFC 3339 time")
    ae.add_argument("--request", help="only this request id")
    ae.add_argument("--output", "-o", help="file to write (default: stdout)")
    ae.set_defaults(func=cmd_audit_export)

    for name in ("request", "release"):
        c = sub.add_parser(name, help=f"pipeline client: {name} access", add_help=False)
        c.add_argument("rest", nargs=argparse.REMAINDER)
        c.set_defaults(func=lambda a, _n=name: _client([_n, *a.rest]))

    d = sub.add_parser("dev", help="server, worker and Redis in one command, for trying it out")
    d.add_argument("--port", type=int, default=3000)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--example-policy", action="store_true", help="write a commented starter jit-policy.yaml")
    d.add_argument("--data-dir", default=".jit")
    d.set_defaults(func=lambda a: _dev(a))

    b = sub.add_parser("bench", help="run the benchmarks (see bench/)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=lambda a: _bench(a.rest))
    return p


def _client(argv: list[str]) -> int:
    from bot import client

    return client.main(argv)


def _dev(args: argparse.Namespace) -> int:
    from bot import dev

    return dev.main(args)


def _bench(argv: list[str]) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
