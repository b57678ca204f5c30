"""bot/core/usage.py: a session summary is bounded and masked before it is kept, and its headline
carries counts and metadata, never query text, key names or output values."""

from __future__ import annotations

from bot.core.usage import MAX_SUMMARY_BYTES, bounded, canonical, digest, headline, secret_values

CREDENTIAL = {"username": "jit_deploy_1", "password": "pa55-w0rd-very-secret", "dsn": "postgresql://x"}


def test_secrets_and_secret_named_keys_never_stay():
    summary = {
        "output": {"note": "logged in with pa55-w0rd-very-secret", "password": "other", "nested": {"token": "t"}},
        "statements": [{"query": "SELECT 'pa55-w0rd-very-secret'", "calls": 1, "rows": 1}],
    }
    kept = bounded(summary, secret_values(CREDENTIAL))
    assert "pa55-w0rd-very-secret" not in canonical(kept)
    assert kept["output"] == {"note": "logged in with ***", "nested": {}}


def test_a_huge_summary_is_cut_to_the_cap():
    summary = {"statements": [{"query": "x" * 5000, "calls": i, "rows": 0} for i in range(5000)]}
    kept = bounded(summary)
    assert len(canonical(kept).encode()) <= MAX_SUMMARY_BYTES
    assert kept["truncated"] is True and kept["statements"]
    assert digest(kept) == digest(bounded(summary))  # the same summary, the same digest


def test_the_headline_has_counts_and_metadata_only():
    summary = {
        "sessions": [{"client_addr": "10.0.0.5", "application_name": "psql", "backend_start": "t", "pid": 1}],
        "sessions_total": 1,
        "statements": [{"query": "SELECT secret FROM t WHERE id = $1", "calls": 7, "rows": 3}],
        "statements_total": 1,
        "statements_source": "pg_stat_statements",
        "denied": [
            {"reason": "key", "object": "customers:alice@example.com", "count": 2},
            {"reason": "command", "object": "flushall", "count": 1},
        ],
        "denied_total": 2,
        "output": {"k": "value from the script"},
        "errors": ["statements: timed out after 2000 ms"],
    }
    head = headline(summary)
    text = canonical(head)
    assert "SELECT" not in text and "alice@example.com" not in text and "value from the script" not in text
    assert head["sessions"] == 1 and head["session_list"] == [
        {"client_addr": "10.0.0.5", "application_name": "psql", "backend_start": "t"}
    ]
    assert (head["statements"], head["calls"], head["rows"]) == (1, 7, 3)
    assert head["denied"] == 2 and head["denied_by_reason"] == {"key": 2, "command": 1}
    assert head["denied_commands"] == ["flushall"] and head["output_keys"] == ["k"]
    assert head["errors"] == ["statements: timed out after 2000 ms"]


def test_where_and_who_stay_readable_while_secrets_are_masked():
    credential = {**CREDENTIAL, "host": "db.internal.example", "url": "redis://u:pw-0123456789@h:6379"}
    summary = {"role": "jit_deploy_1", "sessions": [{"client_addr": "db.internal.example"}]}
    kept = bounded(summary, secret_values(credential))
    assert kept["role"] == "jit_deploy_1" and kept["sessions"][0]["client_addr"] == "db.internal.example"
    assert "redis://u:pw-0123456789@h:6379" in secret_values(credential)
