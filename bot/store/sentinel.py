"""`REDIS_URL=redis+sentinel://[[user]:password@]host:26379[,host:26379…]/<master-name>[/db][?sentinel_password=…]`."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel


class SentinelTarget(NamedTuple):
    hosts: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None  # the master's (and replicas') password
    sentinel_password: str | None  # `?sentinel_password=`: when the Sentinels require AUTH too


def parse(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        raise ValueError("a Sentinel URL starts with redis+sentinel://")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        user, _, pw = cred.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    hosts = []
    for hp in netloc.split(","):
        host, sep, port = hp.rpartition(":")
        if not sep:
            host, port = hp, ""
        if not host:
            raise ValueError(f"redis+sentinel URL: empty Sentinel host in {netloc!r}")
        try:
            hosts.append((host, int(port or 26379)))
        except ValueError:
            raise ValueError(f"redis+sentinel URL: bad port in {hp!r}") from None
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs a master name: redis+sentinel://host:26379/mymaster/0")
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError:
        raise ValueError(f"redis+sentinel URL: database must be a number, not {path[1]!r}") from None
    query = parse_qs(parts.query)
    sentinel_password = query.get("sentinel_password", [None])[0]
    return SentinelTarget(hosts, unquote(path[0]), db, username, password, sentinel_password)


def sentinel_master(url: str, **kw) -> Redis:
    """A client that asks the Sentinels where the master is, and asks again after a failover."""
    t = parse(url)
    sentinel_kwargs = {"password": t.sentinel_password} if t.sentinel_password else None
    sentinel = Sentinel(t.hosts, socket_timeout=kw.get("socket_timeout") or 5, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(t.master, db=t.db, username=t.username, password=t.password, **kw)
