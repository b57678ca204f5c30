"""`postgres`: a short-lived PostgreSQL login role per request.

Policy example::

    grant:
      type: postgres
      dsn_env: JIT_PG_ADMIN_DSN          # env var with the admin DSN (never the DSN itself)
      grant_roles: [deployer]            # the new login is created IN ROLE these
      username_template: jit_{action}_{id8}
      on_owned_objects: drop             # or: reassign (then reassign_to is required)
      reassign_to: migrations_owner
      connect_host: db.internal          # optional overrides for the DSN handed out
      connect_port: 5432
      dbname: app

Grant creates ``ROLE <name> LOGIN PASSWORD … VALID UNTIL <expires_at> IN ROLE <grant_roles>``
with a fresh random password; a retried grant for the same request finds the role and only
``ALTER ROLE``s its password and expiry (one identity per request, latest password wins).
The password is hashed client-side (``PQencryptPasswordConn``, the server's
``password_encryption``) so the cleartext never appears in server logs or ``pg_stat_activity``.

``VALID UNTIL`` refuses new logins after the window but does not end open sessions; only
revoke's ``pg_terminate_backend`` does. So that a session a client forgets does not outlive
the window while no worker runs, the role also gets ``ALTER ROLE … SET`` defaults equal to the
TTL: ``idle_session_timeout`` (the server closes a session idle that long),
``idle_in_transaction_session_timeout`` (same, inside a transaction) and ``statement_timeout``
(one statement is cancelled, the session stays). They bound forgetful clients, not hostile
ones: a session can ``SET`` them off, and one that keeps working lives until revoke ends it.

Supported servers: PostgreSQL 14 or newer (``idle_session_timeout``); tested on 15. Grants on
older servers are refused.

The role carries ``COMMENT ON ROLE … IS 'jit:<request id>'``, set in the same transaction
as ``CREATE ROLE``. Grant and revoke only ever touch a role whose comment names the same
request: a template that happens to produce the name of an existing role (``postgres``…)
is refused rather than having its password changed or being dropped.

Revoke, in this order, so that a revoke that gets stuck leaves no access behind:

1. ``ALTER ROLE … NOLOGIN`` and ``REVOKE`` of every membership of the role (its
   ``grant_roles``, and anyone made a member of it), in one transaction;
2. what the role did — its sessions and, with ``pg_stat_statements``, its statements — read
   for the request's usage record (``postgres_usage``; best effort, bounded, never an error);
3. ``pg_terminate_backend`` of the role's sessions;
4. in every *other* database where ``pg_shdepend`` shows the role owning objects or holding
   privileges (PostgreSQL <= 14 lets every login create in ``public``), connect with the same
   admin credentials and run ``REASSIGN OWNED`` (if configured) and ``DROP OWNED``; a database
   that does not allow connections is a GrantError naming it;
5. the same in the admin DSN's database, then ``DROP ROLE IF EXISTS``. A missing role is success.

``on_owned_objects: reassign`` refuses (GrantError, retried and alerted by the job layer)
while the role owns anything that would run with ``reassign_to``'s rights once reassigned —
SECURITY DEFINER functions, views without ``security_invoker``, materialized views, rules,
event triggers, and functions called by triggers, indexes, defaults, constraints, policies,
operators or casts (see ``postgres_owned``) — and names them. Refusing rather than rewriting
them: a rewrite would silently change what a migration built and cannot cover everything; while
refused, they belong to a role without login or memberships, i.e. they run with PUBLIC's rights.
An operator drops them or gives them an owner deliberately, and the next attempt completes.

The admin role needs: ``CREATEROLE``, ``ADMIN OPTION`` on every role in ``grant_roles``,
membership in ``pg_signal_backend`` (to end sessions), ``CONNECT`` on every database and,
for REASSIGN/DROP OWNED, the privileges of the created role (automatic for superusers and,
on PostgreSQL 16+, for the role that created it when it ``SET``/``INHERIT``s it) — a
superuser is simplest.

``username_template`` fields: ``{action}`` and ``{pipeline}`` (lower-cased, anything not
``[a-z0-9_]`` becomes ``_``; shortened if the name would exceed 63 bytes), ``{id8}`` (first
8 characters of the request id, lower-cased) and ``{id}`` (the whole request id, same
treatment). The template must contain ``{id8}`` or ``{id}`` and produce a plain lower-case
identifier (``[a-z_][a-z0-9_$]*``, at most 63 bytes, not ``pg_…``).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, field_validator, model_validator

from bot.core.clock import rfc3339
from workers.backends import naming, postgres_usage
from workers.backends import postgres_owned as owned
from workers.backends.base import (
    BackendConfig,
    GrantBackend,
    GrantError,
    GrantRequest,
    register,
)
from workers.backends.redact import redact

log = logging.getLogger(__name__)

render_name = naming.render_name

MAX_IDENT = 63  # NAMEDATALEN - 1
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_$]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MARKER_PREFIX = "jit:"
_CONNECT_TIMEOUT = 10
_TERMINATE_WAIT = 5.0
#: The oldest server jit grants on: idle_session_timeout (a session bound below) came in 14.
MIN_SERVER_VERSION = 140000
#: Per-role defaults, each set to the grant's TTL: a session PostgreSQL ends (or a statement it
#: cancels) without any worker, for clients that forget a session open past the window.
_SESSION_BOUNDS = (
    "idle_session_timeout",
    "idle_in_transaction_session_timeout",
    "statement_timeout",
)


#: Roles whose members can act as the server's OS user or read/write any of its files.
SUPERUSER_EQUIVALENT = {
    "postgres": "the default superuser",
    "pg_execute_server_program": "runs programs on the server as its OS user",
    "pg_write_server_files": "writes any file the server's OS user can",
    "pg_read_server_files": "reads any file the server's OS user can",
}
_CHECK_CONNECT_TIMEOUT = 3  # seconds: `jit policy check` must not wait long for a database


def _powerful_roles(dsn: str, dsn_env: str, roles: list[str]) -> list[str]:
    """Warnings for `roles` that are, or belong to, a role with SUPERUSER, CREATEROLE or
    BYPASSRLS or a superuser-equivalent one; never raises."""
    if not roles:
        return []
    try:
        admin_password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return [f"could not look up grant_roles with {dsn_env}: not a valid PostgreSQL DSN"]
    try:
        with psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=_CHECK_CONNECT_TIMEOUT,
            application_name="jit policy check",
        ) as conn:
            conn.execute("SET statement_timeout = '5s'")
            rows = conn.execute(
                "SELECT g.rolname, s.rolname, s.rolsuper, s.rolcreaterole, s.rolbypassrls "
                "FROM pg_roles g JOIN pg_roles s ON pg_has_role(g.oid, s.oid, 'MEMBER') "
                "WHERE g.rolname = ANY(%s) AND (s.rolsuper OR s.rolcreaterole OR s.rolbypassrls "
                "OR s.rolname = ANY(%s)) ORDER BY 1, 2",
                (roles, list(SUPERUSER_EQUIVALENT)),
            ).fetchall()
            known = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))}
    except psycopg.Error as e:
        return [
            f"could not look up grant_roles with {dsn_env}: {_pg_error(e, dsn, admin_password)}; "
            "only their names were checked"
        ]
    found = []
    for role, via, superuser, createrole, bypassrls in rows:
        powers = [
            name
            for name, has in (
                ("SUPERUSER", superuser),
                ("CREATEROLE", createrole),
                ("BYPASSRLS", bypassrls),
            )
            if has
        ]
        if role == via:
            found.append(f"grant role {role!r} has {', '.join(powers)}")
        elif powers:
            found.append(f"grant role {role!r} is a member of {via!r}, which has {', '.join(powers)}")
        else:
            found.append(
                f"grant role {role!r} is a member of {via!r}, which is superuser-equivalent "
                f"({SUPERUSER_EQUIVALENT[via]})"
            )
    found += [f"grant role {role!r} does not exist ({dsn_env})" for role in roles if role not in known]
    return found


def _check_name(name: str) -> str | None:
    """Why `name` is not a usable role name, or None."""
    if len(name.encode()) > MAX_IDENT:
        return f"role name {name!r} is longer than {MAX_IDENT} bytes"
    if not _NAME_RE.match(name):
        return f"role name {name!r} is not a plain lower-case identifier ([a-z_][a-z0-9_$]*)"
    if name.startswith("pg_"):
        return f"role name {name!r} uses the reserved pg_ prefix"
    return None


_SECRET_PATTERNS = [
    (re.compile(r"postgres(?:ql)?://\S*", re.I), "postgresql://***"),
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I), r"\1***"),
]


def _scrub(message: str, *secrets_: str | None) -> str:
    # Messages can quote names the temporary role chose; they end up in Slack.
    message = redact(message, secrets_, _SECRET_PATTERNS)
    return (owned.plain(message, limit=500) if message else "") or "unknown error"


def _pg_error(e: psycopg.Error, *secrets_: str | None) -> str:
    diag = getattr(e, "diag", None)
    primary = diag.message_primary if diag is not None and diag.message_primary else str(e)
    state = f" [{e.sqlstate}]" if getattr(e, "sqlstate", None) else ""
    return _scrub(primary, *secrets_) + state


@register
class PostgresBackend(GrantBackend):
    type = "postgres"
    enforces_expiry = True

    class Config(BackendConfig):
        dsn_env: str
        grant_roles: list[str]
        username_template: str = "jit_{action}_{id8}"
        on_owned_objects: Literal["reassign", "drop"] = "drop"
        reassign_to: str | None = None
        connect_host: str | None = None
        connect_port: int | None = Field(default=None, ge=1, le=65535)
        dbname: str | None = None

        @field_validator("dsn_env")
        @classmethod
        def _env_name(cls, v: str) -> str:
            if not _ENV_RE.match(v):
                raise ValueError("must be the name of an environment variable")
            return v

        @field_validator("grant_roles")
        @classmethod
        def _roles(cls, v: list[str]) -> list[str]:
            for role in v:
                if not role or "\x00" in role or len(role.encode()) > MAX_IDENT:
                    raise ValueError(f"{role!r} is not a role name")
            if len(set(v)) != len(v):
                raise ValueError("a role is listed twice")
            return v

        @field_validator("username_template")
        @classmethod
        def _template(cls, v: str) -> str:
            fields = naming.template_fields(v)
            if not fields & {"id8", "id"}:
                raise ValueError("must contain {id8} or {id} so each request gets its own role")
            # Worst cases: values starting with a digit, and the longest request id we accept.
            for rid in ("0a1b2c3d", "0" * 36):
                sample = render_name(v, action="0a", pipeline="0p", request_id=rid, max_len=MAX_IDENT)
                if (why := _check_name(sample)) is not None:
                    raise ValueError(why)
            return v

        @field_validator("reassign_to", "connect_host", "dbname")
        @classmethod
        def _not_empty(cls, v: str | None) -> str | None:
            if v is not None and (not v or "\x00" in v):
                raise ValueError("must not be empty")
            return v

        def warnings(self, environ: Mapping[str, str] | None = None) -> list[str]:
            """grant_roles that amount to superuser: by name, and (when `dsn_env` is set in
            `environ`) by what the server says about them and the roles they belong to."""
            found = [
                f"grant role {role!r} is superuser-equivalent ({why})"
                for role in self.grant_roles
                if (why := SUPERUSER_EQUIVALENT.get(role))
            ]
            dsn = (environ or {}).get(self.dsn_env)
            if dsn:
                unnamed = [r for r in self.grant_roles if r not in SUPERUSER_EQUIVALENT]
                found += _powerful_roles(dsn, self.dsn_env, unnamed)
            return found

        @model_validator(mode="after")
        def _reassign(self) -> PostgresBackend.Config:
            if self.on_owned_objects == "reassign" and not self.reassign_to:
                raise ValueError("reassign_to is required when on_owned_objects is 'reassign'")
            if self.on_owned_objects == "drop" and self.reassign_to:
                raise ValueError("reassign_to is only used when on_owned_objects is 'reassign'")
            return self

    config: Config

    # -- helpers -------------------------------------------------------------------------

    def username(self, request: GrantRequest) -> str:
        name = render_name(
            self.config.username_template,
            action=request.action,
            pipeline=request.pipeline,
            request_id=request.id,
            max_len=MAX_IDENT,
        )
        if (why := _check_name(name)) is not None:
            raise GrantError(why)
        return name

    @staticmethod
    def _marker(request: GrantRequest) -> str:
        return f"{_MARKER_PREFIX}{request.id}"

    def _dsn(self) -> str:
        dsn = self.env.environ.get(self.config.dsn_env)
        if not dsn:
            raise GrantError(f"environment variable {self.config.dsn_env} is not set")
        return dsn

    def _connect(self, dbname: str | None = None) -> tuple[psycopg.Connection, str | None]:
        """An admin session on the DSN's database, or on `dbname` with the same credentials."""
        dsn = self._dsn()
        try:
            admin_password = conninfo_to_dict(dsn).get("password")
            if dbname is not None:
                dsn = make_conninfo(dsn, dbname=dbname)
        except psycopg.Error:
            raise GrantError(f"the DSN in {self.config.dsn_env} is not a valid PostgreSQL DSN") from None
        where = self.config.dsn_env + (f", database {owned.plain(dbname)}" if dbname else "")
        try:
            conn = psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT,
                application_name="jit",
            )
        except psycopg.Error as e:
            raise GrantError(f"cannot connect to PostgreSQL ({where}): {_pg_error(e, dsn, admin_password)}") from None
        try:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute("SET statement_timeout = '60s'")
        except psycopg.Error as e:
            conn.close()
            raise GrantError(f"PostgreSQL session setup failed: {_pg_error(e, dsn, admin_password)}") from None
        return conn, admin_password

    @staticmethod
    def _role_marker(conn: psycopg.Connection, name: str) -> tuple[bool, str | None]:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (name,)
        ).fetchone()
        return (row is not None, row[0] if row else None)

    @staticmethod
    def _valid_until(expires_at: datetime) -> str:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        return expires_at.astimezone(UTC).isoformat()

    # -- contract ------------------------------------------------------------------------

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        name = self.username(request)
        password = secrets.token_urlsafe(32)
        valid_until = self._valid_until(request.expires_at)
        conn, admin_password = self._connect()
        with conn:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise GrantError(
                    f"PostgreSQL {conn.info.server_version // 10000} is older than 14, "
                    "the oldest version the postgres backend supports"
                )
            try:
                algorithm = conn.execute("SHOW password_encryption").fetchone()[0]
                verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), algorithm.encode()).decode()
                for attempt in range(2):
                    try:
                        self._create_or_update(conn, request, name, verifier, valid_until)
                        break
                    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                        # A concurrent grant for the same request created it first: update it.
                        if attempt:
                            raise
                host = self.config.connect_host or conn.info.host
                port = self.config.connect_port or conn.info.port
                dbname = self.config.dbname or conn.info.dbname
            except GrantError:
                raise
            except psycopg.Error as e:
                raise GrantError(
                    f"PostgreSQL grant of role {name} failed: {_pg_error(e, password, admin_password)}"
                ) from None
        return {
            "username": name,
            "password": password,
            "host": host,
            "port": int(port),
            "dbname": dbname,
            "dsn": _make_dsn(name, password, host, int(port), dbname),
            "valid_until": _rfc3339(request.expires_at),
        }

    def _create_or_update(
        self,
        conn: psycopg.Connection,
        request: GrantRequest,
        name: str,
        verifier: str,
        valid_until: str,
    ) -> None:
        ident = sql.Identifier(name)
        roles = sql.SQL(", ").join(sql.Identifier(r) for r in self.config.grant_roles)
        with conn.transaction():
            exists, marker = self._role_marker(conn, name)
            if exists and marker != self._marker(request):
                raise GrantError(
                    f"role {name} already exists and was not created by jit for request {request.id}; "
                    "refusing to touch it (change username_template)"
                )
            if exists:
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {}").format(
                        ident, sql.Literal(verifier), sql.Literal(valid_until)
                    )
                )
                if self.config.grant_roles:  # converge if the policy gained roles
                    conn.execute(sql.SQL("GRANT {} TO {}").format(roles, ident))
            else:
                query = sql.SQL(
                    "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "INHERIT PASSWORD {} VALID UNTIL {}"
                ).format(ident, sql.Literal(verifier), sql.Literal(valid_until))
                if self.config.grant_roles:
                    query = query + sql.SQL(" IN ROLE {}").format(roles)
                conn.execute(query)
                conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(self._marker(request))))
            bound_ms = _session_bound_seconds(request) * 1000
            for setting in _SESSION_BOUNDS:
                conn.execute(
                    sql.SQL("ALTER ROLE {} SET {} = {}").format(ident, sql.SQL(setting), sql.Literal(bound_ms))
                )

    def extend(self, request: GrantRequest, credential: dict[str, Any]) -> dict[str, Any] | None:
        """The window grew: ``VALID UNTIL`` and the role's session bounds follow its new end. The
        password stays (open sessions and the pipeline's copy keep working). Sessions opened
        before keep the bounds they started with: a bound only ever ends a session early, never late."""
        name = credential.get("username") if isinstance(credential.get("username"), str) else self.username(request)
        valid_until = self._valid_until(request.expires_at)
        conn, admin_password = self._connect()
        with conn:
            try:
                with conn.transaction():
                    exists, marker = self._role_marker(conn, name)
                    if not exists or marker != self._marker(request):
                        raise GrantError(f"role {name} of request {request.id} is gone; cannot extend it")
                    ident = sql.Identifier(name)
                    conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(ident, sql.Literal(valid_until)))
                    bound_ms = _session_bound_seconds(request) * 1000
                    for setting in _SESSION_BOUNDS:
                        conn.execute(
                            sql.SQL("ALTER ROLE {} SET {} = {}").format(ident, sql.SQL(setting), sql.Literal(bound_ms))
                        )
            except GrantError:
                raise
            except psycopg.Error as e:
                raise GrantError(
                    f"PostgreSQL extension of role {name} failed: {_pg_error(e, admin_password)}"
                ) from None
        return {**credential, "valid_until": _rfc3339(request.expires_at)}

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        names = [self.username(request)]
        if credential and isinstance(credential.get("username"), str):
            if credential["username"] not in names:  # template changed since the grant
                names.append(credential["username"])
        conn, admin_password = self._connect()
        observed: list[dict[str, Any]] = []
        with conn:
            for name in names:
                try:
                    self._drop(conn, request, name, observed)
                except GrantError:
                    raise
                except psycopg.Error as e:
                    raise GrantError(
                        f"PostgreSQL revoke of role {name} failed: {_pg_error(e, admin_password)}"
                    ) from None
        return postgres_usage.merge(observed)

    def _drop(
        self, conn: psycopg.Connection, request: GrantRequest, name: str, observed: list[dict[str, Any]] | None = None
    ) -> None:
        ident = sql.Identifier(name)
        exists, marker = self._role_marker(conn, name)
        if not exists:
            return
        if marker != self._marker(request):
            # Never created by us for this request (the grant refused it): nothing of ours to remove.
            log.warning(
                "postgres revoke: role %s is not jit's role for request %s; left alone",
                name,
                request.id,
            )
            return
        # First take away every way in, so that a revoke that gets stuck below (objects it may
        # not reassign, a database it cannot reach) leaves a role nobody can use.
        try:
            self._disarm(conn, name)
        except psycopg.errors.UndefinedObject:
            return  # dropped concurrently
        if observed is not None:  # the role can do nothing now; its sessions and statements are still there to read
            observed.append(postgres_usage.observe(conn, name))
        self._terminate_sessions(conn, name)
        for dbname, allows_connections in owned.other_databases(conn, name):
            if not allows_connections:
                raise GrantError(
                    f"role {name} owns objects or holds privileges in database {owned.plain(dbname)}, "
                    "which does not allow connections; allow connections or remove them by hand "
                    "(the role can no longer log in and has no memberships)"
                )
            other, admin_password = self._connect(dbname)
            with other:
                try:
                    with other.transaction():
                        self._dispose_owned(other, name)
                except psycopg.Error as e:
                    raise GrantError(
                        f"PostgreSQL revoke of role {name} in database {owned.plain(dbname)} failed: "
                        f"{_pg_error(e, admin_password)}"
                    ) from None
        with conn.transaction():
            self._dispose_owned(conn, name)
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    def _disarm(self, conn: psycopg.Connection, name: str) -> None:
        """NOLOGIN, and no memberships either way: the role keeps nothing but its own objects.

        Each statement commits on its own (autocommit): whatever fails later, what was taken
        away stays taken away.
        """
        ident = sql.Identifier(name)
        by_grantor = conn.info.server_version >= 160000  # 16+: a REVOKE names the grant's grantor
        conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(ident))
        rows = conn.execute(
            "SELECT r.rolname, m.rolname, g.rolname FROM pg_auth_members a "
            "JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
            "LEFT JOIN pg_roles g ON g.oid = a.grantor "
            "WHERE r.rolname = %s OR m.rolname = %s",
            (name, name),
        ).fetchall()
        for role, member, grantor in rows:
            query = sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(member))
            if by_grantor and grantor:
                query += sql.SQL(" GRANTED BY {}").format(sql.Identifier(grantor))
            conn.execute(query)
        left = conn.execute(
            "SELECT count(*) FROM pg_auth_members a JOIN pg_roles x "
            "ON x.oid = a.roleid OR x.oid = a.member WHERE x.rolname = %s",
            (name,),
        ).fetchone()[0]
        if left:
            raise GrantError(f"could not revoke the role memberships of {name}")

    def _dispose_owned(self, conn: psycopg.Connection, name: str) -> None:
        """REASSIGN (if configured) and DROP OWNED in `conn`'s database, inside its transaction.

        Reassigning refuses what would run with `reassign_to`'s rights (module docstring).
        """
        ident = sql.Identifier(name)
        if self.config.on_owned_objects == "reassign":
            target = self.config.reassign_to
            found = owned.owner_rights_objects(conn, name)
            if found:
                raise GrantError(
                    f"refusing to REASSIGN OWNED BY {name} TO {target} in database "
                    f"{owned.plain(conn.info.dbname)}: it owns objects that would run with "
                    f"{target}'s rights: {owned.describe(found)}. Review them, then drop them or "
                    "change their owner yourself; the revoke is retried (the role can no longer "
                    "log in and has no memberships)"
                )
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, sql.Identifier(target)))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))

    @staticmethod
    def _terminate_sessions(conn: psycopg.Connection, name: str) -> None:
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = %s AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + _TERMINATE_WAIT
        conn.execute(query, (name,))
        # pg_terminate_backend only signals; wait (briefly) until the backends are gone so
        # their locks do not block DROP OWNED.
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
            if not row[0]:
                return
            time.sleep(0.05)
            conn.execute(query, (name,))


def _session_bound_seconds(request: GrantRequest) -> int:
    """The grant's TTL, or the time left until its expiry if that is shorter (at least 1 s)."""
    expires_at = request.expires_at
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    left = math.ceil((expires_at - datetime.now(UTC)).total_seconds())
    return max(1, min(request.ttl_seconds, left))


def _rfc3339(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return rfc3339(dt)


def _make_dsn(user: str, password: str, host: str, port: int, dbname: str) -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    db = quote(dbname, safe="")
    if host.startswith("/"):  # Unix-socket directory: goes into the query string
        return f"postgresql://{auth}@/{db}?host={quote(host, safe='')}&port={port}"
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host = f"[{host}]"
    return f"postgresql://{auth}@{host}:{port}/{db}"
