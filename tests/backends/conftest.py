"""Real servers for the backend tests: PostgreSQL (shared and throwaway), a throwaway Redis.

Nothing here touches data it did not create: the shared PostgreSQL at 127.0.0.1:5432 gets a
`jit_test_<random>` database and randomly named roles, all dropped at teardown; Redis is
always a private `redis-server` on a free port (the machine's Redis at 6379 is never used).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from workers.backends.base import BackendEnv, GrantRequest

SHARED_PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return True
        time.sleep(0.05)
    return False


# -- requests ---------------------------------------------------------------------------


@pytest.fixture
def make_request() -> Callable[..., GrantRequest]:
    """Factory for GrantRequest with a fresh random id (so id8 differs per request)."""

    def make(
        action: str = "deploy",
        pipeline: str = "web-app",
        *,
        ttl: int = 900,
        request_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> GrantRequest:
        now = datetime.now(UTC).replace(microsecond=0)
        return GrantRequest(
            id=request_id or uuid.uuid4().hex,
            action=action,
            pipeline=pipeline,
            requested_by="U0TEST",
            reason="backend test",
            ttl_seconds=ttl,
            issued_at=now,
            expires_at=expires_at or now + timedelta(seconds=ttl),
            context={"run_id": "42"},
        )

    return make


# -- PostgreSQL -------------------------------------------------------------------------


@dataclass
class PgServer:
    kind: str  # "shared" (127.0.0.1:5432, trust auth) or "scram" (our own cluster)
    host: str
    port: int
    admin_user: str
    admin_password: str | None
    dbname: str
    deployer: str  # role with SELECT on app_items (and nothing on secret_items)
    password_auth: bool  # True when the server really checks passwords on TCP

    def admin_dsn(self, dbname: str | None = None) -> str:
        pw = f":{self.admin_password}" if self.admin_password else ""
        return f"postgresql://{self.admin_user}{pw}@{self.host}:{self.port}/{dbname or self.dbname}"

    def admin(self, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn(dbname), autocommit=True, connect_timeout=5)


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _as_pg_user() -> list[str] | None:
    """Command prefix to run initdb/pg_ctl (which refuse to run as root), or None if impossible."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else None


def _setup_database(conn: psycopg.Connection, deployer: str) -> None:
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(deployer)))
    conn.execute("CREATE TABLE app_items (id int PRIMARY KEY, name text)")
    conn.execute("INSERT INTO app_items VALUES (1, 'alpha'), (2, 'beta')")
    conn.execute("CREATE TABLE secret_items (id int PRIMARY KEY, secret text)")
    conn.execute("INSERT INTO secret_items VALUES (1, 'do not read')")
    conn.execute(sql.SQL("GRANT SELECT ON app_items TO {}").format(sql.Identifier(deployer)))


@contextlib.contextmanager
def _shared_pg() -> Iterator[PgServer]:
    try:
        probe = psycopg.connect(**SHARED_PG, dbname="postgres", autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({type(e).__name__})")
    tag = secrets.token_hex(4)
    dbname, deployer = f"jit_test_{tag}", f"jit_test_deployer_{tag}"
    server = PgServer("shared", "127.0.0.1", 5432, "postgres", None, dbname, deployer, False)
    with probe:
        probe.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            with server.admin() as conn:
                _setup_database(conn, deployer)
            yield server
        finally:
            probe.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            )
            probe.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            probe.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(deployer)))


