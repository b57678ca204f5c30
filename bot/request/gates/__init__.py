"""Deployment gates: GitHub and GitLab hold a deployment until jit decides; their webhooks open requests here."""
