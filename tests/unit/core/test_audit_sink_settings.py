"""JIT_AUDIT_SINKS: what a sink needs, and a mistake named in one line without its secrets."""

from __future__ import annotations

import json

import pytest

from bot.core.audit_sinks import HttpSink, SyslogSink, parse_sinks

SECRET = "hmac-secret-0123456789abcdef"


def one(**cfg) -> str:
    return json.dumps([cfg])


def error(raw: str) -> str:
    with pytest.raises(ValueError) as e:
        parse_sinks(raw)
    return str(e.value)


def test_each_type_with_its_defaults(tmp_path):
    sinks = parse_sinks(
        json.dumps(
            [
                {"type": "http", "name": "elastic", "url": "https://logstash.example.com:8080", "secret": SECRET},
                {
                    "type": "http",
                    "name": "splunk",
                    "url": "https://splunk:8088/services/collector/event",
                    "hec": {"token": "abc"},
                },
                {"type": "syslog", "name": "rsyslog", "host": "logs.example.com"},
                {"type": "syslog", "name": "rsyslog-tls", "host": "logs.example.com", "tls": True},
                {"type": "file", "name": "local", "path": str(tmp_path / "audit.jsonl")},
            ]
        )
    )
    assert [s.type for s in sinks] == ["http", "http", "syslog", "syslog", "file"]
    assert isinstance(sinks[0], HttpSink) and sinks[0].batch == 500 and sinks[0].alert_after.total_seconds() == 300
    assert isinstance(sinks[2], SyslogSink) and sinks[2].effective_port == 514 and sinks[3].effective_port == 6514
    assert sinks[2].facility == "authpriv" and sinks[2].start == "oldest"
    assert parse_sinks("") == [] and parse_sinks("  ") == []


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (
            {"type": "http", "name": "a", "url": "http://siem.example.com/in", "secret": SECRET},
            "sink #1 (a): url must use https",
        ),
        (
            {"type": "http", "name": "a", "url": "https://siem.example.com/in"},
            "sink #1 (a): an http sink needs a `secret`",
        ),
        ({"type": "http", "name": "a", "url": "https://siem.example.com/in", "secret": "short"}, "at least 16"),
        ({"type": "syslog", "name": "s", "host": "h", "facility": "nope"}, "sink #1 (s): facility: must be one of"),
        ({"type": "syslog", "name": "s", "host": "h", "ca_file": "/etc/hosts"}, "need `tls: true`"),
        ({"type": "syslog", "name": "s", "host": "h", "tls": True, "ca_file": "/no/such.pem"}, "is not a file"),
        ({"type": "file", "name": "f", "path": "relative.jsonl"}, "sink #1 (f): path must be absolute"),
        ({"type": "file", "name": "f", "path": "/no/such/dir/a.jsonl"}, "does not exist"),
        ({"type": "file", "name": "f", "path": "/tmp/a.jsonl", "alert_after": "soon"}, "alert_after"),
        ({"type": "kafka", "name": "k"}, "sink #1 (k): Input tag 'kafka'"),
        ({"type": "file", "name": "bad name", "path": "/tmp/a"}, "name"),
    ],
)
def test_a_mistake_is_one_line_naming_the_sink_and_field(cfg, expected):
    msg = error(one(**cfg))
    assert expected in msg and "\n" not in msg


def test_secrets_never_appear_in_an_error():
    token = "hec-token-that-must-not-leak-1234"
    msg = error(one(type="http", name="splunk", url="http://splunk.example.com/x", hec={"token": token}))
    assert token not in msg
    msg = error(one(type="http", name="x", url="https://e/x", secret=SECRET, headers={"Authorization": 5}))
    assert SECRET not in msg


def test_names_are_unique_and_the_value_is_a_list():
    f = {"type": "file", "path": "/tmp/a.jsonl"}
    assert "local appears more than once" in error(json.dumps([{**f, "name": "local"}, {**f, "name": "local"}]))
    assert "JSON list" in error('{"type": "file"}')
    assert "JSON list" in error("[{oops")
