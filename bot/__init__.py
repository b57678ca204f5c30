"""jit: Slack-first just-in-time access for CI/CD pipelines."""
