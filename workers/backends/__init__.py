"""Grant backends. Each module registers one `type:` for the policy's `grant:` block.

`registry()` is the one way to look a backend up: the built-ins below register themselves on
import, and third-party ones come from the `jit.backends` entry-point group.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from workers.backends import exec, postgres, record, redis_acl, token, webhook  # noqa: F401 - they register
from workers.backends.base import REGISTRY, GrantBackend, register

_discovered = False


def registry() -> dict[str, type[GrantBackend]]:
    """All known backends, including those from the `jit.backends` entry-point group.

    Entry points are discovered once per process: scanning every installed distribution costs
    milliseconds, and this sits on the path of every grant and revoke.
    """
    global _discovered
    if not _discovered:
        for ep in entry_points(group="jit.backends"):
            if ep.name not in REGISTRY:
                register(ep.load())
        _discovered = True
    return dict(REGISTRY)
