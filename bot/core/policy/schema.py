"""The policy's schema: who may ask for what, who approves it, and how the credential is made."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.core.clock import parse_duration

SLACK_USER_OR_GROUP_ID = r"^[UWS][A-Z0-9]{2,}$"
SLACK_USER_ID = r"^[UW][A-Z0-9]{2,}$"
SLACK_CHANNEL_ID = r"^[CGD][A-Z0-9]{2,}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SHA256_HEX = r"^[0-9a-f]{64}$"

#: What a value that does not match one of the patterns above should be, in words a newcomer can act
#: on (the loader reports these instead of the regular expression).
PATTERN_HELP = {
    SLACK_CHANNEL_ID: "must be a Slack channel ID such as C0123ABCD, not a channel name "
    "(Slack shows it at the bottom of the channel's details)",
    SLACK_USER_OR_GROUP_ID: "must be a Slack user ID such as U0123ABCD or a user group ID such as S0123ABCD, "
    "not a name (a profile's ⋮ menu → Copy member ID)",
    SLACK_USER_ID: "must be a Slack user ID such as U0123ABCD, not a name (a profile's ⋮ menu → Copy member ID)",
    NAME: "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    SHA256_HEX: 'must be the SHA-256 of the token, not the token: printf %s "$TOKEN" | sha256sum',
}

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
SlackUserOrGroup = Annotated[str, Field(pattern=SLACK_USER_OR_GROUP_ID)]
SlackChannel = Annotated[str, Field(pattern=SLACK_CHANNEL_ID)]
Name = Annotated[str, Field(pattern=NAME)]


def _one_or_many(v: object) -> object:
    return [v] if isinstance(v, str) else v


#: A condition value: one string or a list; each an exact value or an fnmatch glob.
Patterns = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], BeforeValidator(_one_or_many)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


UnknownRequester = Literal["allow", "refuse"]
StatusVisibility = Literal["involved", "everyone"]


class Defaults(_Strict):
    channel: SlackChannel | None = None
    pending_timeout: Duration = timedelta(minutes=30)
    #: When an action forbids self-approval and the requester is not a known person (no
    #: requested_by, or one not in `people`): `allow` lets any approver approve and the message
    #: says plainly that self-approval cannot be ruled out; `refuse` refuses such requests (403).
    unknown_requester: UnknownRequester = "allow"
    #: Who may read one request with `/jit status <id>`: `involved` (its approvers, auditors and
    #: its requester) or `everyone` in the workspace.
    status_visibility: StatusVisibility = "involved"


class Ttl(_Strict):
    default: Duration = timedelta(minutes=15)
    max: Duration = timedelta(hours=1)


class SessionOptions(_Strict):
    """What the request's thread shows of a `jit run` session (docs/policy.md)."""

    #: Also post the masked transcript (its tail) to the thread; auditors always have it.
    transcript_in_slack: bool = False


class AuditConfig(_Strict):
    channel: SlackChannel | None = None
    #: How often the chain head is posted to the audit channel.
    post_head_every: Duration = timedelta(hours=1)
    #: Entries older than this are trimmed (the trim point's hash is kept as the anchor).
    retention: Duration = timedelta(days=365)


#: An environment's name as GitHub or GitLab shows it.
EnvironmentName = Annotated[str, Field(min_length=1, max_length=255)]


class GitHubGate(_Strict):
    """A GitHub environment whose deployments wait for jit (a custom deployment protection rule,
    docs/gates.md). Names compare case-insensitively, as GitHub compares them."""

    repository: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", max_length=200)]
    environment: EnvironmentName
    #: The action an approved deployment is granted; needed when the pipeline lists several.
    action: Name | None = None


class GitLabGate(_Strict):
    """A GitLab protected environment whose deployments wait for jit's approval (deployment
    approvals, docs/gates.md). `project` is the full path (group/subgroup/project)."""

    project: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$", max_length=255)]
    environment: EnvironmentName
    action: Name | None = None


def gate_key(platform: str, place: str, environment: str) -> tuple[str, str, str]:
    """What a gate matches: the platform, the repository (GitHub) or project path (GitLab) and the
    environment, compared case-insensitively as both platforms compare them."""
    return platform, place.casefold(), environment.casefold()


