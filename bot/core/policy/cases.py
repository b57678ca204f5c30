"""`jit policy test`: cases that say what a policy must do with a request, checked by
bot/core/policy/evaluate.py; a failing case is shown as a diff of what was expected and what is.

```yaml
substitute: {__PIPELINE_TOKEN_SHA256__: "00…"}  # placeholders of a template policy, replaced first
cases:
  - name: a release needs a lead and security
    pipeline: web-ci
    action: deploy-prod
    at: "2025-01-06T10:00:00+01:00"        # default: now
    ttl: 10m
    context: {environment: prod}
    verified: {environment: prod, requested_by: alice}   # what an OIDC token vouches for
    requested_by: alice@example.com
    oncall: {PXXXXXX: [U0ALICE], ops-primary: {U0BOB: 2}}   # who is on call (at which level)
    expect: {allowed: true, auto_approved: false, count: {Leads: 1, Security: 1}}
```
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.core.policy.evaluate import Ask, evaluate
from bot.core.policy.policy import Policy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    """What should happen; only the keys given are checked (`why`: a part of the reason)."""

    allowed: bool | None = None
    error: str | None = None
    why: str | None = None
    auto_approved: bool | None = None
    rule: str | None = None
    window: Literal["open", "closed", "none"] | None = None
    break_glass: bool | None = None
    #: rule name (or path) → its approver entries, as `str(entry)` reads (ids, "on call for …")
    approvers: dict[str, list[str]] | None = None
    #: rule name (or path) → how many distinct people it needs
    count: dict[str, int] | None = None
    self_approval: Literal["allowed", "forbidden"] | None = None


class Case(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    pipeline: str
    action: str
    at: datetime | None = None
    ttl: str | int | None = None
    context: dict[str, str] = {}
    verified: dict[str, str] | None = None
    requested_by: str | None = None
    break_glass: bool = False
    oncall: dict[str, list[str] | dict[str, int]] = {}
    expect: Expect


class CasesFile(_Strict):
    substitute: dict[str, str] = {}
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class Result:
    case: Case
    diff: list[str]  # empty: passed

    @property
    def passed(self) -> bool:
        return not self.diff


def run(policy: Policy, cases: list[Case], now: datetime) -> list[Result]:
    return [Result(case, check(policy, case, now)) for case in cases]


def ask_of(case: Case, now: datetime) -> Ask:
    oncall = {
        schedule: ({u: 1 for u in people} if isinstance(people, list) else dict(people))
        for schedule, people in case.oncall.items()
    }
    return Ask(
        pipeline=case.pipeline,
        action=case.action,
        at=case.at or now,
        ttl=case.ttl,
        context=dict(case.context),
        verified=dict(case.verified) if case.verified is not None else None,
        requested_by=case.requested_by,
        break_glass=case.break_glass,
        oncall=oncall,
    )


def check(policy: Policy, case: Case, now: datetime) -> list[str]:
    """The lines of a diff between what `case` expects and what the policy does (empty: as expected)."""
    facts = evaluate(policy, ask_of(case, now)).facts()
    diff: list[str] = []
    for key in sorted(case.expect.model_fields_set):
        want, got = getattr(case.expect, key), facts[key]
        if not _same(key, want, got):
            diff += [f"- {key}: {_show(want)}", f"+ {key}: {_show(got)}"]
    return diff


def _same(key: str, want: Any, got: Any) -> bool:
    if key == "why":
        return want is None and got is None or (want is not None and got is not None and want in got)
    if key == "approvers":
        return {k: sorted(v) for k, v in want.items()} == {k: sorted(v) for k, v in got.items()}
    return want == got


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)
