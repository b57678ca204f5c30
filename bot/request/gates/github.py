"""`POST /github/webhook`: jit as a GitHub App acting as a custom deployment protection rule.

A delivery counts only with a valid `X-Hub-Signature-256` (constant-time) and a `X-GitHub-Delivery`
never seen before. `deployment_protection_rule` (`requested`) opens a request for the deployment;
`workflow_run` (`completed`, `cancelled`) cancels what the run still waits for; any other event is
acknowledged and ignored. The decision goes back through the due queue (workers/jobs/gate.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.core.gates import GITHUB, gate_id, run_group
from bot.platforms.github import GitHubApp, UnknownInstallation, signature_ok
from bot.platforms.http import ApiError
from bot.request.gates.service import GateService, HeldDeployment
from bot.request.gates.webhook import DELIVERY_ID, Refused, answer, once, parse_json, read_body, runtime
from bot.store.gates import GateStore

bp = Blueprint("github_gate", __name__)

Id = Annotated[int, Field(ge=1)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Repository(_Event):
    id: Id
    full_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", max_length=200)]


class _Installation(_Event):
    id: Id


class _User(_Event):
    login: Annotated[str, Field(min_length=1, max_length=100)]


class _Deployment(_Event):
    id: Id
    sha: str = ""
    ref: str = ""


class ProtectionRuleRequested(_Event):
    """`deployment_protection_rule`, `action: requested` (the fields jit reads)."""

    environment: Annotated[str, Field(min_length=1, max_length=255)]
    event: str = ""
    sha: str | None = None
    ref: str | None = None
    deployment_callback_url: Annotated[str, Field(max_length=2000)]
    deployment: _Deployment
    repository: _Repository
    installation: _Installation
    sender: _User | None = None


class _Run(_Event):
    id: Id
    run_attempt: Id = 1
    status: str = ""
    conclusion: str | None = None


class WorkflowRun(_Event):
    workflow_run: _Run
    repository: _Repository


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(400, "bad_request", f"{where}: {first['msg']}"[:300]) from None


@bp.post("/github/webhook")
def github_webhook() -> Response:
    rt = runtime()
    secret = rt.settings.github_webhook_secret
    if secret is None or not rt.settings.github_app_id:
        return answer(404, "not_configured", "GitHub deployment gates are not configured (GITHUB_APP_ID)")
    try:
        raw = read_body()
    except Refused as e:
        return e.response
    if not signature_ok(secret.get_secret_value(), raw, request.headers.get("X-Hub-Signature-256")):
        return answer(401, "bad_signature", "X-Hub-Signature-256 does not match the body and the webhook secret")
    delivery = request.headers.get("X-GitHub-Delivery", "")
    if not DELIVERY_ID.fullmatch(delivery):
        return answer(400, "bad_request", "X-GitHub-Delivery must be the delivery's GUID")
    gates = GateStore(rt.redis, rt.settings.jit_request_retention)
    event = request.headers.get("X-GitHub-Event", "")
    return once(gates, GITHUB, delivery, lambda: _handle(rt, gates, event, parse_json(raw)))


def _handle(rt: Any, gates: GateStore, event: str, data: dict[str, Any]) -> Response:
    if event == "deployment_protection_rule" and data.get("action") == "requested":
        return _requested(rt, gates, _parse(ProtectionRuleRequested, data))
    if event == "workflow_run" and data.get("action") == "completed":
        return _completed(rt, gates, _parse(WorkflowRun, data))
    return answer(200, "ignored", f"jit does not act on {event or 'this event'!r} / {data.get('action')!r}")


def _requested(rt: Any, gates: GateStore, ev: ProtectionRuleRequested) -> Response:
    app = GitHubApp.from_settings(rt.settings, rt.redis, rt.vault)
    repo = ev.repository.full_name
    run_id = app.run_of_callback(ev.deployment_callback_url, repo)
    if run_id is None:
        raise Refused(
            400, "bad_callback_url", "deployment_callback_url is not this GitHub's review URL for the repository"
        )
    installation = ev.installation.id
    try:
        app.installation_token(installation)  # an installation GitHub does not know: nothing is created
        run = app.workflow_run(installation, repo, run_id)
    except UnknownInstallation:
        raise Refused(403, "unknown_installation", f"GitHub knows no installation {installation} of this app") from None
    except ApiError as e:
        if e.status == 404:
            raise Refused(422, "unknown_run", f"GitHub has no run {run_id} in {repo}") from None
        hint = " (the app needs Actions: read)" if e.status == 403 else ""
        raise Refused(502, "github_unavailable", f"asking GitHub for the run failed: {e}{hint}") from None
    sha = ev.sha or ev.deployment.sha
    sender = ev.sender.login if ev.sender else None
    ref = ev.ref or ev.deployment.ref
    context = {
        "repository": repo,
        "repository_id": ev.repository.id,
        "environment": ev.environment,
        # `ref` is a full ref wherever jit has one (auto_approve rules match refs/heads/…); GitHub
        # may name the deployment's ref by its short name, which is kept apart
        "ref": ref if ref.startswith("refs/") else None,
        "ref_name": None if ref.startswith("refs/") else ref,
        "commit": sha,
        "run_id": run_id,
        "run_attempt": run.get("run_attempt"),
        "workflow": run.get("name"),
        "actor": sender,
        "event": ev.event,
        "deployment_id": ev.deployment.id,
        "run_url": run.get("html_url") if str(run.get("html_url", "")).startswith("https://") else None,
    }
    reason = (
        f"GitHub deployment of {repo} ({(sha or '')[:7]}) to {ev.environment}: "
        f"workflow {run.get('name') or '?'} run #{run.get('run_number') or run_id}"
    )
    held = HeldDeployment(
        platform=GITHUB,
        gate_id=gate_id(GITHUB, ev.repository.id, ev.deployment.id),
        place=repo,
        environment=ev.environment,
        reason=reason,
        requested_by=sender,
        context={k: v for k, v in context.items() if v is not None},
        target={
            "installation_id": installation,
            "callback_url": ev.deployment_callback_url,
            "environment": ev.environment,
            "run_id": run_id,
        },
    )
    opened = GateService(rt.requests, gates, rt.revokes).open(held)
    return answer(200 if opened.known else 202, "known" if opened.known else "held", **opened.body())


def _completed(rt: Any, gates: GateStore, ev: WorkflowRun) -> Response:
    """A run that ends cancelled waits for nothing: its pending requests are cancelled."""
    if ev.workflow_run.conclusion != "cancelled":
        return answer(200, "ignored", "only a cancelled run changes anything")
    group = run_group(
        {
            "repository_id": ev.repository.id,
            "run_id": ev.workflow_run.id,
            "run_attempt": ev.workflow_run.run_attempt,
        }
    )
    records = gates.in_group(group) if group else []
    ended = GateService(rt.requests, gates, rt.revokes).cancel(records, "the run was cancelled on GitHub")
    return answer(200, "cancelled", requests=ended)
