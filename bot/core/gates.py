"""Deployment gates, the rules: which run a gated request is bound to, and what the platform is told.

A gate is a deployment GitHub or GitLab holds until jit decides (docs/gates.md). Its request is
bound to one run: GitHub's repository, run, attempt, environment and commit; GitLab's project,
pipeline, job, environment and commit. Only a job whose verified OIDC claims name the very same
run collects the credential.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from bot.core.clock import human, to_ms
from bot.core.model import AccessRequest, Status

GITHUB = "github"
GITLAB = "gitlab"
PLATFORMS = (GITHUB, GITLAB)
#: How the platforms call themselves in text.
TITLE = {GITHUB: "GitHub", GITLAB: "GitLab"}

#: The verified context keys that name the run a gated request was approved for, per platform.
BINDING: dict[str, tuple[str, ...]] = {
    GITHUB: ("repository_id", "run_id", "run_attempt", "environment", "commit"),
    GITLAB: ("project_id", "pipeline_id", "job_id", "environment", "commit"),
}
#: The part of the binding a job's token is looked up by (the rest is then compared).
_LOOKUP: dict[str, tuple[str, ...]] = {
    GITHUB: ("repository_id", "run_id", "run_attempt", "environment"),
    GITLAB: ("project_id", "job_id"),
}
#: Keys compared case-insensitively (both platforms treat environment names so).
_FOLDED = frozenset({"environment"})
#: Comments longer than this are cut (GitHub and GitLab show them beside the deployment).
MAX_COMMENT = 1000

#: A pending gate is looked at again at the latest this long after its pending timeout (the
#: timeout job decides it; this is the backstop), and an approved one this often while its
#: credential is being issued.
PENDING_BACKSTOP_MS = 5_000
ISSUING_RECHECK_MS = 2_000


def gate_id(platform: str, owner_id: str | int, deployment_id: str | int) -> str:
    """One id per deployment a platform holds (GitHub: repository id; GitLab: project id). Safe in
    Redis keys and due-queue members."""
    prefix = "gh" if platform == GITHUB else "gl"
    return f"{prefix}-{int(owner_id)}-{int(deployment_id)}"


def _value(key: str, ctx: Mapping[str, object]) -> str | None:
    v = ctx.get(key)
    if v is None or v == "":
        return None
    text = str(v)
    return text.casefold() if key in _FOLDED else text


def run_key(platform: str, ctx: Mapping[str, object]) -> tuple[str, ...] | None:
    """What a job's verified context is looked up by; None when it does not name a run."""
    parts = [_value(k, ctx) for k in _LOOKUP[platform]]
    if any(p is None for p in parts):
        return None
    return (platform, *parts)  # type: ignore[arg-type]


def run_group(ctx: Mapping[str, object]) -> tuple[str, ...] | None:
    """A GitHub run attempt, whatever its environments (cancelling a run cancels them all)."""
    parts = [_value(k, ctx) for k in ("repository_id", "run_id", "run_attempt")]
    if any(p is None for p in parts):
        return None
    return (GITHUB, *parts)  # type: ignore[arg-type]


def binding_mismatch(platform: str, bound: Mapping[str, object], caller: Mapping[str, object]) -> str | None:
    """Why the caller's verified context does not name the run `bound` was approved for; None
    when every binding key matches."""
    for key in BINDING[platform]:
        want, got = _value(key, bound), _value(key, caller)
        if want is None:
            return f"the approved deployment records no {key}"
        if got is None:
            return f"the token has no {key} claim"
        if want != got:
            return f"the token's {key} is not the approved deployment's"
    return None


@dataclass(frozen=True)
class Verdict:
    """What to tell the platform now: `state` approved/rejected with `comment`; None with
    `wait_ms` > 0 when the request is not decided yet; None and no wait when nothing is owed."""

    state: str | None
    comment: str = ""
    wait_ms: int = 0
    note: str = ""


def verdict(req: AccessRequest, now: datetime, name: Callable[[str], str]) -> Verdict:
    """The platform hears "approved" once the credential exists (so the job that starts can collect
    it), "rejected" for every other end, and nothing for a cancelled request (the run is gone)."""
    ref = f"(jit request {req.id})"
    if req.status == Status.PENDING:
        wait = to_ms(req.pending_until) - to_ms(now) + PENDING_BACKSTOP_MS
        return Verdict(None, wait_ms=max(wait, 1000))
    if req.status == Status.APPROVED:
        return Verdict(None, wait_ms=ISSUING_RECHECK_MS)
    approvers = ", ".join(name(u) for u in req.approved_by) or "nobody"
    if req.status == Status.ACTIVE:
        if req.decided_by == "auto":
            return Verdict("approved", _fit(f"Approved by jit's auto-approval rule for {req.action} {ref}."))
        return Verdict("approved", _fit(f"Approved in Slack by {approvers} {ref}."))
    if req.status == Status.DENIED:
        who = name(req.decided_by) if req.decided_by else "an approver"
        return Verdict("rejected", _fit(f"Denied in Slack by {who}: {req.deny_reason or 'no reason given'} {ref}."))
    if req.status == Status.TIMED_OUT:
        waited = human(req.pending_until - req.created_at)
        return Verdict("rejected", _fit(f"Nobody decided in time: jit's pending timeout of {waited} passed {ref}."))
    if req.status == Status.FAILED:
        return Verdict(
            "rejected",
            # not the backend's error text: the deployment page may be public; approvers see it in Slack
            _fit(
                f"Approved by {approvers}, but the credential could not be issued "
                f"(why: on the request's Slack message) {ref}."
            ),
        )
    if req.status in (Status.EXPIRED, Status.REVOKED):
        return Verdict("rejected", _fit(f"The grant ended before the deployment could be released {ref}."))
    return Verdict(None, note="cancelled: nothing to tell")


def refusal_comment(reason: str) -> str:
    """The comment when jit refuses a deployment before anyone is asked."""
    return _fit(f"jit refused this deployment: {reason}")


def _fit(text: str) -> str:
    return text if len(text) <= MAX_COMMENT else text[: MAX_COMMENT - 1] + "…"