class Pipeline(_Strict):
    token_sha256: Annotated[str, Field(pattern=SHA256_HEX)] | None = None
    oidc: dict[str, Any] | None = None
    actions: list[Name] = Field(min_length=1)
    #: Deployments to this GitHub environment wait for a decision in Slack; the approved run's
    #: job then collects the credential with its OIDC token (`oidc` above), no second approval.
    github: GitHubGate | None = None
    #: The same for a GitLab protected environment.
    gitlab: GitLabGate | None = None

    @field_validator("github", "gitlab")
    @classmethod
    def _gate(cls, gate: GitHubGate | GitLabGate | None, info: ValidationInfo) -> GitHubGate | GitLabGate | None:
        if gate is None:
            return None
        if info.field_name == "gitlab" and info.data.get("github") is not None:
            raise ValueError("a pipeline gates GitHub or GitLab deployments, not both: use two pipelines")
        if info.data.get("token_sha256") is not None or info.data.get("oidc") is None:
            raise ValueError(
                "the approved run's job collects its credential with its OIDC token: "
                "a gated pipeline sets oidc, not token_sha256"
            )
        actions = info.data.get("actions")
        if actions is None:
            return gate  # the actions list has its own error
        if gate.action is None and len(actions) != 1:
            raise ValueError(
                f"the pipeline lists {len(actions)} actions: set {info.field_name}.action to the one "
                "an approved deployment is granted"
            )
        if gate.action is not None and gate.action not in actions:
            raise ValueError(f"action {gate.action!r} is not in this pipeline's actions")
        return gate

    @property
    def gate(self) -> tuple[str, GitHubGate | GitLabGate] | None:
        """("github" | "gitlab", its gate), or None for a pipeline that asks over HTTP."""
        if self.github is not None:
            return "github", self.github
        if self.gitlab is not None:
            return "gitlab", self.gitlab
        return None

    @property
    def gate_key(self) -> tuple[str, str, str] | None:
        if self.github is not None:
            return gate_key("github", self.github.repository, self.github.environment)
        if self.gitlab is not None:
            return gate_key("gitlab", self.gitlab.project, self.gitlab.environment)
        return None

    @property
    def gate_action(self) -> str | None:
        found = self.gate
        if found is None:
            return None
        return found[1].action or self.actions[0]


class PagerDutySchedule(_Strict):
    """Whoever PagerDuty's `GET /oncalls` puts on call for this schedule, at escalation levels
    1…escalation_level of the escalation policies that use it."""

    schedule: Annotated[str, Field(pattern=r"^P[A-Z0-9]{5,13}$")]
    escalation_level: int = Field(1, ge=1, le=20)


class OpsgenieSchedule(_Strict):
    """Whoever Opsgenie's `GET /v2/schedules/{schedule}/on-calls` names (a schedule id or name)."""

    schedule: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$")]


class OnCallSchedule(_Strict):
    """One on-call schedule, of exactly one provider."""

    pagerduty: PagerDutySchedule | None = None
    opsgenie: OpsgenieSchedule | None = None

    @model_validator(mode="after")
    def _one_provider(self) -> OnCallSchedule:
        if (self.pagerduty is None) == (self.opsgenie is None):
            raise ValueError("name exactly one provider: pagerduty or opsgenie")
        return self

    @property
    def provider(self) -> str:
        return "pagerduty" if self.pagerduty is not None else "opsgenie"

    @property
    def schedule(self) -> str:
        return (self.pagerduty or self.opsgenie).schedule  # type: ignore[union-attr]

    @property
    def max_level(self) -> int:
        return self.pagerduty.escalation_level if self.pagerduty is not None else 1

    @property
    def key(self) -> str:
        """Stable name of the schedule (and levels) for caches, audit entries and recorded approvals."""
        if self.pagerduty is not None:
            return f"pagerduty/{self.pagerduty.schedule}/{self.pagerduty.escalation_level}"
        return f"opsgenie/{self.schedule}"

    def describe(self) -> str:
        if self.pagerduty is not None:
            levels = "level 1" if self.max_level == 1 else f"levels 1-{self.max_level}"
            return f"on call for PagerDuty schedule {self.schedule} ({levels})"
        return f"on call for Opsgenie schedule {self.schedule}"


class OnCall(OnCallSchedule):
    #: The request DMs whoever is on call when it waits for approval.
    dm: bool = False


class OnCallApprover(_Strict):
    """An approver entry naming an on-call schedule: `{oncall: {pagerduty: {schedule: P…}}}`."""

    oncall: OnCall

    def __str__(self) -> str:
        return self.oncall.describe()


def _approver_kind(v: object) -> str:
    return "slack-id" if isinstance(v, str) else "oncall-entry"


def _one_or_list(v: object) -> str:
    return "rule-list" if isinstance(v, list) else "one-rule"


#: Tags that pick one shape of a value that may take several; they appear in validation error
#: locations, which the loader leaves out (bot/core/policy/load.py).
CHOICE_TAGS = ("slack-id", "oncall-entry", "one-rule", "rule-list")

