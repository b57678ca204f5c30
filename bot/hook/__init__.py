"""The pipeline hook: JSON over HTTP for CI jobs (`/v1/requests`, credentials, introspection)."""
