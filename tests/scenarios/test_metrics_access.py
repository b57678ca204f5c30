"""Who may read /metrics: a scraper holding JIT_METRICS_TOKEN, or (without one) only this host.

`jit serve` publishes one port for Slack, pipelines and /metrics; in containers that port is
reached from the Docker network (the bridge gateway, 172.x.0.1), never from 127.0.0.1.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.settings import Settings
from bot.web.app import create_app
from bot.wiring import build

METRICS_TOKEN = "metrics-token-0123456789abcdef"
DOCKER_GATEWAY = "172.18.0.1"


def app_with(monkeypatch, **env: str):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return create_app(build(Settings())).test_client()


def get(http, remote: str = "127.0.0.1", **headers: str):
    return http.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": remote})


def is_metrics(resp) -> bool:
    return resp.status_code == 200 and "jit_redis_up" in resp.get_data(as_text=True)


def test_without_a_token_only_this_host_reads_metrics(jit_env, monkeypatch):
    monkeypatch.delenv("JIT_METRICS_TOKEN", raising=False)
    http = app_with(monkeypatch)
    for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert is_metrics(get(http, local)), local

    for remote in (DOCKER_GATEWAY, "10.0.0.7", "203.0.113.9", "::ffff:172.18.0.1", ""):
        resp = get(http, remote)
        assert resp.status_code == 403, remote
        assert "jit_" not in resp.get_data(as_text=True)
        assert resp.get_json()["error"] == "forbidden"

    # a reverse proxy on this host connects from 127.0.0.1 but says whom it forwards
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        resp = get(http, "127.0.0.1", **{header: "203.0.113.9"})
        assert resp.status_code == 403, header


def test_with_a_token_every_scraper_must_present_it(jit_env, monkeypatch):
    http = app_with(monkeypatch, JIT_METRICS_TOKEN=METRICS_TOKEN)

    assert is_metrics(get(http, DOCKER_GATEWAY, Authorization=f"Bearer {METRICS_TOKEN}"))
    assert is_metrics(get(http, "127.0.0.1", Authorization=f"bearer {METRICS_TOKEN}"))

    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": "Bearer "},
    ):
        for remote in ("127.0.0.1", DOCKER_GATEWAY):  # the token is asked of local clients too
            resp = get(http, remote, **headers)
            assert resp.status_code == 401, (headers, remote)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "jit_" not in resp.get_data(as_text=True)


def test_the_other_operational_endpoints_stay_public(jit_env, monkeypatch):
    http = app_with(monkeypatch, JIT_METRICS_TOKEN=METRICS_TOKEN)
    for path in ("/healthz", "/readyz"):
        assert http.get(path, environ_base={"REMOTE_ADDR": DOCKER_GATEWAY}).status_code == 200, path


@pytest.mark.parametrize("value", ["short", "x" * 15])
def test_a_short_metrics_token_stops_start_up(jit_env, monkeypatch, value):
    monkeypatch.setenv("JIT_METRICS_TOKEN", value)
    with pytest.raises(ValidationError, match="JIT_METRICS_TOKEN|jit_metrics_token|16 characters"):
        Settings()


def test_an_empty_metrics_token_means_none(jit_env, monkeypatch):
    monkeypatch.setenv("JIT_METRICS_TOKEN", "")
    assert Settings().jit_metrics_token is None
