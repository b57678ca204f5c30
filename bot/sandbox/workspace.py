"""The sandbox's workspace: its people, user group and channels, matching bot/example-policy.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

TEAM_ID = "T0SANDBOX"
TEAM_DOMAIN = "jit-sandbox"
APP_ID = "A0JITSANDBOX"
BOT_USER_ID = "U0JITBOT"
BOT_ID = "B0JITBOT"
#: Slack still sends this deprecated field in every payload; jit never trusts it.
VERIFICATION_TOKEN = "sandbox-verification-token"


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    real_name: str
    email: str
    #: What the starter policy lets this person do (shown next to the name in the page).
    role: str


@dataclass(frozen=True)
class Workspace:
    people: tuple[Person, ...]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # S… id → member ids
    group_handles: dict[str, str] = field(default_factory=dict)  # S… id → handle
    channels: dict[str, str] = field(default_factory=dict)  # C… id → name

    def person(self, user_id: str) -> Person | None:
        return next((p for p in self.people if p.id == user_id), None)


def starter_workspace() -> Workspace:
    """The people of the starter policy: two approvers (one of them through a user group), the
    requester (also in that group, so self-approval is refused), and someone who may not approve."""
    return Workspace(
        people=(
            Person("U0ALICE", "alice", "Alice Approver", "alice@example.com", "approver, auditor"),
            Person("U0BOB", "bob", "Bob Lead", "bob@example.com", "approver (in @leads)"),
            Person("U0CAROL", "carol", "Carol Developer", "carol@example.com", "requester (in @leads)"),
            Person("U0DAVE", "dave", "Dave Bystander", "dave@example.com", "not an approver"),
        ),
        groups={"S0LEADS": ("U0BOB", "U0CAROL")},
        group_handles={"S0LEADS": "leads"},
        channels={"C0APPROVALS": "jit-approvals"},
    )
