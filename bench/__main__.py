"""`python -m bench` / `jit bench`: run the benchmarks, print a markdown table, write JSON.

    python -m bench                 # the full run (~10 minutes on 2 cores)
    python -m bench --quick         # tiny sizes (what tests/scenarios/test_bench_smoke.py runs)
    python -m bench --only hook     # one section (repeatable)

Needs `redis-server` (the container image has one) and nothing of the source tree: the processes
are started from the installed package, Slack is played by bench/slack.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SECTIONS = (
    "click_to_credential",
    "revocation_lateness",
    "mass_expiry",
    "hook_throughput",
    "slack_burst",
    "audit_sink",
)


def _memory(res: dict[str, Any]) -> dict[str, Any]:
    """Section 5, from what the other sections measured while they ran."""
    per_section: dict[str, Any] = {}
    peaks = {"serve": {"rss_mb": 0.0, "pss_mb": 0.0}, "worker": {"rss_mb": 0.0, "pss_mb": 0.0}}
    for name in SECTIONS:
        sec = res.get(name) or {}
        mem = dict(sec.get("memory") or {})
        if name == "revocation_lateness" and "jit" in sec:
            mem = {"worker": sec["jit"]["worker_memory"]}
        if name == "mass_expiry" and "worker_memory" in sec:
            mem = {"worker": sec["worker_memory"]}
        for proc, m in mem.items():
            peak = (m or {}).get("peak") or {}
            per_section.setdefault(name, {})[proc] = peak
            for k in ("rss_mb", "pss_mb"):
                peaks[proc][k] = max(peaks[proc][k], float(peak.get(k) or 0))
    rv = res.get("revocation_lateness") or {}
    hook = res.get("hook_throughput") or {}
    keys = (rv.get("jit") or {}).get("sample_grant_key_bytes") or {}
    return {
        "method": (
            "Redis: INFO used_memory before/after making the grants active (revocation section, jit side: "
            "request hash with its approvals, sealed credential, index and due-queue entries, and the audit "
            "trail's events), divided by the grant count; without_audit: less MEMORY USAGE growth of the audit "
            "stream and nonce set and each request's audit index; MEMORY USAGE of the audit stream "
            "before/after the throughput run, divided by the events appended. Processes: VmRSS and Pss "
            "summed over each process tree from /proc, sampled "
            "every 0.5 s during each section (RSS counts pages shared after fork once per process). "
            "The Redis measurement waits (up to the time left before the first expiry) for the Slack jobs "
            "the seeding's transitions queued before the seeder took them back: transient work whose keys go "
            "when it is done, not what a grant keeps (jobs_queued_when_measured says how many were left)."
        ),
        "jobs_queued_when_measured": (rv.get("jit") or {}).get("jobs_queued_when_measured"),
        "redis_bytes_per_active_grant": rv.get("redis_bytes_per_active_grant"),
        "redis_bytes_per_active_grant_without_audit": rv.get("redis_bytes_per_active_grant_without_audit"),
        "redis_key_bytes_of_one_grant": keys,
        "redis_bytes_per_audit_event": hook.get("redis_bytes_per_audit_event"),
        "serve_peak_rss_mb": peaks["serve"]["rss_mb"],
        "serve_peak_pss_mb": peaks["serve"]["pss_mb"],
        "worker_peak_rss_mb": peaks["worker"]["rss_mb"],
        "worker_peak_pss_mb": peaks["worker"]["pss_mb"],
        "per_section_peaks": per_section,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jit bench", description="Benchmarks against real processes on loopback.")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in well under a minute")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument(
        "--out",
        default=None,
        help="JSON file to write (default: bench/results/latest.json in a checkout, else in the temp folder)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from bench import audit_sink, click, hook, mass_expiry, revocation, slack_burst
    from bench.common import RESULTS, Sizes, machine
    from bench.report import table

    sizes = Sizes.quick() if args.quick else Sizes()
    runners = {
        "click_to_credential": click.run,
        "revocation_lateness": revocation.run,
        "mass_expiry": mass_expiry.run,
        "hook_throughput": hook.run,
        "slack_burst": slack_burst.run,
        "audit_sink": audit_sink.run,
    }
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench"
            + (" --quick" if args.quick else "")
            + "".join(f" --only {o}" for o in args.only or []),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "machine": machine(),
            "sizes": vars(sizes),
        }
    }

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    failed = False
    for name in args.only or SECTIONS:
        t = time.monotonic()
        try:
            results[name] = runners[name](sizes, log)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            failed = True
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["duration_s"] = round(time.monotonic() - t, 1)
        log(f"{name} done in {results[name]['duration_s']}s")
    results["memory"] = _memory(results)
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    out = Path(args.out) if args.out else RESULTS / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nJSON: {out}  ({results['meta']['duration_s']}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
