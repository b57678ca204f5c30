"""`POST /gitlab/webhook`: GitLab deployment approvals decided in Slack.

A request counts only with the hook's secret in `X-Gitlab-Token` (constant-time); an
`X-Gitlab-Event-UUID` seen before is a replay. A deployment event with status `blocked` opens a
request — after GitLab's API confirms the deployment, its project and its job, since the webhook is
not signed — and `canceled` cancels it. jit answers through the approval API (workers/jobs/gate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.core.gates import GITLAB, gate_id
from bot.platforms.gitlab import GitLabApi, approvals_api_missing, token_ok
from bot.platforms.http import ApiError
from bot.request.gates.service import GateService, HeldDeployment
from bot.request.gates.webhook import DELIVERY_ID, Refused, answer, once, parse_json, read_body, runtime
from bot.store.gates import GateStore

bp = Blueprint("gitlab_gate", __name__)

Id = Annotated[int, Field(ge=1)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Project(_Event):
    id: Id
    path_with_namespace: str = ""


class DeploymentEvent(_Event):
    """A deployment event (the fields jit reads; the rest it asks the API for)."""

    status: str
    deployment_id: Id
    deployable_id: Id | None = None
    environment: Annotated[str, Field(min_length=1, max_length=255)]
    project: _Project


@bp.post("/gitlab/webhook")
def gitlab_webhook() -> Response:
    rt = runtime()
    hook = rt.settings.gitlab_webhook_token
    if hook is None or not rt.settings.gitlab_url:
        return answer(404, "not_configured", "GitLab deployment gates are not configured (GITLAB_URL)")
    if not token_ok(hook.get_secret_value(), request.headers.get("X-Gitlab-Token")):
        return answer(401, "bad_token", "X-Gitlab-Token is not this hook's secret token")
    try:
        raw = read_body()
    except Refused as e:
        return e.response
    gates = GateStore(rt.redis, rt.settings.jit_request_retention)
    event_id = request.headers.get("X-Gitlab-Event-UUID", "")
    if event_id and not DELIVERY_ID.fullmatch(event_id):
        return answer(400, "bad_request", "X-Gitlab-Event-UUID must be the event's UUID")
    handle = lambda: _handle(rt, gates, parse_json(raw))  # noqa: E731
    return once(gates, GITLAB, event_id, handle) if event_id else _unless_refused(handle)


def _unless_refused(handle: Any) -> Response:
    try:
        return handle()
    except Refused as e:
        return e.response


def _handle(rt: Any, gates: GateStore, data: dict[str, Any]) -> Response:
    if data.get("object_kind") != "deployment":
        return answer(200, "ignored", f"jit does not act on {data.get('object_kind')!r} events")
    try:
        ev = DeploymentEvent.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise Refused(400, "bad_request", f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"[:300]) from None
    if ev.status == "blocked":
        return _blocked(rt, gates, ev)
    if ev.status == "canceled":
        return _canceled(rt, gates, ev)
    return answer(200, "ignored", f"jit does not act on deployments that are {ev.status!r}")


def _blocked(rt: Any, gates: GateStore, ev: DeploymentEvent) -> Response:
    api = GitLabApi.from_settings(rt.settings)
    try:
        dep = api.deployment(ev.project.id, ev.deployment_id)
        project = api.project(ev.project.id)
    except ApiError as e:
        if e.status == 404:
            raise Refused(422, "unknown_deployment", f"GitLab has no deployment {ev.deployment_id}") from None
        raise Refused(502, "gitlab_unavailable", f"asking GitLab for the deployment failed: {e}") from None
    if dep.get("status") != "blocked" or dep.get("pending_approval_count") == 0:
        return answer(200, "ignored", "GitLab says this deployment is not waiting for approval")
    job = _mapping(dep.get("deployable"))
    pipeline = _mapping(job.get("pipeline"))
    env = str(_mapping(dep.get("environment")).get("name") or ev.environment)
    path = str(project.get("path_with_namespace") or "")
    ref = str(dep.get("ref") or "")
    # GitLab names a deployment's ref by its short name, always: a branch literally named
    # "refs/heads/main" is refs/heads/refs/heads/main, never the branch main
    ref = ("refs/tags/" if job.get("tag") else "refs/heads/") + ref if ref else ""
    user = str(_mapping(dep.get("user")).get("username") or "") or None
    sha = str(dep.get("sha") or "")
    base = api.base_url
    context = {
        "repository": path,
        "project_id": ev.project.id,
        "environment": env,
        "ref": ref,
        "commit": sha or None,
        "pipeline_id": pipeline.get("id"),
        "job_id": job.get("id"),
        "user_login": user,
        "deployment_id": ev.deployment_id,
        "run_url": f"{base}/{path}/-/pipelines/{pipeline.get('id')}" if base.startswith("https://") else None,
    }
    held = HeldDeployment(
        platform=GITLAB,
        gate_id=gate_id(GITLAB, ev.project.id, ev.deployment_id),
        place=path,
        environment=env,
        reason=f"GitLab deployment of {path} ({sha[:8]}) to {env}: job {job.get('name') or job.get('id')}",
        requested_by=user,
        context={k: v for k, v in context.items() if v is not None},
        target={"project_id": ev.project.id, "deployment_id": ev.deployment_id},
    )
    opened = GateService(rt.requests, gates, rt.revokes).open(held)
    return answer(200 if opened.known else 202, "known" if opened.known else "held", **opened.body())


def _canceled(rt: Any, gates: GateStore, ev: DeploymentEvent) -> Response:
    """A deployment jit holds was canceled — if GitLab says so. One webhook token serves every
    hooked project, so the event alone is not believed (as for `blocked`): the deployment is read
    back, and only a `canceled` one ends its request."""
    rec = gates.get(gate_id(GITLAB, ev.project.id, ev.deployment_id))
    if rec is None:
        return answer(200, "ignored", "jit holds no request for this deployment")
    try:
        dep = GitLabApi.from_settings(rt.settings).deployment(ev.project.id, ev.deployment_id)
    except ApiError as e:
        if e.status == 404:
            raise Refused(422, "unknown_deployment", f"GitLab has no deployment {ev.deployment_id}") from None
        raise Refused(502, "gitlab_unavailable", f"asking GitLab for the deployment failed: {e}") from None
    if dep.get("status") != "canceled":
        return answer(200, "ignored", f"GitLab says this deployment is {str(dep.get('status'))[:40]!r}, not canceled")
    ended = GateService(rt.requests, gates, rt.revokes).cancel([rec], "the deployment was canceled on GitLab")
    return answer(200, "cancelled", requests=ended)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def policy_warnings(policy: Any, environ: Mapping[str, str]) -> list[str]:
    """For `jit policy check`: where the policy gates GitLab deployments, whether the GitLab
    instance (GITLAB_URL) has the deployment approval API jit answers through."""
    gated = [name for name, p in policy.pipelines.items() if p.gitlab is not None]
    if not gated:
        return []
    where = ", ".join(f"pipelines.{n}.gitlab" for n in gated)
    url, token = environ.get("GITLAB_URL", "").strip(), environ.get("GITLAB_API_TOKEN", "").strip()
    if not url or not token:
        return [f"{where}: warning: set GITLAB_URL and GITLAB_API_TOKEN to check the instance's approvals API"]
    try:
        version = GitLabApi(url, token).version()
    except ApiError as e:
        return [f"{where}: warning: cannot ask GitLab its version ({e}); its approvals API is unchecked"]
    why = approvals_api_missing(version)
    if why is None:
        return []
    return [f"{where}: warning: GitLab at {url} has no deployment approvals API ({why}): jit cannot answer it"]