@contextlib.contextmanager
def _own_pg(preload: str | None = None) -> Iterator[PgServer]:
    """A cluster of our own (scram-sha-256 on TCP); `preload`: its shared_preload_libraries, each
    created as an extension in the test database."""
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no initdb/pg_ctl (PATH, /usr/lib/postgresql/*/bin): cannot start a password-checking cluster")
    prefix = _as_pg_user()
    if prefix is None:
        pytest.skip("running as root without a 'postgres' user/runuser: initdb refuses to run")
    tmp = tempfile.mkdtemp(prefix="jit-pg-")
    os.chmod(tmp, 0o755)
    if prefix:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    admin_password = secrets.token_urlsafe(16)
    pwfile = os.path.join(tmp, "pwfile")
    with open(pwfile, "w") as f:
        f.write(admin_password + "\n")
    if prefix:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    data, log = os.path.join(tmp, "data"), os.path.join(tmp, "server.log")
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    started = False
    try:
        run(
            initdb,
            "-D",
            data,
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
        )
        run(
            pg_ctl,
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
            + (f" -c shared_preload_libraries={preload}" if preload else ""),
        )
        started = True
        server = PgServer("scram", "127.0.0.1", port, "postgres", admin_password, "jit_test", "deployer", True)
        with server.admin("postgres") as conn:
            conn.execute("CREATE DATABASE jit_test")
        with server.admin() as conn:
            _setup_database(conn, "deployer")
            for library in (preload or "").split(","):
                if library:
                    conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(library)))
        yield server
    except subprocess.CalledProcessError as e:
        pytest.skip(f"could not start a throwaway cluster: {e.stderr.decode(errors='replace')[-300:]}")
    finally:
        if started:
            subprocess.run(
                [*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session", params=["scram", "shared"])
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """Each PostgreSQL test runs twice: on our own scram-sha-256 cluster (passwords really
    checked) and in a throwaway database on the shared trust-auth server."""
    with _own_pg() if request.param == "scram" else _shared_pg() as server:
        yield server


@dataclass
class PgHarness:
    server: PgServer
    roles: set[str] = field(default_factory=set)
    env_name: str = "JIT_TEST_PG_DSN"

    def backend(self, environ: dict[str, str] | None = None, **config: Any):
        from workers.backends.postgres import PostgresBackend

        config.setdefault("dsn_env", self.env_name)
        config.setdefault("grant_roles", [self.server.deployer])
        env = {self.env_name: self.server.admin_dsn()} if environ is None else environ
        backend = PostgresBackend(PostgresBackend.Config(**config), BackendEnv(environ=env))
        return _TrackingPg(backend, self)

    def admin(self) -> psycopg.Connection:
        return self.server.admin()

    def role_exists(self, name: str) -> bool:
        with self.admin() as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None

    def cleanup(self) -> None:
        with self.admin() as conn:
            for name in self.roles:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
                    continue
                ident = sql.Identifier(name)
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (name,),
                )
                time.sleep(0.1)
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


class _TrackingPg:
    """The backend, plus: every role name it may create is remembered for teardown."""

    def __init__(self, backend: Any, harness: PgHarness) -> None:
        self._backend, self._harness = backend, harness

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def username(self, request: GrantRequest) -> str:
        name = self._backend.username(request)
        self._harness.roles.add(name)
        return name

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        self.username(request)
        return self._backend.grant(request)

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        self.username(request)
        return self._backend.revoke(request, credential)


@pytest.fixture
def pg(pg_server: PgServer) -> Iterator[PgHarness]:
    harness = PgHarness(pg_server)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture(scope="session")
def pg_stats_server() -> Iterator[PgServer]:
    """A throwaway cluster started with `shared_preload_libraries = 'pg_stat_statements'` and the
    extension created in its test database."""
    with _own_pg(preload="pg_stat_statements") as server:
        yield server


@pytest.fixture
def pg_stats(pg_stats_server: PgServer) -> Iterator[PgHarness]:
    harness = PgHarness(pg_stats_server)
    try:
        yield harness
    finally:
        harness.cleanup()


# -- Redis ------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    admin_password: str

    def admin_url(self, db: int = 0) -> str:
        return f"redis://:{self.admin_password}@127.0.0.1:{self.port}/{db}"

    def admin(self, db: int = 0):
        import redis

        return redis.Redis.from_url(self.admin_url(db), decode_responses=True, socket_timeout=5)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (never the machine's shared one) with a password on `default`."""
    from support import redis_server_binary

    binary = redis_server_binary()
    if not binary:
        pytest.skip("redis-server not installed")
    tmp = tempfile.mkdtemp(prefix="jit-redis-")
    port, password = free_port(), secrets.token_urlsafe(16)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            tmp,
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            password,
            "--databases",
            "4",
            "--logfile",
            os.path.join(tmp, "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not _wait_port(port):
            pytest.skip("throwaway redis-server did not start")
        yield RedisServer(port, password)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def redis_admin(redis_server: RedisServer):
    client = redis_server.admin()
    client.flushall()
    yield client
    for user in client.acl_users():
        if user != "default":
            client.acl_deluser(user)
    client.flushall()
    client.close()
