"""The rules of jit: request lifecycle, policy, atomic state in Redis, audit chain. No Slack, no HTTP."""
