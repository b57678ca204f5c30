"""GitLab for the deployment-gate tests: the v4 API a jit approver uses (version, deployment,
approval) and the deployment webhook GitLab sends (`X-Gitlab-Token`, `Deployment Hook`).

Stdlib only.
"""

from .payloads import delivery, deployment_event
from .server import Approval, GitLabFake

__all__ = ["Approval", "GitLabFake", "deployment_event", "delivery"]
