"""Test doubles for the services jit talks to but tests cannot run (Slack), speaking their wire formats."""
