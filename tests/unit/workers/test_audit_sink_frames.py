"""What each sink puts on the wire: RFC 5424 messages in RFC 6587 octet-counted frames, Splunk HEC
envelopes, JSON lines — each carrying the entry as `jit audit export` writes it."""

from __future__ import annotations

import json

from sink_receivers import parse_rfc5424

from bot.core.audit_sinks import Hec
from bot.store.audit import AuditEntry, export_line
from workers.audit_sinks.frames import header_field, hec_events, json_lines, octet_counted, rfc5424


def entry(seq: int = 7, **body) -> AuditEntry:
    b = {
        "seq": seq,
        "prev": "a" * 64,
        "time": "2026-03-01T10:00:00.123Z",
        "event": "approval.given",
        "request_id": "r1",
        "actor": "U0LEAD1",
        "outcome": "ok",
        "details": {"note": 'quote " backslash \\ bracket ] émoji 🎉'},
        **body,
    }
    return AuditEntry(f"1772359200123-{seq}", b, "b" * 64, "c" * 86, "kid-1")


def test_an_rfc5424_message_has_the_header_structured_data_and_the_exported_entry():
    msg = rfc5424(entry(), facility="authpriv", hostname="jit-1", app_name="jit", procid="42")
    assert msg.startswith(b'<86>1 2026-03-01T10:00:00.123Z jit-1 jit 42 approval.given [jit@32473 seq="7" ')
    parsed = parse_rfc5424(msg)
    assert parsed["sd_params"] == {"seq": "7", "hash": "b" * 64, "stream_id": "1772359200123-7", "request_id": "r1"}
    assert json.loads(parsed["msg"]) == json.loads(export_line(entry()))
    assert msg.isascii()  # MSG needs no BOM: non-ASCII travels as JSON escapes


def test_severity_follows_the_outcome_and_facility_the_setting():
    assert rfc5424(entry(outcome="refused"), facility="local0", hostname="h", app_name="jit").startswith(b"<133>1 ")
    assert rfc5424(entry(), facility="kern", hostname="h", app_name="jit").startswith(b"<6>1 ")


def test_structured_data_values_are_escaped_and_header_fields_are_printable_ascii():
    e = AuditEntry("1-1", {**entry().body, "request_id": 'a"b]c\\d'}, "h", "s", "k")
    parsed = parse_rfc5424(rfc5424(e, facility="user", hostname="my host\u00e9", app_name="jit"))
    assert parsed["sd_params"]["request_id"] == 'a\\"b\\]c\\\\d'
    assert parsed["hostname"] == "myhost"
    assert header_field("", 10) == "-" and header_field("x" * 300, 255) == "x" * 255
    long_event = rfc5424(
        AuditEntry("1-1", {**entry().body, "event": "e" * 40}, "h", "s", "k"),
        facility="user",
        hostname="h",
        app_name="jit",
    )
    assert parse_rfc5424(long_event)["msgid"] == "e" * 32


def test_a_missing_or_odd_time_is_the_nil_value():
    msg = rfc5424(entry(time="yesterday"), facility="user", hostname="h", app_name="jit")
    assert parse_rfc5424(msg)["timestamp"] == "-"


def test_octet_counting_counts_octets_not_characters():
    assert octet_counted(b"abc") == b"3 abc"
    assert octet_counted("é".encode()) == b"2 " + "é".encode()


def test_hec_envelopes_are_back_to_back_json_with_epoch_time_and_the_entry_as_event():
    body = hec_events([entry(1), entry(2)], Hec(token="t", index="audit"), "worker-1").decode()
    decoder, pos, envelopes = json.JSONDecoder(), 0, []
    while pos < len(body):
        env, pos = decoder.raw_decode(body, pos)
        envelopes.append(env)
        pos += body[pos:].startswith("\n")
    assert [e["event"]["seq"] for e in envelopes] == [1, 2]
    assert envelopes[0]["time"] == 1772359200.123 and envelopes[0]["index"] == "audit"
    assert envelopes[0]["host"] == "worker-1" and envelopes[0]["sourcetype"] == "_json"
    assert "index" not in json.loads(hec_events([entry()], Hec(token="t"), "h"))


def test_json_lines_are_the_export_format():
    assert json_lines([entry(1), entry(2)]).decode() == export_line(entry(1)) + "\n" + export_line(entry(2)) + "\n"
