"""The `jit` command line: argparse only; each subcommand's work is in bot/commands/ (or the client)."""

from __future__ import annotations

import argparse
import os
import sys

from bot.commands.init import init  # standard library only: safe before gevent patches

# Each command's module is imported when the command runs: `jit serve` must let gevent patch
# the standard library before anything opens a socket, and `jit request` must stay light.


def cmd_serve(args: argparse.Namespace) -> int:
    from gevent import monkey  # first thing of `jit serve`: gevent patches before any import

    monkey.patch_all()
    from bot.commands.serve import serve  # after the patch: it opens sockets

    return serve(args.host, args.port, args.workers)


def cmd_worker(args: argparse.Namespace) -> int:
    from bot.commands.worker import worker  # imported when run: the CLI stays light

    return worker(args.concurrency, args.burst, not args.no_scheduler)


def cmd_init(args: argparse.Namespace) -> int:
    return init(args.dir, args.public_url)


def _policy_commands():
    from bot.commands import policy  # imported when run: the CLI stays light

    return policy


def _policy_file(args: argparse.Namespace) -> str:
    return args.file or os.environ.get("JIT_POLICY_FILE") or "jit-policy.yaml"


def cmd_policy_check(args: argparse.Namespace) -> int:
    return _policy_commands().check(_policy_file(args), named=args.file is not None)


def cmd_policy_test(args: argparse.Namespace) -> int:
    return _policy_commands().test(_policy_file(args), args.cases)


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"jit policy explain: {flag} takes KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def cmd_policy_explain(args: argparse.Namespace) -> int:
    commands = _policy_commands()
    try:
        at = commands.at_time(args.at)
    except ValueError as e:
        raise SystemExit(f"jit policy explain: --at: {e}") from None
    oncall: dict[str, dict[str, int]] = {}
    for schedule, who in _pairs(args.oncall, "--oncall").items():
        user, _, level = who.partition(":")
        oncall.setdefault(schedule, {})[user] = int(level or 1)
    ask = commands.Ask(
        pipeline=args.pipeline,
        action=args.action,
        at=at,
        ttl=args.ttl,
        context=_pairs(args.context, "--context"),
        verified=_pairs(args.verified, "--verified") if args.verified else None,
        requested_by=args.requested_by,
        break_glass=args.break_glass,
        oncall=oncall,
    )
    return commands.explain(_policy_file(args), ask)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from bot.commands.audit import verify  # imported when run: the CLI stays light

    return verify(args.checkpoint or [], args.trimmed or [], args.keys, args.evidence)


def cmd_audit_evidence(args: argparse.Namespace) -> int:
    from bot.commands.audit import evidence  # imported when run: the CLI stays light

    return evidence(args.request_id, args.output, args.format)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from bot.commands.audit import export  # imported when run: the CLI stays light

    return export(args.since, args.request, args.output)


# ------------------------------------------------------------------------- main


