"""What every benchmark shares: the process stack, the bench policy, percentiles, RSS sampling.

The processes are the real ones (redis-server, `jit serve`, `jit worker`, started by
bench/stack.py) with Slack played by bench/slack.py, so the bench runs from a source checkout
and from an installed package alike (the container image has no tests/).
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.slack import signed_click as _signed_click
from bench.stack import SIGNING_SECRET, Stack, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
#: In a source checkout results go to bench/results/ (ignored by git); elsewhere to the temp folder.
CHECKOUT = (ROOT / "pyproject.toml").exists()
RESULTS = ROOT / "bench" / "results" if CHECKOUT else Path(tempfile.gettempdir()) / "jit-bench"

PIPELINE_TOKEN = "bench-pipeline-token-0123456789abcdef"
APPROVER = "U0BENCHAPPROVER"
CHANNEL = "C0BENCH"
BURST_CHANNEL = "C0BURST"
RECORD_KEY = "bench:record"


def policy_text() -> str:
    digest = hashlib.sha256(PIPELINE_TOKEN.encode()).hexdigest()
    return f"""\
defaults:
  channel: {CHANNEL}
  pending_timeout: 30m
pipelines:
  bench-ci:
    token_sha256: {digest}
    actions: [bench-token, bench-record, bench-burst]
actions:
  bench-token:
    description: JWT from the token backend
    approvers: [{APPROVER}]
    ttl: {{default: 10m, max: 1h}}
    grant:
      type: token
      audience: bench
  bench-record:
    description: No-op grant that records when it was revoked
    approvers: [{APPROVER}]
    ttl: {{default: 10m, max: 1h}}
    grant:
      type: record
      key: {RECORD_KEY}
  bench-burst:
    description: Requests posted in a burst to one channel
    channel: {BURST_CHANNEL}
    approvers: [{APPROVER}]
    ttl: {{default: 10m, max: 1h}}
    grant:
      type: token
"""


def new_stack(**extra_env: str) -> Stack:
    # Rate limit off: the bench sends far more than 120 requests a minute from one pipeline, and
    # holds 1 000 long-polls for it (one per request) where the default allows 200 per pipeline.
    env = {"JIT_RATE_LIMIT": "0", "JIT_MAX_LONG_POLLS_PER_PIPELINE": "0", **extra_env}
    return Stack(policy=policy_text(), extra_env=env)


def close_stack(stack: Stack, failed: bool = False) -> None:
    """Stop the processes and delete the stack's files; on failure, print the logs' tails first."""
    if failed or sys.exc_info()[0] is not None:
        for p in stack.procs:
            tail = "\n".join(p.log().splitlines()[-15:])
            print(f"--- {p.name} log (last lines) ---\n{tail}", file=sys.stderr)
    stack.close()
    shutil.rmtree(stack.tmp, ignore_errors=True)


#: request id → the request_token it was created with: a pipeline follows its request up with it
#: (the pipeline's own token reads no request).
REQUEST_TOKENS: dict[str, str] = {}


def auth(rid: str | None = None) -> dict[str, str]:
    """The pipeline's bearer: its token to create, the request's token to follow one up."""
    return {"Authorization": f"Bearer {REQUEST_TOKENS.get(rid, PIPELINE_TOKEN) if rid else PIPELINE_TOKEN}"}


def remember(created: dict) -> dict:
    """Keep a created request's token for its follow-ups."""
    if "id" in created and "request_token" in created:
        REQUEST_TOKENS[created["id"]] = created["request_token"]
    return created


def signed_click(request_id: str, message_ts: str | None, channel: str = CHANNEL) -> tuple[bytes, dict[str, str]]:
    return _signed_click(SIGNING_SECRET, "jit_approve", request_id, APPROVER, channel, message_ts)


# ------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float], digits: int = 1) -> dict[str, Any]:
    """n, p50, p95, p99, max, min, mean of a list of milliseconds."""
    if not values:
        return {
            "n": 0,
            "p50": None,
            "p95": None,
            "p99": None,
            "max": None,
            "min": None,
            "mean": None,
        }
    r = lambda v: round(v, digits)  # noqa: E731
    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)),
        "min": r(min(values)),
        "mean": r(sum(values) / len(values)),
    }


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------------- memory of processes


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _kb(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(roots: int | list[int]) -> dict[str, float]:
    """RSS summed over whole process trees (counts pages shared after fork once per process)
    and PSS (shares them out: the better estimate of what the trees really use), in MB."""
    pids = [p for root in ([roots] if isinstance(roots, int) else roots) for p in process_tree(root)]
    rss = sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids)
    pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
    return {"processes": len(pids), "rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1)}


class RssSampler:
    """Samples the memory of named process trees every half second; keeps the peaks."""

    def __init__(self, pids: dict[str, int | list[int]], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, dict[str, float]] = {}
        self.last: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            m = tree_memory(pid)
            self.last[name] = m
            p = self.peak.setdefault(name, dict(m))
            for k in ("rss_mb", "pss_mb", "processes"):
                p[k] = max(p[k], m[k])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def result(self) -> dict[str, Any]:
        return {name: {"peak": self.peak.get(name), "end": self.last.get(name)} for name in self.pids}


# ------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    redis_version = ""
    binary = redis_server_binary()  # the one the stack runs
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"v=(\S+)", out)
        redis_version = m.group(1) if m else out.strip()
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis": redis_version,
        "os": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": [round(x, 2) for x in load],
    }


@dataclass
class Sizes:
    """How big each benchmark is: the full run, or --quick (the smoke test's tiny run)."""

    clicks: int = 500
    poll_subset: int = 30
    poll_interval_s: float = 5.0
    grants: int = 10_000
    spread_s: float = 60.0
    light_grants: int = 1000  # 0: skip the below-capacity comparison
    light_spread_s: float = 20.0
    load_creates_per_s: float = 100.0  # 0: skip the run under hook load
    hook_clients: int = 50
    hook_seconds: float = 30.0
    waiters: int = 1000
    burst: int = 200
    burst_window_s: float = 1.0
    burst_deadline_s: float = 420.0
    sink_events_per_s: float = 100.0
    sink_seconds: float = 30.0
    mass_grants: int = 10_000
    mass_watch_s: float = 30.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            clicks=15,
            poll_subset=3,
            poll_interval_s=1.0,
            grants=200,
            spread_s=2.0,
            light_grants=0,
            load_creates_per_s=20.0,
            hook_clients=8,
            hook_seconds=2.0,
            waiters=40,
            burst=8,
            burst_deadline_s=40.0,
            sink_seconds=2.0,
            mass_grants=200,
            mass_watch_s=4.0,
        )
