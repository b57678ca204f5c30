"""The hook's limits and fixed answers, shared by the routes that enforce them and the OpenAPI
document that states them."""

from __future__ import annotations

MAX_BODY = 16 * 1024
#: Deeper than any body the hook accepts (its deepest field, `context`, is one level down).
MAX_JSON_DEPTH = 32
MAX_WAIT = 60
MAX_IDEMPOTENCY_KEY = 255

#: The pipeline client (client/jit_client.py), shipped with the server as this module and
#: served as one file at /v1/client.py.
CLIENT_MODULE = "jit_client"
CLIENT_CONTENT_TYPE = "text/x-python; charset=utf-8"
CLIENT_CACHE_CONTROL = "public, max-age=300"
#: `POST /v1/requests/{id}/session`: room for the largest transcript (1 MiB) however JSON escapes it.
MAX_SESSION_BODY = 2 * 1024 * 1024 + 64 * 1024