POLICY_FILE_HELP = "the policy file (default: $JIT_POLICY_FILE, else jit-policy.yaml)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jit", description="Just-in-time access for CI/CD pipelines, approved in Slack.")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser(
        "init",
        help="write .env (fresh secrets) and a starter jit-policy.yaml for docker compose; never overwrites",
    )
    i.add_argument("--dir", default=".", help="folder to write them in (default: here)")
    i.add_argument("--public-url", help="JIT_PUBLIC_URL: the https address Slack and pipelines reach")
    i.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="the HTTP server: Slack endpoint and pipeline hook")
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    s.add_argument("--port", type=int, default=3000, help="port to listen on (default: 3000)")
    s.add_argument("--workers", type=int, help="gunicorn workers (default: JIT_WEB_WORKERS, 2)")
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="RQ workers plus the expiry scheduler")
    w.add_argument("--concurrency", type=int, help="worker processes (default: JIT_WORKER_CONCURRENCY, 2)")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.add_argument("--no-scheduler", action="store_true", help="run jobs only, no expiry scheduler")
    w.set_defaults(func=cmd_worker)

    pol = sub.add_parser("policy", help="policy tools").add_subparsers(dest="policy_cmd", required=True)
    pc = pol.add_parser("check", help="validate a policy file")
    pc.add_argument("file", nargs="?", help=POLICY_FILE_HELP)
    pc.set_defaults(func=cmd_policy_check)
    pt = pol.add_parser("test", help="run a policy's cases; exit 1 with a diff when one fails")
    pt.add_argument("file", nargs="?", help=POLICY_FILE_HELP)
    pt.add_argument("--cases", help="the cases file (default: FILE with .cases.yaml, e.g. jit-policy.cases.yaml)")
    pt.set_defaults(func=cmd_policy_test)
    pe = pol.add_parser("explain", help="print, in words, what the policy does with one request")
    pe.add_argument("file", nargs="?", help=POLICY_FILE_HELP)
    pe.add_argument("--action", required=True, help="the action the request asks for")
    pe.add_argument("--pipeline", required=True, help="the pipeline that asks (a name under pipelines:)")
    pe.add_argument("--at", metavar="TIME", help="RFC 3339 time of the request (default: now)")
    pe.add_argument("--context", nargs="*", metavar="KEY=VALUE", help="the request's context")
    pe.add_argument("--verified", nargs="*", metavar="KEY=VALUE", help="claims an OIDC token vouches for")
    pe.add_argument("--requested-by", help="the request's requested_by")
    pe.add_argument("--ttl", help="the TTL asked for (default: the action's)")
    pe.add_argument("--break-glass", action="store_true", help="the request asks for break glass")
    pe.add_argument("--oncall", nargs="*", metavar="SCHEDULE=USER[:LEVEL]", help="who is on call")
    pe.set_defaults(func=cmd_policy_explain)

    aud = sub.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit_cmd", required=True)
    av = aud.add_parser("verify", help="check every link and signature; exit 1 naming the first bad entry")
    av.add_argument(
        "--checkpoint",
        action="append",
        metavar="SEQ:SHA256[:SIG]",
        help="a chain head posted to the audit channel; the trail must still contain it",
    )
    av.add_argument(
        "--trimmed",
        action="append",
        metavar="FILE",
        help="an earlier `jit audit export` holding entries retention removed from Redis",
    )
    av.add_argument(
        "--keys",
        metavar="FILE_OR_URL",
        help="the audit key set (/.well-known/jit-audit-keys.json); default: from JIT_SECRET_KEY",
    )
    av.add_argument(
        "--evidence",
        metavar="FILE",
        help="check an evidence bundle (`jit audit evidence`) offline instead of the trail: with --keys, no Redis",
    )
    av.set_defaults(func=cmd_audit_verify)
    ae = aud.add_parser("export", help="write the trail as JSON Lines (with hashes and signatures)")
    ae.add_argument("--since", help="a duration (2h) or an RFC 3339 time")
    ae.add_argument("--request", help="only this request id")
    ae.add_argument("--output", "-o", help="file to write (default: stdout)")
    ae.set_defaults(func=cmd_audit_export)
    ev = aud.add_parser("evidence", help="one request's signed evidence bundle, for auditors (verify it offline)")
    ev.add_argument("request_id", metavar="REQUEST_ID", help="the request's id (`jit request` printed it)")
    ev.add_argument("--output", "-o", help="file to write (default: stdout)")
    ev.add_argument("--format", choices=("json", "md"), default="json", help="json (default) or readable Markdown")
    ev.set_defaults(func=cmd_audit_evidence)

    # request, release and bench parse their own arguments: main() hands them the rest of the
    # line before this parser sees it. These entries only list them in `jit --help`.
    sub.add_parser("request", help="pipeline client: ask for access (jit request --help)", add_help=False)
    sub.add_parser("release", help="pipeline client: end a request (jit release --help)", add_help=False)
    sub.add_parser("extend", help="pipeline client: more time for a grant (jit extend --help)", add_help=False)
    sub.add_parser("run", help="pipeline client: run a command with a credential (jit run --help)", add_help=False)

    d = sub.add_parser("dev", help="server, worker and Redis in one command, for trying it out")
    d.add_argument("--port", type=int, default=3000, help="port of the server (default: 3000)")
    d.add_argument("--host", default="127.0.0.1", help="address the server listens on (default: 127.0.0.1)")
    d.add_argument("--example-policy", action="store_true", help="write a commented starter jit-policy.yaml")
    d.add_argument(
        "--data-dir", default=".jit", help="folder for the generated keys, pipeline token and Redis (default: .jit)"
    )
    d.add_argument(
        "--no-sandbox",
        action="store_true",
        help="without a Slack app configured, do not start the local Slack sandbox (Slack messages go nowhere)",
    )
    d.add_argument(
        "--sandbox-port", type=int, default=0, help="port of the local Slack sandbox's page (default: --port + 1)"
    )
    d.set_defaults(func=lambda a: _dev(a))

    sub.add_parser("bench", help="run the benchmarks (jit bench --help)", add_help=False)
    return p


def _client(argv: list[str]) -> int:
    import jit_client  # imported when run: stdlib urllib/ssl, never before `jit serve` patches

    return jit_client.main(argv, prog="jit")


def _dev(args: argparse.Namespace) -> int:
    from bot import dev  # imported when run: the CLI stays light

    return dev.main(args)


def _bench(argv: list[str]) -> int:
    from bench.__main__ import main as bench_main  # imported when run: the CLI stays light

    return bench_main(argv)


#: Commands with a parser of their own, each handed the rest of the command line untouched
#: (argparse.REMAINDER would refuse options before the first positional: `jit request --help`).
PASSTHROUGH = {
    "request": lambda rest: _client(["request", *rest]),
    "release": lambda rest: _client(["release", *rest]),
    "extend": lambda rest: _client(["extend", *rest]),
    "run": lambda rest: _client(["run", *rest]),
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
