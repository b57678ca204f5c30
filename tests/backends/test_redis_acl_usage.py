"""What a `redis_acl` grant's user did, read at revoke before ACL DELUSER closes its connections:
its open connections and the ACL LOG entries of what it was denied — against a real redis-server.
A broken ACL LOG (an admin user that may not read it) does not stop the revoke."""

from __future__ import annotations

import secrets

import pytest
import redis

from workers.backends.base import BackendEnv
from workers.backends.redis_acl import RedisAclBackend

RULES = ["~cache:*", "+get", "+set", "+client|setname"]
ENV = "JIT_TEST_REDIS_URL"


def backend_for(url: str) -> RedisAclBackend:
    return RedisAclBackend(RedisAclBackend.Config(url_env=ENV, rules=RULES), BackendEnv(environ={ENV: url}))


def used(cred: dict) -> redis.Redis:
    """The grant's user connects, works within its rules and is refused outside them."""
    client = redis.Redis.from_url(cred["url"], decode_responses=True, socket_timeout=5, client_name="deploy-job")
    client.set("cache:build", "42")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("secrets:db")  # a key outside its pattern
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("FLUSHALL")  # a command it does not have
    return client


def test_revoke_reports_connections_and_denials_before_the_user_is_deleted(redis_server, redis_admin, make_request):
    backend = backend_for(redis_server.admin_url())
    request = make_request()
    cred = backend.grant(request)
    client = used(cred)

    observed = backend.revoke(request, cred)

    assert cred["username"] not in redis_admin.acl_users()
    assert observed["user"] == cred["username"]
    assert observed["connections_total"] == 1
    (conn,) = observed["connections"]
    assert conn["name"] == "deploy-job" and conn["addr"].startswith("127.0.0.1:")
    reasons = {(d["reason"], d["object"]) for d in observed["denied"]}
    assert {("key", "secrets:db"), ("command", "flushall")} <= reasons
    assert observed["denied_total"] == len(observed["denied"])
    assert cred["password"] not in repr(observed)
    assert "errors" not in observed
    with pytest.raises(redis.ConnectionError):
        client.get("cache:build")  # DELUSER closed it, after it was recorded


def test_a_broken_acl_log_does_not_stop_the_revoke(redis_server, redis_admin, make_request):
    """The admin user may manage users but not read ACL LOG: the revoke completes, the
    connections are still reported and the summary names what failed."""
    password = secrets.token_urlsafe(16)
    redis_admin.execute_command("ACL", "SETUSER", "jit-admin-nolog", "on", f">{password}", "+@all", "-acl|log", "~*")
    try:
        url = f"redis://jit-admin-nolog:{password}@127.0.0.1:{redis_server.port}/0"
        backend = backend_for(url)
        request = make_request()
        cred = backend.grant(request)
        client = used(cred)  # kept open: a connection to report
        observed = backend.revoke(request, cred)
        assert cred["username"] not in redis_admin.acl_users()
        assert observed["connections_total"] == 1
        assert observed["denied"] == [] and any(e.startswith("ACL LOG:") for e in observed["errors"])
        assert password not in repr(observed)
        client.close()
    finally:
        redis_admin.execute_command("ACL", "DELUSER", "jit-admin-nolog")


def test_a_second_revoke_observes_nothing(redis_server, redis_admin, make_request):
    backend = backend_for(redis_server.admin_url())
    request = make_request()
    cred = backend.grant(request)
    assert backend.revoke(request, cred)["connections_total"] == 0
    assert backend.revoke(request, cred) is None
