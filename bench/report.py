"""The markdown table printed at the end of a run (from the JSON the run writes)."""

from __future__ import annotations

from typing import Any


def _ms(v: Any) -> str:
    if v is None:
        return "—"
    if abs(v) >= 10_000:
        return f"{v / 1000:.1f} s"
    return f"{v:.0f} ms" if abs(v) >= 100 else f"{v:.1f} ms"


def _pct(s: dict[str, Any] | None, keys=("p50", "p95", "p99")) -> str:
    if not s or not s.get("n"):
        return "—"
    return " / ".join(_ms(s.get(k)) for k in keys) + f" (n={s['n']})"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _lt(v: Any, limit: float) -> bool | None:
    return None if v is None else v < limit


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    out: list[tuple[str, str, str, str, str]] = []
    c = res.get("click_to_credential") or {}
    if "long_poll_ms" in c:
        lp = c["long_poll_ms"]
        poll = c["poll_5s_measured_ms"]
        out.append(
            (
                "1. Click → credential, p50 / p95 / p99",
                _pct(lp),
                f"poll every {c['poll_interval_s']:g} s: {_pct(poll)} measured; "
                f"{_pct(c['poll_5s_analytic_ms'])} analytic",
                "p99 < 20 ms (issue 19)",
                _met(_lt(lp["p99"], 20)),
            )
        )
        out.append(
            (
                "   click acknowledged (Slack's 3 s limit), p50 / p95 / p99",
                _pct(c["click_ack_ms"]),
                "",
                "< 3 s",
                _met(_lt(c["click_ack_ms"]["max"], 3000)),
            )
        )
    rv = res.get("revocation_lateness") or {}
    variants = [("2. Revocation lateness", rv)] if "jit" in rv else []
    if rv.get("below_capacity"):
        variants.append(("   same, below capacity", rv["below_capacity"]))
    if rv.get("under_load"):
        u = rv["under_load"]
        variants.append((f"   same, while the hook takes {u['creates_per_s']:g} creates/s", u))
    for label, v in variants:
        j, q = v["jit"], v["rq_enqueue_at"]
        keys = ("p50", "p99", "max")
        ratio = v["p99_ratio_rq_over_jit"]
        ok = (
            j["early"] == 0
            and j["missing"] == 0
            and bool(_lt(j["lateness_ms"]["p99"], 50))
            and (ratio is not None and ratio >= 10)
        )
        out.append(
            (
                f"{label}, {j['grants']} grants over {j['spread_s']:g} s: p50 / p99 / max",
                f"{_pct(j['lateness_ms'], keys)}; early {j['early']}, missing {j['missing']}",
                f"RQ enqueue_at: {_pct(q['lateness_ms'], keys)}; early {q['early']} "
                f"(earliest {_ms(q['earliest_ms'])}), missing {q['missing']}; RQ p99 / jit p99 = "
                f"{ratio}×",
                "never early; p99 < 50 ms; ≥ 10× better",
                _met(ok),
            )
        )
    me = res.get("mass_expiry") or {}
    if "all_revoked_s" in me:
        sl = me["slack"]
        whole = me["final_statuses"] == {"expired": me["grants"]} and me["revoked_events"] == me["grants"]
        out.append(
            (
                f"2b. Mass expiry: {me['grants']} overdue grants, worker starts after an outage",
                f"all revoked {me['all_revoked_s']} s after the worker started; audit "
                f"{me['requests_with_one_revoked_event']}/{me['grants']} recorded once, chain "
                f"{'intact' if me['audit_chain_intact'] else 'BROKEN'}; "
                f"CPU {me['cpu_ms_per_revocation']} ms/revocation",
                f"Slack: {sl['digests']} digest(s); chat.update {sl['chat_update_per_min_in_watch']:g}/min "
                f"(Tier 3: 50/min); 429s {sl['rate_limited_429']}",
                "all within 20 s; audit complete; 429s 0",
                _met(whole and me["all_revoked_s"] <= 20 and sl["rate_limited_429"] == 0),
            )
        )
    h = res.get("hook_throughput") or {}
    if "throughput" in h:
        t = h["throughput"]
        out.append(
            (
                f"3. POST /v1/requests, {t['clients']} clients × {t['seconds']:g} s",
                f"{t['creates_per_s']:.0f} creates/s, p50 / p95 / p99 {_pct(t['latency_ms'])}; errors {t['errors']}",
                f"refused at capacity (503): {t.get('refused', 0)}, refusal p50 / p95 / p99 "
                f"{_pct(t.get('refused_ms'))}; CPU per create {t.get('cpu_ms_per_create')} ms (whole system)",
                "≥ 500/s, p99 < 50 ms",
                _met(t["creates_per_s"] >= 500 and bool(_lt(t["latency_ms"]["p99"], 50))),
            )
        )
        tp = h.get("throughput_paced")
        if tp:
            out.append(
                (
                    "   same, Slack first posts paced (product defaults: 1 a second per channel)",
                    f"{tp['creates_per_s']:.0f} creates/s, p50 / p95 / p99 {_pct(tp['latency_ms'])}; "
                    f"errors {tp['errors']}",
                    f"refused (503): {tp.get('refused', 0)}, refusal p50 / p95 / p99 {_pct(tp.get('refused_ms'))}; "
                    f"CPU per create during the flood {tp.get('cpu_ms_per_create')} ms",
                    "≥ 500/s, p99 < 50 ms",
                    _met(tp["creates_per_s"] >= 500 and bool(_lt(tp["latency_ms"]["p99"], 50))),
                )
            )
        lp = h["long_poll"]
        out.append(
            (
                f"   {lp['waiters']} long-polls, approvals at {lp['approvals_per_s']:.0f}/s: "
                "click → waiter p50 / p95 / p99",
                f"{_pct(lp['click_to_waiter_ms'])}, max {_ms(lp['click_to_waiter_ms']['max'])}; "
                f"failed {lp['failed']}, starved {lp['starved']}",
                "",
                "no waiter starves",
                _met(lp["starved"] == 0),
            )
        )
    b = res.get("slack_burst") or {}
    if "requests" in b:
        out.append(
            (
                f"4. Slack burst: {b['requests']} requests in {b['sent_in_s']:g} s to one channel (Slack: ~1 msg/s)",
                f"every request's own message after {b['all_own_messages_after_s']} s "
                f"({b['own_messages_visible']}/{b['requests']}), first after {b['first_own_message_after_s']} s; "
                f"{b['digests']} digest(s), first after {b['first_digest_after_s']} s; "
                f"429s {b['rate_limited_429']}; duplicates {b['duplicates']}",
                "",
                "duplicates 0",
                _met(b["duplicates"] == 0 and b["own_messages_visible"] == b["requests"]),
            )
        )
    a = res.get("audit_sink") or {}
    if "latency_ms" in a:
        out.append(
            (
                f"6. Audit event → healthy sink (http), {a['events']} events at {a['rate_per_s']:g}/s: p50 / p95 / p99",
                f"{_pct(a['latency_ms'])}, max {_ms(a['latency_ms']['max'])}; missing {a['missing']}, "
                f"over 5 s {a['over_5s']}",
                "",
                "p99 < 1 s; none lost",
                _met(a["missing"] == 0 and a["over_5s"] == 0 and bool(_lt(a["latency_ms"]["p99"], 1000))),
            )
        )
    m = res.get("memory") or {}
    if "redis_bytes_per_active_grant" in m:
        out.append(
            (
                "5. Redis memory per active grant (without its audit events) / per audit event",
                f"{m['redis_bytes_per_active_grant']} B ({m.get('redis_bytes_per_active_grant_without_audit')} B) "
                f"/ {m['redis_bytes_per_audit_event']} B",
                "",
                "≤ 1 500 B per grant",
                _met(_lt(m.get("redis_bytes_per_active_grant_without_audit"), 1501)),
            )
        )
        out.append(
            (
                "   RSS (PSS) peak: `jit serve` tree / `jit worker` tree",
                f"{m['serve_peak_rss_mb']} ({m['serve_peak_pss_mb']}) MB / {m['worker_peak_rss_mb']} "
                f"({m['worker_peak_pss_mb']}) MB",
                "",
                "",
                "—",
            )
        )
    return out


def table(res: dict[str, Any]) -> str:
    lines = ["| Measurement | jit | Baseline (same run) | Target | Met |", "|---|---|---|---|---|"]
    for r in rows(res):
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    for name, sec in res.items():
        if isinstance(sec, dict) and "error" in sec:
            lines.append(f"| {name} | FAILED: {sec['error']} | | | **no** |")
    return "\n".join(lines)
