"""Grant backends. Each module registers one `type:` for the policy's `grant:` block."""

from workers.backends import exec, postgres, record, redis_acl, token, webhook  # noqa: F401  # noqa: F401
