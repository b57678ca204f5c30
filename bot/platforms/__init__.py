"""Adapters for the CI platforms' REST APIs (a GitHub App, a GitLab approver), as bot/store is for Redis."""
