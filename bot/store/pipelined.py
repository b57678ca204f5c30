"""Many calls of registered Lua scripts in one round trip.

redis-py's pipeline, when it holds script calls, first asks Redis whether each script is loaded
(`SCRIPT EXISTS`): a second round trip on every batch, on the hot path of an expiry storm (the
revocation batch's lease, record and finish each paid it). Here the calls go as plain `EVALSHA`:
a script Redis does not hold (a restarted or flushed Redis) answers NOSCRIPT without running, so
those calls alone are sent again once the scripts are loaded — each call still runs exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

#: (script, keys, args) of one call.
Call = tuple[Script, Sequence[Any], Sequence[Any]]


def run_scripts(r: Redis, calls: Sequence[Call]) -> list[Any]:
    """The calls' results, in order; the first error a call raised (other than NOSCRIPT) is raised."""
    if not calls:
        return []
    results = _send(r, calls)
    missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            script.sha = r.script_load(script.script)
        for i, res in zip(missing, _send(r, [calls[i] for i in missing]), strict=True):
            results[i] = res
    for res in results:
        if isinstance(res, Exception):
            raise res
    return results


def _send(r: Redis, calls: Sequence[Call]) -> list[Any]:
    with r.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)
