"""`redis_acl` backend against a private, throwaway redis-server (see conftest)."""

from __future__ import annotations

import re

import pytest
import redis
from pydantic import ValidationError

from workers.backends import registry
from workers.backends.base import BackendEnv, GrantError
from workers.backends.redis_acl import RedisAclBackend, rules_allow_select

RULES = ["~cache:*", "+get", "+set", "+del"]
ENV = "JIT_TEST_REDIS_URL"


@pytest.fixture
def make_backend(redis_server, redis_admin):
    def make(db: int = 0, url: str | None = None, **config) -> RedisAclBackend:
        config.setdefault("url_env", ENV)
        config.setdefault("rules", RULES)
        env = BackendEnv(environ={ENV: url or redis_server.admin_url(db)})
        return RedisAclBackend(RedisAclBackend.Config(**config), env)

    return make


def connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    client.get("cache:probe")  # force the connection (and AUTH) now
    return client


def test_registered():
    assert registry()["redis_acl"] is RedisAclBackend
    assert RedisAclBackend.enforces_expiry is False


@pytest.mark.parametrize(
    "rule",
    [
        ">pw",
        "<pw",
        "#" + "a" * 64,
        "!" + "a" * 64,
        "nopass",
        "NoPass",
        "resetpass",
        "on",
        "OFF",
        "reset",
        "~a ~b",
        "",
        "+get\n",
        "(~x* >pw)",
        "(~x* nopass)",
        "()",
        "(~x*",
        "+get)",
    ],
)
def test_rules_that_touch_passwords_or_state_are_rejected(rule):
    with pytest.raises(ValidationError):
        RedisAclBackend.Config(url_env=ENV, rules=["~cache:*", rule])


def test_good_rules_and_template_checks():
    cfg = RedisAclBackend.Config(
        url_env=ENV,
        rules=["~cache:*", "%R~ro:*", "+@read", "-@dangerous", "+client|setname", "(~x:* +get)"],
    )
    assert cfg.username_template == "jit-{action}-{id8}"
    for bad in ["jit-{action}", "jit {id8}", "{nope}-{id8}"]:
        with pytest.raises(ValidationError):
            RedisAclBackend.Config(url_env=ENV, rules=RULES, username_template=bad)
    with pytest.raises(ValidationError):
        RedisAclBackend.Config(url_env=ENV, rules=RULES, extra=True)
    with pytest.raises(ValidationError):
        RedisAclBackend.Config(url_env=ENV, rules=[])


