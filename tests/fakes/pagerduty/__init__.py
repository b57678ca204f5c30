"""PagerDuty's REST API v2 as jit reads it: `GET /oncalls`, in its documented format.

Auth is `Authorization: Token token=<token>` (401 otherwise); the query takes `schedule_ids[]`,
`escalation_policy_ids[]`, `user_ids[]`, `include[]=users`, `since`, `until`, `time_zone`,
`limit`, `offset`, and the answer is `{"oncalls": [...], "limit", "offset", "more", "total"}`,
each on-call `{user, schedule, escalation_policy, escalation_level, start, end}` with references
(`{id, type: "user_reference", summary, self, html_url}`), or full user objects (with `email`)
under `include[]=users`. Who is on call comes from escalation policies whose levels target
schedules (layers of shifts: tests/fakes/schedules.py) or users (permanently on call).
"""

from __future__ import annotations

import time
from typing import Any

from fakes.schedules import JsonServer, Request, Schedule, Shift, iso, parse_time

API = "https://api.pagerduty.com"
WEB = "https://jit-test.pagerduty.com"


class PagerDutyFake(JsonServer):
    def __init__(self, token: str = "pd-test-token") -> None:
        super().__init__()
        self.token = token
        self.users: dict[str, dict[str, str]] = {}
        self.schedules: dict[str, Schedule] = {}
        #: escalation policy id → its levels, each a list of targets ("schedule" | "user", id)
        self.policies: dict[str, list[list[tuple[str, str]]]] = {}

    # ---------------------------------------------------------------- what tests set up

    def user(self, user_id: str, email: str, name: str | None = None) -> None:
        self.users[user_id] = {"email": email, "name": name or email.split("@")[0]}

    def schedule(self, schedule_id: str, name: str | None = None) -> Schedule:
        return self.schedules.setdefault(schedule_id, Schedule(schedule_id, name or schedule_id))

    def on_call(self, schedule_id: str, user_id: str, *, layer: int = 0, start: float | None = None) -> None:
        """`user_id` takes the schedule's `layer` from `start` (default now): the shift before it
        in that layer ends then. A shift on a higher layer than the current one is a hand-over."""
        t = time.time() if start is None else start
        shifts = self.schedule(schedule_id).layer(layer)
        for s in shifts:
            if s.end is None or s.end > t:
                s.end = t
        shifts.append(Shift(user_id, t))

    def escalation_policy(self, policy_id: str, levels: list[list[tuple[str, str]]]) -> None:
        self.policies[policy_id] = levels

    # ---------------------------------------------------------------- the API

    def answer(self, req: Request) -> tuple[int, Any]:
        auth = req.headers.get("authorization", "")
        if auth != f"Token token={self.token}":
            return 401, {"error": {"message": "Unauthorized", "code": 2006}}
        if req.path != "/oncalls":
            return 404, {"error": {"message": "Not Found", "code": 2100}}
        q = req.query
        t = parse_time((q.get("since") or [None])[0])
        full_users = "users" in q.get("include[]", [])
        entries = self._oncalls(t, full_users)
        for key, field in (("schedule_ids[]", "schedule"), ("escalation_policy_ids[]", "escalation_policy")):
            if key in q:
                entries = [e for e in entries if e[field] and e[field]["id"] in q[key]]
        if "user_ids[]" in q:
            entries = [e for e in entries if e["user"]["id"] in q["user_ids[]"]]
        limit = int((q.get("limit") or ["25"])[0])
        offset = int((q.get("offset") or ["0"])[0])
        page = entries[offset : offset + limit]
        return 200, {
            "oncalls": page,
            "limit": limit,
            "offset": offset,
            "more": offset + limit < len(entries),
            "total": None,
        }

    def _oncalls(self, t: float, full_users: bool) -> list[dict[str, Any]]:
        out = []
        for policy_id, levels in self.policies.items():
            for level, targets in enumerate(levels, start=1):
                for kind, target in targets:
                    if kind == "schedule":
                        shift = self.schedules[target].shift_at(t) if target in self.schedules else None
                        if shift is None:
                            continue
                        user_id, start, end = shift.user, iso(shift.start), iso(shift.end)
                        schedule = _ref("schedule", target, self.schedules[target].name)
                    else:
                        user_id, start, end, schedule = target, None, None, None  # permanently on call
                    out.append(
                        {
                            "user": self._user(user_id, full_users),
                            "schedule": schedule,
                            "escalation_policy": _ref("escalation_policy", policy_id, f"Policy {policy_id}"),
                            "escalation_level": level,
                            "start": start,
                            "end": end,
                        }
                    )
        return out

    def _user(self, user_id: str, full: bool) -> dict[str, Any]:
        u = self.users.get(user_id, {"email": f"{user_id.lower()}@example.com", "name": user_id})
        ref = _ref("user", user_id, u["name"])
        if not full:
            return ref
        return {**ref, "type": "user", "name": u["name"], "email": u["email"], "time_zone": "Etc/UTC", "role": "user"}


def _ref(kind: str, ident: str, summary: str) -> dict[str, str]:
    plural = {"escalation_policy": "escalation_policies"}.get(kind, f"{kind}s")
    return {
        "id": ident,
        "type": f"{kind}_reference",
        "summary": summary,
        "self": f"{API}/{plural}/{ident}",
        "html_url": f"{WEB}/{plural}/{ident}",
    }


__all__ = ["PagerDutyFake"]
