"""Typed domain errors; the edges (HTTP hook, Slack) map them to status codes and messages."""

from __future__ import annotations

from datetime import UTC, datetime


class JitError(Exception):
    """Base of every refusal the domain makes. `code` is stable and machine-readable."""

    code = "error"
    http_status = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code).strip()


class PolicyError(Exception):
    """The policy file is invalid; `errors` lists every problem with its location."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors[0] if errors else "invalid policy")
        self.errors = errors


class PolicyFileMissing(PolicyError):
    """There is no file at the policy's path; what to do depends on who named the path."""


class BadRequest(JitError):
    code = "bad_request"
    http_status = 400


class UnknownAction(JitError):
    """No such action."""

    code = "unknown_action"
    http_status = 404


class ActionNotAllowed(JitError):
    """This pipeline may not request that action."""

    code = "action_not_allowed"
    http_status = 403


class NotFound(JitError):
    """No such request."""

    code = "not_found"
    http_status = 404


class NotAnApprover(JitError):
    """You are not an approver for this action."""

    code = "not_an_approver"
    http_status = 403


class SelfApproval(JitError):
    """You asked for this access yourself; someone else has to approve it."""

    code = "self_approval"
    http_status = 403


class AlreadyApproved(JitError):
    """You have already approved this request; another approver is needed."""

    code = "already_approved"
    http_status = 409


class AlreadyDecided(JitError):
    """This request has already been decided."""

    code = "already_decided"
    http_status = 409

    def __init__(self, status: str) -> None:
        super().__init__(f"This request is already {status.replace('_', ' ')}.")
        self.status = status


class NotActive(JitError):
    """The credential is not available yet."""

    code = "not_active"
    http_status = 409


class Gone(JitError):
    """The credential has expired or was revoked."""

    code = "gone"
    http_status = 410


class WrongWorkspace(JitError):
    """This Slack workspace is not allowed to act on jit requests."""

    code = "wrong_workspace"
    http_status = 403


class IdempotencyKeyReused(JitError):
    """This Idempotency-Key was already used for a different request."""

    code = "idempotency_key_reused"
    http_status = 422


class RequesterUnknown(JitError):
    """The requester is not a known person, and this action forbids self-approval."""

    code = "requester_unknown"
    http_status = 403


class WindowClosed(JitError):
    """The action's change window is closed; the request can be approved once it opens."""

    code = "window_closed"
    http_status = 403


class Forbidden(JitError):
    """You may not see this."""

    code = "forbidden"
    http_status = 403


class BreakGlassOnly(JitError):
    """This request asked for break glass: only a break-glass approver can approve it."""

    code = "break_glass_only"
    http_status = 403


class NotBreakGlassApprover(JitError):
    """You are not a break-glass approver for this action."""

    code = "not_break_glass_approver"
    http_status = 403


class NoBreakGlass(JitError):
    """This action has no break-glass approvers."""

    code = "no_break_glass"
    http_status = 400


class OutsideWindow(JitError):
    """The action may not be requested now; `next_opening` says when it may."""

    code = "outside_window"
    http_status = 403

    def __init__(self, action: str, next_opening: datetime | None, windows: list[str]) -> None:
        when = (
            f"; the next window opens at {next_opening.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
            if next_opening
            else ""
        )
        super().__init__(
            f"{action} may only be requested during its change windows ({'; '.join(windows)}){when}. "
            'In an emergency, ask with "break_glass": true.'
        )
        self.next_opening = next_opening


class NoExtend(JitError):
    """The action's policy has no `extend:` block: its grants cannot be extended."""

    code = "no_extend"
    http_status = 403


class OverMaxTotal(JitError):
    """An extension would make the grant's whole window longer than the action's extend.max_total."""

    code = "over_max_total"
    http_status = 422


class ExtensionPending(JitError):
    """Another extension of this grant is still waiting for approval."""

    code = "extension_pending"
    http_status = 409


class TooLarge(JitError):
    """The body (or a part of it, such as a session transcript) is larger than jit keeps."""

    code = "too_large"
    http_status = 413


class SessionRecorded(JitError):
    """This request's session was recorded already: a session is recorded once."""

    code = "session_recorded"
    http_status = 409


class GrantNotOver(JitError):
    """A session is recorded once its grant has ended (released, revoked or expired)."""

    code = "not_ended"
    http_status = 409
