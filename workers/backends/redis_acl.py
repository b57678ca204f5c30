"""`redis_acl`: a short-lived Redis ACL user per request.

Policy example::

    grant:
      type: redis_acl
      url_env: JIT_REDIS_ADMIN_URL       # env var with the admin URL (redis:// or rediss://)
      rules: ["~cache:*", "+@read", "+@write", "-@dangerous"]
      username_template: jit-{action}-{id8}

Grant runs ``ACL SETUSER <name> reset on >password <rules…> (~jit-owner:<request id>
resetchannels -@all)``. ``reset`` first means a retried grant replaces the user (and its
password) instead of adding a second password, so there is one identity per request and the
latest password is the only one. Revoke runs ``ACL DELUSER <name>``, which also closes the
user's open connections; a missing user is success. Just before, it reads the user's
connections and ACL LOG denials for the request's usage record (``redis_acl_usage``).

The last rule is jit's ownership marker: a selector that allows no command (so it grants
nothing: a selector only ever adds permissions, and this one has none), which Redis stores
and shows back in ``ACL GETUSER``/``ACL LIST``. It comes after the policy's rules, so
``clearselectors``, ``allkeys`` or ``allchannels`` there cannot remove or conflict with it
(a key or channel pattern as a marker would clash with ``~*``/``&*`` and grant a real key).
Grant and revoke only touch a user whose marker names the same request: a user someone else
made, or jit's user for another request whose name clashes (a template change, two ids with
the same first 8 characters), is refused by grant and left alone by revoke. A user made
before markers existed is deleted by revoke only when the stored credential's password still
authenticates as it. (Between the check and the change there is no lock: Redis has no
conditional ``ACL SETUSER``.) Selectors need Redis 7 or newer.

``rules`` are ACL rules, one token per item (a selector ``(~k* +get)`` is one item). Rules
that set or clear passwords or switch the user on/off (``>…``, ``<…``, ``#…``, ``!…``,
``nopass``, ``resetpass``, ``on``, ``off``) and ``reset`` are refused: jit owns those.
Beware that ``+@all``/``allcommands`` includes ``ACL`` and ``CONFIG`` (use ``-@admin``).

The handed-out URL carries a database number ``/N`` (N from the admin URL, 0 if absent)
only when the user may run ``SELECT``: clients such as redis-py send ``SELECT N`` on connect
when the URL has a database, which fails for a user without ``SELECT``. The server decides:
after ``ACL SETUSER`` jit asks ``ACL DRYRUN <name> SELECT N``. (Without DRYRUN, i.e. before
Redis 7, the rules would be evaluated in order: ``+select``, ``+@all``, ``allcommands`` or ``+@`` of a
category holding SELECT (``@connection``, ``@fast``, ``@keyspace``) allow it; ``-select``,
``-@all``, ``nocommands`` or ``-@`` of those categories deny it; a selector allowing it
counts; kept for reference, since grants now need Redis 7.) If the admin URL names a
database other than 0 and the user cannot SELECT it, the
grant fails (the user is deleted) rather than handing out a credential for database 0.

Redis ACLs are not persisted unless the server uses an ACL file/``CONFIG REWRITE``; jit does
not call ``ACL SAVE`` (a restart forgets the users, which for short-lived grants is fine).
``enforces_expiry`` is False: Redis has no expiring users, so the bot's revoke is the only
end of a credential.

``username_template`` fields as for ``postgres`` (``{action}``, ``{pipeline}``, ``{id8}``,
``{id}``); it must contain ``{id8}`` or ``{id}``; names are ``[a-z0-9_.:-]`` and not
``default``.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

import redis
from pydantic import field_validator

from workers.backends import naming, redis_acl_usage
from workers.backends.base import (
    BackendConfig,
    GrantBackend,
    GrantError,
    GrantRequest,
    register,
)
from workers.backends.redact import redact

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_.:-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME = 128
_FORBIDDEN_WORDS = {"nopass", "resetpass", "on", "off", "reset"}
_FORBIDDEN_PREFIXES = (">", "<", "#", "!")
#: ACL categories that contain SELECT (Redis 6/7: @connection, @fast; @keyspace in 6.x).
_SELECT_CATEGORIES = {"connection", "fast", "keyspace"}
_TIMEOUT = 10.0
_MARKER_PREFIX = "jit-owner:"
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def render_name(template: str, *, action: str, pipeline: str, request_id: str) -> str:
    return naming.render_name(template, action=action, pipeline=pipeline, request_id=request_id, max_len=MAX_NAME)


def _check_name(name: str) -> str | None:
    if len(name) > MAX_NAME:
        return f"user name {name!r} is longer than {MAX_NAME} characters"
    if not _NAME_RE.match(name):
        return f"user name {name!r} may only use a-z 0-9 _ . : -"
    if name == "default":
        return "user name must not be 'default'"
    return None


def _rule_problem(rule: str, *, in_selector: bool = False) -> str | None:
    """Why `rule` is not acceptable, or None."""
    if not rule:
        return "empty rule"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in rule):
        return f"rule {rule!r} contains whitespace or control characters"
    low = rule.lower()
    if low.startswith(_FORBIDDEN_PREFIXES):
        return f"rule {rule!r} sets a password; jit sets passwords itself"
    if low in _FORBIDDEN_WORDS:
        return f"rule {rule!r} is not allowed (jit controls on/off, passwords and reset)"
    if "(" in rule or ")" in rule:
        return f"rule {rule!r}: parentheses only as a whole selector like '(~key:* +get)'"
    if in_selector and low in {"clearselectors"}:
        return f"rule {rule!r} is not allowed inside a selector"
    return None


def validate_rule(rule: str) -> None:
    if rule.startswith("(") and rule.endswith(")"):
        inner = rule[1:-1].split()
        if not inner:
            raise ValueError("empty selector")
        for token in inner:
            if (why := _rule_problem(token, in_selector=True)) is not None:
                raise ValueError(why)
        return
    if (why := _rule_problem(rule)) is not None:
        raise ValueError(why)


def rules_allow_select(rules: list[str]) -> bool:
    """Static reading of `rules` (after `reset`, i.e. from no commands): may the user SELECT?"""

    def evaluate(tokens: list[str]) -> bool:
        allowed = False
        for token in tokens:
            t = token.lower()
            if t in ("allcommands", "+@all"):
                allowed = True
            elif t in ("nocommands", "-@all"):
                allowed = False
            elif t == "+select":
                allowed = True
            elif t == "-select":
                allowed = False
            elif t.startswith("+@") and t[2:] in _SELECT_CATEGORIES:
                allowed = True
            elif t.startswith("-@") and t[2:] in _SELECT_CATEGORIES:
                allowed = False
        return allowed

    root = [r for r in rules if not r.startswith("(")]
    if evaluate(root):
        return True
    return any(evaluate(r[1:-1].split()) for r in rules if r.startswith("("))


_REDACT = (
    (re.compile(r"rediss?://\S*", re.I), "redis://***"),
    (re.compile(r"(^|\s)>\S+"), r"\1>***"),  # an ACL rule quoting a password (`>secret`)
)


def _scrub(message: str, *secrets_: str | None) -> str:
    return redact(message, secrets_, _REDACT) or "unknown error"


@register
class RedisAclBackend(GrantBackend):
    type = "redis_acl"
    enforces_expiry = False

    class Config(BackendConfig):
        url_env: str
        rules: list[str]
        username_template: str = "jit-{action}-{id8}"

        @field_validator("url_env")
        @classmethod
        def _env_name(cls, v: str) -> str:
            if not _ENV_RE.match(v):
                raise ValueError("must be the name of an environment variable")
            return v

        @field_validator("rules")
        @classmethod
        def _rules(cls, v: list[str]) -> list[str]:
            if not v:
                raise ValueError("at least one rule is needed (e.g. '~cache:*' and '+get')")
            for rule in v:
                validate_rule(rule)
            return v

        @field_validator("username_template")
        @classmethod
        def _template(cls, v: str) -> str:
            fields = naming.template_fields(v)
            if not fields & {"id8", "id"}:
                raise ValueError("must contain {id8} or {id} so each request gets its own user")
            for rid in ("0a1b2c3d", "0" * 36):
                sample = render_name(v, action="a", pipeline="p", request_id=rid)
                if (why := _check_name(sample)) is not None:
                    raise ValueError(why)
            return v

    config: Config

    def username(self, request: GrantRequest) -> str:
        name = render_name(
            self.config.username_template,
            action=request.action,
            pipeline=request.pipeline,
            request_id=request.id,
        )
        if (why := _check_name(name)) is not None:
            raise GrantError(why)
        return name

    def _url(self) -> str:
        url = self.env.environ.get(self.config.url_env)
        if not url:
            raise GrantError(f"environment variable {self.config.url_env} is not set")
        return url

    def _client(self, url: str) -> redis.Redis:
        try:
            return redis.Redis.from_url(
                url,
                socket_timeout=_TIMEOUT,
                socket_connect_timeout=_TIMEOUT,
                decode_responses=True,
            )
        except (ValueError, redis.RedisError):
            raise GrantError(f"the URL in {self.config.url_env} is not a valid Redis URL") from None

    @staticmethod
    def _marker_keys(request: GrantRequest) -> str:
        """The key pattern of jit's marker selector for `request` (see the module docstring)."""
        if not _ID_RE.match(request.id):
            raise GrantError(f"request id {request.id!r} cannot be written into an ACL rule")
        return f"~{_MARKER_PREFIX}{request.id}"

    def _marker_rule(self, request: GrantRequest) -> str:
        return f"({self._marker_keys(request)} resetchannels -@all)"

    def _state(self, client: redis.Redis, name: str, request: GrantRequest) -> str:
        """ "absent", "ours" (carries this request's marker) or "foreign"."""
        reply = client.execute_command("ACL", "GETUSER", name)
        if reply is None:
            return "absent"
        if isinstance(reply, list):  # RESP2 without redis-py's parser: [field, value, …]
            reply = dict(zip(reply[::2], reply[1::2], strict=False))
        wanted = self._marker_keys(request)
        for selector in reply.get("selectors") or []:
            if isinstance(selector, list):
                selector = dict(zip(selector[::2], selector[1::2], strict=False))
            if selector.get("keys") == wanted and selector.get("commands") == "-@all":
                return "ours"
        return "foreign"

    @staticmethod
    def _password_proves(client: redis.Redis, name: str, password: Any) -> bool:
        """True if `password` (a credential jit handed out) authenticates as `name`."""
        if not isinstance(password, str) or not password:
            return False
        pool = client.connection_pool
        proof = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class,
                **{**pool.connection_kwargs, "username": name, "password": password, "db": 0},
            )
        )
        try:
            proof.ping()
        except redis.exceptions.NoPermissionError:
            pass  # authenticated; PING itself is simply not among its rules
        except redis.AuthenticationError:
            return False
        finally:
            proof.close()
            proof.connection_pool.disconnect()
        return True

    def _dryrun_select(self, client: redis.Redis, name: str, db: int) -> bool:
        try:
            reply = client.execute_command("ACL", "DRYRUN", name, "SELECT", str(db))
        except redis.ResponseError as e:
            text = str(e).lower()
            if "unknown subcommand" in text or "unknown command" in text or "syntax" in text:
                return rules_allow_select(self.config.rules)  # Redis < 7
            raise
        return str(reply).upper() == "OK"

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        name = self.username(request)
        password = secrets.token_urlsafe(32)
        url = self._url()
        parts = urlsplit(url)
        admin_password = parts.password
        client = self._client(url)
        try:
            db = int(client.connection_pool.connection_kwargs.get("db") or 0)
            host = client.connection_pool.connection_kwargs.get("host") or parts.hostname or "localhost"
            port = int(client.connection_pool.connection_kwargs.get("port") or parts.port or 6379)
            if self._state(client, name, request) == "foreign":
                raise GrantError(
                    f"user {name} already exists and was not created by jit for request "
                    f"{request.id}; refusing to touch it (change username_template)"
                )
            client.execute_command(
                "ACL",
                "SETUSER",
                name,
                "reset",
                "on",
                f">{password}",
                *self.config.rules,
                self._marker_rule(request),
            )
            can_select = self._dryrun_select(client, name, db)
            if db != 0 and not can_select:
                client.execute_command("ACL", "DELUSER", name)
                raise GrantError(
                    f"the admin URL uses database {db} but the rules do not allow SELECT; "
                    "add '+select' to rules or use database 0"
                )
        except GrantError:
            raise
        except redis.RedisError as e:
            raise GrantError(
                f"Redis ACL grant of user {name} failed: {_scrub(str(e), password, admin_password, url)}"
            ) from None
        finally:
            client.close()
        scheme = "rediss" if parts.scheme == "rediss" else "redis"
        netloc_host = f"[{host}]" if ":" in host else host
        handed = f"{scheme}://{quote(name, safe='')}:{quote(password, safe='')}@{netloc_host}:{port}"
        if can_select:
            handed += f"/{db}"
        return {
            "username": name,
            "password": password,
            "host": host,
            "port": port,
            "url": handed,
        }

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        names = [self.username(request)]
        if credential and isinstance(credential.get("username"), str):
            if credential["username"] not in names and credential["username"] != "default":
                names.append(credential["username"])  # template changed since the grant
        url = self._url()
        admin_password = urlsplit(url).password
        client = self._client(url)
        observed: list[dict[str, Any]] = []
        try:
            for name in names:
                state = self._state(client, name, request)
                if state == "absent":
                    continue
                if state == "foreign" and not (
                    credential
                    and credential.get("username") == name
                    and self._password_proves(client, name, credential.get("password"))
                ):
                    log.warning(
                        "redis_acl revoke: user %s is not jit's user for request %s; left alone",
                        name,
                        request.id,
                    )
                    continue
                # before DELUSER, which closes its connections; best effort (errors land in the summary)
                observed.append(redis_acl_usage.observe(client, name))
                client.execute_command("ACL", "DELUSER", name)  # 0 (gone meanwhile) is fine too
        except redis.RedisError as e:
            raise GrantError(
                f"Redis ACL revoke of user {names[0]} failed: {_scrub(str(e), admin_password, url)}"
            ) from None
        finally:
            client.close()
        return redis_acl_usage.merge(observed)
