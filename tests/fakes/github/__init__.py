"""GitHub as a GitHub App sees it, for the deployment-gate tests: the REST API (app JWT → installation
token, workflow runs, the protection-rule review) and the signed webhook deliveries GitHub sends.

    with GitHubFake() as gh:
        gh.install(77, "acme/web")
        payload = gh.deployment(full_name="acme/web", repo_id=1296269, installation_id=77, run_id=30433642,
                                environment="production", sha="c040cae…", deployment_id=145988746)
        body, headers = delivery(SECRET, "deployment_protection_rule", payload, app_id=gh.app_id)
        requests.post(jit_url + "/github/webhook", data=body, headers=headers)
        …
        assert gh.reviews(30433642)[0].body["state"] == "approved"

Stdlib, PyJWT and cryptography only.
"""

from .payloads import delivery, deployment_protection_rule, repository, run_object, sign, user, workflow_run
from .server import Callback, GitHubFake

__all__ = [
    "Callback",
    "GitHubFake",
    "delivery",
    "deployment_protection_rule",
    "repository",
    "run_object",
    "sign",
    "user",
    "workflow_run",
]