def test_granted_user_is_limited_to_its_rules(make_backend, make_request, redis_admin):
    backend = make_backend()
    request = make_request()
    cred = backend.grant(request)

    assert set(cred) == {"username", "password", "host", "port", "url"}
    assert cred["username"] == f"jit-deploy-{request.id[:8]}"
    # No SELECT in the rules: no /db in the URL (redis-py would send SELECT and fail).
    assert cred["url"] == f"redis://{cred['username']}:{cred['password']}@127.0.0.1:{cred['port']}"

    client = connect(cred["url"])
    assert client.set("cache:a", "1") is True
    assert client.get("cache:a") == "1"
    assert client.delete("cache:a") == 1
    redis_admin.set("other:b", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("other:b")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:b", "y")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.keys("*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("ACL", "LIST")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    assert redis_admin.get("other:b") == "x"
    client.close()
    backend.revoke(request, cred)


def test_revoke_fails_auth_and_closes_open_connections(make_backend, make_request, redis_admin):
    backend = make_backend()
    request = make_request()
    cred = backend.grant(request)
    client = redis.Redis.from_url(cred["url"], decode_responses=True, socket_timeout=5, retry=None)
    client.set("cache:x", "1")

    backend.revoke(request, cred)

    with pytest.raises(redis.exceptions.ConnectionError):
        client.get("cache:x")  # the server closed it (ACL DELUSER)
    client.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        connect(cred["url"])
    assert cred["username"] not in redis_admin.acl_users()


def test_revoke_twice_and_revoke_of_nothing_succeed(make_backend, make_request, redis_admin):
    backend = make_backend()
    request = make_request()
    cred = backend.grant(request)
    backend.revoke(request, cred)
    backend.revoke(request, cred)
    backend.revoke(request, None)
    backend.revoke(make_request(), None)
    assert redis_admin.acl_users() == ["default"]


def test_grant_twice_keeps_one_user_and_latest_password(make_backend, make_request, redis_admin):
    backend = make_backend()
    request = make_request()
    first = backend.grant(request)
    second = backend.grant(request)
    assert first["username"] == second["username"] and first["password"] != second["password"]
    assert sorted(redis_admin.acl_users()) == sorted(["default", second["username"]])
    assert len(redis_admin.acl_getuser(second["username"])["passwords"]) == 1
    with pytest.raises(redis.exceptions.AuthenticationError):
        connect(first["url"])
    connect(second["url"]).close()
    backend.revoke(request, second)


def test_interrupted_grant_is_cleaned_up_by_revoke_without_credential(make_backend, make_request, redis_admin):
    backend = make_backend()
    request = make_request()
    lost = backend.grant(request)
    client = connect(lost["url"])
    backend.revoke(request, None)
    assert lost["username"] not in redis_admin.acl_users()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.get("cache:x")
    client.close()


@pytest.mark.parametrize("action", ["Deploy Prod; ACL DELUSER default", "ÄÖ/x:y", "default", "x" * 300])
def test_odd_action_names_give_safe_usernames(make_backend, make_request, redis_admin, action):
    backend = make_backend()
    request = make_request(action=action)
    cred = backend.grant(request)
    assert re.fullmatch(r"[a-z0-9_.:-]+", cred["username"]) and cred["username"] != "default"
    assert cred["username"].endswith(request.id[:8])
    connect(cred["url"]).close()
    backend.revoke(request, cred)
    assert redis_admin.acl_users() == ["default"]


def test_database_in_url_only_when_select_is_allowed(make_backend, make_request, redis_server):
    backend = make_backend(db=2, rules=[*RULES, "+select"])
    request = make_request()
    cred = backend.grant(request)
    assert cred["url"].endswith(f":{redis_server.port}/2")
    client = connect(cred["url"])
    client.set("cache:in-db2", "yes")
    client.close()
    assert redis_server.admin(2).get("cache:in-db2") == "yes"
    assert redis_server.admin(0).get("cache:in-db2") is None
    backend.revoke(request, cred)

    # db 0 + a category containing SELECT: "/0" is added (harmless, explicit).
    backend = make_backend(rules=["~cache:*", "+get", "+@connection"])
    request = make_request()
    cred = backend.grant(request)
    assert cred["url"].endswith("/0")
    connect(cred["url"]).close()
    backend.revoke(request, cred)


def test_non_zero_db_without_select_is_refused(make_backend, make_request, redis_admin):
    backend = make_backend(db=2)
    request = make_request()
    with pytest.raises(GrantError, match="SELECT"):
        backend.grant(request)
    assert redis_admin.acl_users() == ["default"]  # the half-made user was deleted


@pytest.mark.parametrize(
    "rules",
    [
        ["~*", "+get"],
        ["~*", "+select"],
        ["~*", "+@all"],
        ["~*", "allcommands", "-select"],
        ["~*", "+@all", "-@connection"],
        ["~*", "+@fast"],
        ["~*", "+@read", "+@write"],
        ["~*", "+@connection", "-@all", "+get"],
        ["~*", "+get", "(~x* +select)"],
        ["~*", "nocommands", "+select"],
    ],
)
def test_static_select_rule_agrees_with_the_server(redis_admin, rules):
    """The fallback for Redis < 7 (no ACL DRYRUN) must match what the server really does."""
    if int(redis_admin.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("needs Redis 7 (ACL DRYRUN, selectors) to ask the server")
    redis_admin.execute_command("ACL", "SETUSER", "jit-probe", "reset", "on", ">probe-pw", *rules)
    try:
        server_says = redis_admin.execute_command("ACL", "DRYRUN", "jit-probe", "SELECT", "0") == "OK"
    finally:
        redis_admin.execute_command("ACL", "DELUSER", "jit-probe")
    assert rules_allow_select(rules) is server_says


def test_errors_never_carry_secrets(make_backend, make_request, redis_server):
    wrong = "Wr0ng-Admin-Secret"
    backend = make_backend(url=f"redis://:{wrong}@127.0.0.1:{redis_server.port}/0")
    with pytest.raises(GrantError) as e:
        backend.grant(make_request())
    assert wrong not in str(e.value)

    missing = RedisAclBackend(RedisAclBackend.Config(url_env="NOPE_NOT_SET", rules=RULES), BackendEnv(environ={}))
    with pytest.raises(GrantError, match="NOPE_NOT_SET is not set"):
        missing.grant(make_request())


# -- ownership: jit only ever touches users it made for this request ------------------------------


def getuser(client: redis.Redis, name: str):
    return client.execute_command("ACL", "GETUSER", name)


def selectors(reply) -> list[dict]:
    out = []
    for sel in reply.get("selectors") or []:
        out.append(sel if isinstance(sel, dict) else dict(zip(sel[::2], sel[1::2], strict=True)))
    return out


def test_jits_users_carry_a_marker_that_grants_nothing(make_backend, make_request, redis_admin):
    backend = make_backend(rules=[*RULES, "clearselectors", "(~x:* +get)"])
    request = make_request()
    cred = backend.grant(request)
    marker = f"~jit-owner:{request.id}"
    sels = selectors(getuser(redis_admin, cred["username"]))
    assert {"commands": "-@all", "keys": marker, "channels": ""} in sels
    assert {s["keys"] for s in sels} == {marker, "~x:*"}  # the policy's selector kept too
    key = marker[1:]
    for command in (["GET", key], ["SET", key, "1"], ["DEL", key], ["PUBLISH", key, "m"]):
        reply = redis_admin.execute_command("ACL", "DRYRUN", cred["username"], *command)
        assert reply != "OK", command
    client = connect(cred["url"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set(key, "1")
    client.close()
    backend.revoke(request, cred)
    assert cred["username"] not in redis_admin.acl_users()


def test_a_foreign_user_with_the_same_name_is_never_touched(make_backend, make_request, redis_admin, redis_server):
    backend = make_backend()
    request = make_request()
    name = backend.username(request)
    redis_admin.execute_command("ACL", "SETUSER", name, "on", ">theirs", "~*", "+@all")
    before = getuser(redis_admin, name)

    with pytest.raises(GrantError, match="not created by jit"):
        backend.grant(request)
    backend.revoke(request, None)
    backend.revoke(request, {"username": name, "password": "not-theirs"})

    assert getuser(redis_admin, name) == before
    theirs = connect(f"redis://{name}:theirs@127.0.0.1:{redis_server.port}")
    assert theirs.ping()
    theirs.close()


def test_another_requests_user_is_never_touched(make_backend, make_request, redis_admin):
    """Two request ids with the same first 8 characters give the same `{id8}` name."""
    backend = make_backend()
    first = make_request(request_id="abcdef12" + "0" * 24)
    second = make_request(request_id="abcdef12" + "1" * 24)
    cred = backend.grant(first)
    assert backend.username(second) == cred["username"]
    before = getuser(redis_admin, cred["username"])

    with pytest.raises(GrantError, match="not created by jit"):
        backend.grant(second)
    backend.revoke(second, None)

    assert getuser(redis_admin, cred["username"]) == before
    connect(cred["url"]).close()  # the first grant still works
    backend.revoke(first, cred)
    assert redis_admin.acl_users() == ["default"]


def test_a_user_made_before_markers_existed_is_revoked_by_its_credential(
    make_backend, make_request, redis_admin, redis_server
):
    """Grants active across the upgrade: the stored password proves the user is jit's."""
    backend = make_backend()
    request, unproven = make_request(), make_request()
    for req in (request, unproven):
        redis_admin.execute_command("ACL", "SETUSER", backend.username(req), "reset", "on", ">old-grant-pw", *RULES)
    name = backend.username(request)

    backend.revoke(request, {"username": name, "password": "old-grant-pw"})
    backend.revoke(unproven, None)  # nothing proves it is ours: left alone

    assert name not in redis_admin.acl_users()
    assert backend.username(unproven) in redis_admin.acl_users()
