"""How audit entries look on each sink's wire: JSON lines, Splunk HEC envelopes, RFC 5424 messages
framed by octet counting (RFC 6587 §3.4.1, which RFC 5425 uses over TLS as well).

Every format carries the entry exactly as `jit audit export` writes it — its body (with `seq`
and `prev`) plus `hash`, `sig` and `kid` — so a receiver can spot gaps and duplicates by `seq`
and check the chain itself: hash = sha256(prev + canonical JSON of the body).
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable
from datetime import datetime

from bot.core.audit_sinks import FACILITIES, Hec
from bot.store.audit import AuditEntry, export_line

#: The SD-ID of jit's structured data: `name@<private enterprise number>` as RFC 5424 §7.2.2 asks;
#: 32473 is the number RFC 5612 reserves for documentation and examples.
SD_ID = "jit@32473"
#: Severity by outcome: informational for what went as asked, notice for everything else.
SEVERITY_OK, SEVERITY_OTHER = 6, 5
_RFC5424_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_NOT_PRINTABLE = re.compile(r"[^!-~]")


def json_lines(entries: Iterable[AuditEntry]) -> bytes:
    """The `http` and `file` body: one exported entry per line."""
    return "".join(export_line(e) + "\n" for e in entries).encode()


def _epoch(value: object) -> float | None:
    try:
        return round(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp(), 3)
    except ValueError:
        return None


def hec_events(entries: Iterable[AuditEntry], hec: Hec, default_host: str) -> bytes:
    """Splunk HEC's /services/collector/event body: one JSON envelope per event, back to back."""
    out = []
    for e in entries:
        envelope: dict[str, object] = {
            "host": hec.host or default_host,
            "source": hec.source,
            "sourcetype": hec.sourcetype,
            "event": json.loads(export_line(e)),
        }
        if (t := _epoch(e.body.get("time"))) is not None:
            envelope["time"] = t
        if hec.index:
            envelope["index"] = hec.index
        out.append(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(out).encode()


def header_field(value: str | None, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, no spaces, at most `limit` octets; `-` if empty."""
    cleaned = _NOT_PRINTABLE.sub("", value or "")[:limit]
    return cleaned or "-"


def _sd_value(value: object) -> str:
    """PARAM-VALUE: `"`, `\\` and `]` escaped with a backslash (RFC 5424 §6.3.3)."""
    return re.sub(r'(["\\\]])', r"\\\1", str(value))


def rfc5424(e: AuditEntry, *, facility: str, hostname: str, app_name: str, procid: str = "-") -> bytes:
    """One SYSLOG-MSG. MSG is the exported entry as JSON in plain ASCII (non-ASCII characters as
    \\u escapes: the same JSON value), so it needs no BOM (MSG-ANY); the structured data repeats
    the chain position for collectors that index SD params."""
    severity = SEVERITY_OK if e.body.get("outcome") == "ok" else SEVERITY_OTHER
    pri = FACILITIES[facility] * 8 + severity
    t = str(e.body.get("time") or "")
    timestamp = t if _RFC5424_TIME.match(t) else "-"
    params = {"seq": e.body.get("seq"), "hash": e.hash, "stream_id": e.stream_id}
    if e.body.get("request_id"):
        params["request_id"] = e.body["request_id"]
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = " ".join(
        (
            f"<{pri}>1",
            timestamp,
            header_field(hostname, 255),
            header_field(app_name, 48),
            header_field(procid, 128),
            header_field(str(e.body.get("event") or ""), 32),
            sd,
        )
    )
    msg = json.dumps(
        {**e.body, "hash": e.hash, "sig": e.sig, "kid": e.kid},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return f"{header} {msg}".encode("ascii")


def octet_counted(message: bytes) -> bytes:
    """SYSLOG-FRAME = MSG-LEN SP SYSLOG-MSG, MSG-LEN the message's length in octets."""
    return str(len(message)).encode() + b" " + message


def this_host() -> str:
    return header_field(socket.gethostname(), 255)
