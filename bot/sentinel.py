"""`REDIS_URL=redis+sentinel://[:password@]host:26379[,host:26379…]/<master-name>[/db]`."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel


def parse(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    parts = urlsplit(url)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        password = unquote(cred.split(":", 1)[-1]) or None
    hosts = []
    for hp in netloc.split(","):
        host, _, port = hp.rpartition(":") if ":" in hp else (hp, "", "26379")
        hosts.append((host or hp, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs a master name: redis+sentinel://host:26379/mymaster/0")
    db = int(path[1]) if len(path) > 1 else 0
    return hosts, path[0], db, password


def sentinel_master(url: str, **kw) -> Redis:
    hosts, master, db, password = parse(url)
    sentinel = Sentinel(hosts, socket_timeout=kw.get("socket_timeout", 5))
    return sentinel.master_for(master, db=db, password=password, **kw)
