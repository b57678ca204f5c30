"""`grant:<id>`: issue an approved request's credential (bot/grant/service.py does the work)."""

from __future__ import annotations

from bot.runtime import Runtime


def grant(rt: Runtime, rid: str, token: str) -> None:
    rt.grants.issue(rid, token, rt.backend_for)
