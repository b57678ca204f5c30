"""One revoke that removed two principals (a template change can leave two) reports one summary."""

from __future__ import annotations

from workers.backends import postgres_usage, redis_acl_usage


def test_two_roles_make_one_summary_with_their_lists_joined_and_totals_summed():
    a = {"role": "jit_a", "sessions": [1], "statements": [], "sessions_total": 1, "statements_total": 0}
    b = {"role": "jit_b", "sessions": [2], "statements": [3], "sessions_total": 1, "statements_total": 4}
    b["statements_source"] = "pg_stat_statements"
    assert postgres_usage.merge([a, b]) == {
        "roles": ["jit_a", "jit_b"],
        "sessions": [1, 2],
        "statements": [3],
        "sessions_total": 2,
        "statements_total": 4,
        "statements_source": "pg_stat_statements",
    }
    assert postgres_usage.merge([a]) is a and postgres_usage.merge([]) is None


def test_two_users_keep_their_errors_and_no_empty_error_list_appears():
    a = {"user": "u1", "connections": [], "denied": [], "connections_total": 0, "denied_total": 0}
    b = {"user": "u2", "connections": [9], "denied": [], "connections_total": 1, "denied_total": 2, "errors": ["x"]}
    merged = redis_acl_usage.merge([a, b])
    assert merged == {
        "users": ["u1", "u2"],
        "connections": [9],
        "denied": [],
        "errors": ["x"],
        "connections_total": 1,
        "denied_total": 2,
    }
    assert "errors" not in redis_acl_usage.merge([a, a])