#: An approver entry: a Slack user (U…/W…), a user group (S…), or whoever is on call.
Approver = Annotated[
    Annotated[SlackUserOrGroup, Tag("slack-id")] | Annotated[OnCallApprover, Tag("oncall-entry")],
    Discriminator(_approver_kind),
]


class ApprovalRule(_Strict):
    """One rule of an all-of approval: `count` distinct people from `from`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: list[Approver] = Field(alias="from", min_length=1)
    count: int = Field(1, ge=1)
    #: How the message names the rule ("Leads 1/1 ✓ · Security 0/1"); default "Rule 1", "Rule 2"…
    name: Annotated[str, Field(min_length=1, max_length=40)] | None = None
    #: Overrides the action's allow_self_approval for this rule.
    allow_self_approval: bool | None = None


class AutoApprove(_Strict):
    """Approve without a human when every condition holds, against VERIFIED (OIDC) context only."""

    environment: Patterns | None = None
    ref: Patterns | None = None
    repository: Patterns | None = None
    workflow: Patterns | None = None
    #: Longer requests go to humans. Default: the action's ttl.default.
    max_ttl: Duration | None = None
    #: Auto-approvals per pipeline per UTC day for this action; the rest go to humans.
    max_per_day: int = Field(20, ge=1, le=100_000)
    #: The requester (a VERIFIED requested_by, mapped through `people`) is on call for this schedule.
    oncall: OnCallSchedule | None = None

    @property
    def conditions(self) -> dict[str, list[str]]:
        """The conditions on the verified context (the on-call condition aside)."""
        return {k: v for k in AUTO_APPROVE_KEYS if (v := getattr(self, k)) is not None}


AUTO_APPROVE_KEYS = ("environment", "ref", "repository", "workflow")


class BreakGlass(_Strict):
    """Who may approve alone, outside windows, with a written justification; who hears of it."""

    approvers: list[SlackUserOrGroup] = Field(min_length=1)
    security_channel: SlackChannel
    max_ttl: Duration = timedelta(minutes=30)


class Extend(_Strict):
    """How an active grant may be extended (`POST /v1/requests/{id}/extend`, the Extend button)."""

    #: The longest the whole window may last, measured from the grant's start, extensions included.
    max_total: Duration
    #: Approvals an extension needs (distinct approvers of the action, never the one who asked nor
    #: the requester unless self-approval is allowed); 0 applies it at once.
    approvals_required: int = Field(0, ge=0, le=50)

    @field_validator("max_total")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("max_total must be a positive duration such as 2h")
        if v > timedelta(days=7):
            raise ValueError("max_total must be at most 7d: a grant is temporary by design")
        return v


class Action(_Strict):
    description: str = ""
    channel: SlackChannel | None = None
    #: Default approvers; per-environment lists in approvers_by_environment take precedence.
    approvers: list[Approver] = []
    approvers_by_environment: dict[Name, list[Approver]] = {}
    #: All-of approval: every rule must be met, one person counts for one rule only. Instead of
    #: approvers + approvals_required (which are one rule).
    approvals: list[ApprovalRule] = []
    #: One rule or a list of rules; the first that holds approves.
    auto_approve: (
        Annotated[
            Annotated[AutoApprove, Tag("one-rule")] | Annotated[list[AutoApprove], Tag("rule-list")],
            Discriminator(_one_or_list),
        ]
        | None
    ) = None
    windows: list[str] = []
    #: Overrides the top-level break_glass; `false` turns it off for this action.
    break_glass: BreakGlass | Literal[False] | None = None
    approvals_required: int = Field(1, ge=1)
    allow_self_approval: bool = False
    #: Overrides defaults.unknown_requester for this action.
    unknown_requester: UnknownRequester | None = None
    ttl: Ttl = Ttl()
    pending_timeout: Duration | None = None
    #: Active grants of this action may be extended within these limits; absent: never.
    extend: Extend | None = None
    grant: dict[str, Any]
    session: SessionOptions = SessionOptions()

    @model_validator(mode="after")
    def _extend_fits(self) -> Action:
        if self.extend is not None and self.extend.max_total < self.ttl.default:
            raise ValueError(
                f"extend.max_total ({int(self.extend.max_total.total_seconds())}s) is shorter than ttl.default "
                f"({int(self.ttl.default.total_seconds())}s): no grant could ever be extended"
            )
        return self


class PolicyModel(_Strict):
    defaults: Defaults = Defaults()
    auditors: list[SlackUserOrGroup] = []
    people: dict[str, Annotated[str, Field(pattern=SLACK_USER_ID)]] = {}
    pipelines: dict[Name, Pipeline] = {}
    actions: dict[Name, Action]
    audit: AuditConfig = AuditConfig()
    #: Applies to every action that does not set its own (or `break_glass: false`).
    break_glass: BreakGlass | None = None
