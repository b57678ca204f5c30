"""Opsgenie's Who Is On Call API as jit reads it: `GET /v2/schedules/{identifier}/on-calls`.

Auth is `Authorization: GenieKey <key>` (401 otherwise); the query takes `scheduleIdentifierType`
(`id`, the default, or `name`), `flat` and `date`. The answer is
`{"data": {"_parent": {id, name, enabled}, "onCallParticipants": [...]}, "took", "requestId"}`,
or with `flat=true` `{"data": {"_parent": …, "onCallRecipients": ["user@example.com", …]}, …}`
(Opsgenie usernames are email addresses). An unknown schedule is a 404 with a `message`.
Each rotation of a schedule is a layer of shifts (tests/fakes/schedules.py); everyone a rotation
has on call at the instant is on call.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import unquote

from fakes.schedules import JsonServer, Request, Schedule, Shift, parse_time


class OpsgenieFake(JsonServer):
    def __init__(self, api_key: str = "og-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.schedules: dict[str, Schedule] = {}  # by id

    def schedule(self, name: str) -> Schedule:
        for s in self.schedules.values():
            if s.name == name:
                return s
        s = Schedule(str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), name)
        self.schedules[s.id] = s
        return s

    def on_call(self, name: str, email: str, *, rotation: int = 0, start: float | None = None) -> None:
        """`email` takes `rotation` of schedule `name` from `start` (default now); the shift before
        it in that rotation ends then."""
        t = time.time() if start is None else start
        shifts = self.schedule(name).layer(rotation)
        for s in shifts:
            if s.end is None or s.end > t:
                s.end = t
        shifts.append(Shift(email, t))

    def answer(self, req: Request) -> tuple[int, Any]:
        meta = {"took": 0.01, "requestId": str(uuid.uuid4())}
        if req.headers.get("authorization", "") != f"GenieKey {self.api_key}":
            return 401, {"message": "Could not authenticate", **meta}
        parts = req.path.split("/")
        if len(parts) != 5 or parts[:3] != ["", "v2", "schedules"] or parts[4] != "on-calls":
            return 404, {"message": "Not found", **meta}
        ident = unquote(parts[3])
        by = (req.query.get("scheduleIdentifierType") or ["id"])[0]
        found = next((s for s in self.schedules.values() if (s.id if by == "id" else s.name) == ident), None)
        if found is None:
            return 404, {"message": f"Schedule with identifier [{ident}] doesn't exist", **meta}
        t = parse_time((req.query.get("date") or [None])[0])
        emails = sorted({s.user for layer in found.layers for s in layer if s.covers(t)})
        data: dict[str, Any] = {"_parent": {"id": found.id, "name": found.name, "enabled": True}}
        if (req.query.get("flat") or ["false"])[0] == "true":
            data["onCallRecipients"] = emails
        else:
            data["onCallParticipants"] = [
                {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, e)), "name": e, "type": "user"} for e in emails
            ]
        return 200, {"data": data, **meta}


__all__ = ["OpsgenieFake"]
