"""Where the audit trail streams to: the schema of `JIT_AUDIT_SINKS` (a JSON list, one object per sink).

Three types, any number of each:

* `http` — POSTs batches of events as JSON lines (`application/x-ndjson`) signed with HMAC-SHA256
  headers; with `hec` set, Splunk's HTTP Event Collector instead (`Authorization: Splunk <token>`,
  one HEC envelope per event).
* `syslog` — RFC 5424 messages over TCP with octet-counted framing (RFC 6587), or over TLS (RFC 5425).
* `file` — JSON lines appended to a path, for log shippers that tail files.

Sinks are deployment settings, not policy: they hold secrets (HMAC keys, HEC tokens), they are the
same for every process, and a policy reload must not be able to switch the stream off.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.core.clock import parse_duration
from bot.core.net import check_url

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
SinkName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
#: RFC 5424 header fields are printable US-ASCII without spaces.
PrintAscii = Annotated[str, Field(pattern=r"^[!-~]+$")]

#: Syslog facilities by the names rsyslog and syslog-ng use (RFC 5424 table 1).
FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}


class _Sink(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SinkName
    #: Events per delivery at most (a sink catching up sends full batches).
    batch: int = Field(500, ge=1, le=5000)
    #: Seconds one delivery may take (connect, send, answer) before it counts as failed.
    timeout: float = Field(5.0, gt=0, le=60)
    #: Retries back off 1 s, 2 s, 4 s … up to this.
    backoff_max: Duration = timedelta(seconds=30)
    #: Failing this long: an alert in the audit channel (and `audit.sink_down` in the trail).
    alert_after: Duration = timedelta(minutes=5)
    #: Where a sink seen for the first time starts: the oldest entry Redis still holds, or the
    #: entry after the current head.
    start: Literal["oldest", "now"] = "oldest"


class Hec(BaseModel):
    """Splunk HTTP Event Collector: the token and the envelope's metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr
    index: str | None = None
    source: str = "jit"
    sourcetype: str = "_json"
    host: str | None = None


class HttpSink(_Sink):
    type: Literal["http"]
    url: str
    #: HMAC-SHA256 key for the X-Jit-Signature headers (required unless `hec` is set).
    secret: SecretStr | None = None
    hec: Hec | None = None
    #: Extra request headers (e.g. `Authorization` for a Logstash input with basic auth).
    headers: dict[str, SecretStr] = {}
    #: PEM file of the CA(s) that sign the receiver's certificate (default: the system's store).
    ca_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> HttpSink:
        check_url(self.url, "url")
        if self.hec is None and (self.secret is None or len(self.secret.get_secret_value()) < 16):
            raise ValueError("an http sink needs a `secret` of at least 16 characters (or `hec` for Splunk)")
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ValueError(f"ca_file {self.ca_file} is not a file")
        return self


class SyslogSink(_Sink):
    type: Literal["syslog"]
    host: str = Field(min_length=1)
    #: Default 6514 with TLS (RFC 5425), 514 without.
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    #: TLS: CA file for the collector's certificate (default: the system's store), the name its
    #: certificate must carry (default: `host`), and a client certificate if it asks for one.
    ca_file: str | None = None
    server_name: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    facility: str = "authpriv"
    #: HOSTNAME and APP-NAME of each message (HOSTNAME defaults to this machine's name).
    hostname: PrintAscii | None = Field(None, max_length=255)
    app_name: PrintAscii = Field("jit", max_length=48)

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str) -> str:
        if v not in FACILITIES:
            raise ValueError(f"must be one of {', '.join(FACILITIES)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> SyslogSink:
        if not self.tls and (self.ca_file or self.client_cert or self.server_name):
            raise ValueError("ca_file, client_cert and server_name need `tls: true`")
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("client_cert and client_key go together")
        for f in (self.ca_file, self.client_cert, self.client_key):
            if f is not None and not os.path.isfile(f):
                raise ValueError(f"{f} is not a file")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (6514 if self.tls else 514)


class FileSink(_Sink):
    type: Literal["file"]
    #: Absolute path; each batch is appended (and fsynced) after opening it anew, so a shipper's
    #: rotation (rename, then a new file) just works.
    path: str
    fsync: bool = True

    @model_validator(mode="after")
    def _check(self) -> FileSink:
        if not os.path.isabs(self.path):
            raise ValueError("path must be absolute")
        if not os.path.isdir(os.path.dirname(self.path)):
            raise ValueError(f"the directory of {self.path} does not exist")
        return self


SinkConfig = Annotated[HttpSink | SyslogSink | FileSink, Field(discriminator="type")]
_SINKS = TypeAdapter(list[SinkConfig])


def parse_sinks(raw: str) -> list[HttpSink | SyslogSink | FileSink]:
    """The sinks of `JIT_AUDIT_SINKS`. Raises ValueError with one line naming the sink and field
    (never a value: a sink holds secrets)."""
    if not raw.strip():
        return []
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"must be a JSON list of sinks ({e.msg} at character {e.pos})") from None
    if not isinstance(data, list):
        raise ValueError('must be a JSON list of sinks, e.g. [{"type": "file", "name": "local", ...}]')
    try:
        sinks = _SINKS.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first["loc"]]
        where = f"sink #{int(loc[0]) + 1}" if loc and loc[0].isdigit() else "sinks"
        item = data[int(loc[0])] if loc and loc[0].isdigit() and int(loc[0]) < len(data) else None
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            where += f" ({item['name'][:64]})"
        field = ".".join(p for p in loc[2:] if p) if len(loc) > 2 else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where}: {field + ': ' if field else ''}{msg}") from None
    names = [s.name for s in sinks]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"sink names must be unique: {', '.join(dupes)} appears more than once")
    return sinks
