"""The audit trail is evidence: someone who can write to Redis but does not hold JIT_SECRET_KEY
cannot produce a trail that `jit audit verify` accepts, and posted checkpoints are checked for
real (older ones against an export), with keys from the secret, a file or the published URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from audit_support import append_forged, b64url, bodies, cli, rechain, some_history
from freezegun import freeze_time
from support import ROOT, SECRET_KEY

from bot.store import keys

NEW_KEY = "rotated-secret-key-9876543210-zyxwvutsrqponm"


def verify_fails_at(rt, capsys, seq: int, *argv: str) -> str:
    """Both the API and the CLI reject the trail, naming entry `seq` first."""
    _, broken = rt.audit.verify()
    assert broken is not None and broken.seq == seq, broken
    code, out = cli(capsys, "audit", "verify", *argv)
    assert code == 1 and f"BROKEN at entry {seq} " in out, out
    return out


# ------------------------------------------------------------------------- rewriting Redis


def test_a_trail_rewritten_from_scratch_without_the_key_does_not_verify(rt, capsys):
    some_history(rt.audit, 6)

    def drop_third(rows):  # remove the incriminating entry #3, renumber the rest
        return rows[:2] + rows[3:]

    # every seq, prev and hash recomputed with SHA-256, head and anchor made to match, each row
    # keeping the signature fields that sat at its position
    rechain(rt.redis, drop_third, from_genesis=True)
    out = verify_fails_at(rt, capsys, 3)
    assert "signature" in out


def test_an_edit_of_the_first_entry_with_every_hash_recomputed_is_named(rt, capsys):
    some_history(rt.audit, 4)

    def new_actor(rows):
        rows[0]["actor"] = "U0MALLORY"
        return rows

    rechain(rt.redis, new_actor, from_genesis=True)
    verify_fails_at(rt, capsys, 1)


def test_a_rewrite_signed_with_another_ed25519_key_does_not_verify(rt, capsys):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bot.store.audit import entry_message

    some_history(rt.audit, 4)
    mallory = Ed25519PrivateKey.generate()

    def sign(h: str) -> str:
        return b64url(mallory.sign(entry_message(h)))

    # the rows keep the real `kid`: only the signature bytes are the attacker's
    rechain(rt.redis, lambda rows: [{**b, "actor": "U0MALLORY"} for b in rows], sign=sign)
    out = verify_fails_at(rt, capsys, 1)
    assert "signature" in out


def test_one_forged_entry_appended_after_the_head_is_named(rt, capsys):
    some_history(rt.audit, 4)
    seq = append_forged(rt.redis)
    assert seq == 5 and bodies(rt.redis)[-1]["event"] == "approval.given"
    verify_fails_at(rt, capsys, 5)


def test_a_trim_point_made_up_in_redis_does_not_verify(rt, capsys):
    """Cutting off the oldest entries and writing an anchor for the cut (the hash and even the
    signature of the last removed entry) is not a trim jit made."""
    some_history(rt.audit, 5)
    rows = rt.redis.xrange(keys.audit_stream())
    sid3, third = rows[2]
    rt.redis.hset(
        keys.audit_anchor(),
        mapping={
            "seq": 3,
            "hash": third["hash"],
            "id": sid3,
            **{k: v for k, v in third.items() if k not in ("data", "hash")},
        },
    )
    rt.redis.xtrim(keys.audit_stream(), minid=rows[3][0], approximate=False)
    out = verify_fails_at(rt, capsys, 3)
    assert "anchor" in out


def test_retention_never_turns_a_forged_entry_into_a_signed_trim_point(rt, capsys):
    from workers.upkeep import AuditUpkeep

    with freeze_time("2020-01-01T00:00:00Z"):
        some_history(rt.audit, 3)
        append_forged(rt.redis)  # #4, as old as the rest: retention would cut it away
    rt.audit.append("test.recent", actor="jit")
    assert AuditUpkeep(rt).trim() == 0 and rt.audit.anchor() == {}
    verify_fails_at(rt, capsys, 4)


# ------------------------------------------------------------------------- checkpoints, export, trim


def head_of(rt) -> tuple[int, str]:
    head = rt.audit.head()
    return int(head["seq"]), head["hash"]


def test_a_checkpoint_older_than_the_trim_fails_unless_its_export_is_given(rt, capsys, tmp_path):
    from workers.upkeep import AuditUpkeep

    with freeze_time("2020-01-01T00:00:00Z"):
        some_history(rt.audit, 3)
        old_seq, old_hash = head_of(rt)  # posted to Slack back then
        some_history(rt.audit, 2, prefix="more")
    export = tmp_path / "2020.jsonl"
    assert cli(capsys, "audit", "export", "--output", str(export)) == (0, "")
    rt.audit.append("test.recent", actor="U0LEAD1")
    assert AuditUpkeep(rt).trim() == 5

    code, out = cli(capsys, "audit", "verify", "--checkpoint", f"{old_seq}:{old_hash}")
    assert code == 1 and f"checkpoint #{old_seq}" in out and "--trimmed" in out, out

    code, out = cli(capsys, "audit", "verify", "--checkpoint", f"{old_seq}:{old_hash}", "--trimmed", str(export))
    assert code == 0, out
    assert "1 checkpoint" in out

    # the export does not vouch for a head the trail never had
    code, out = cli(capsys, "audit", "verify", "--checkpoint", f"{old_seq}:{'0' * 64}", "--trimmed", str(export))
    assert code == 1 and f"checkpoint #{old_seq}" in out


def test_export_then_trim_then_verify_joins_the_export_to_what_redis_still_holds(rt, capsys, tmp_path):
    from workers.upkeep import AuditUpkeep

    with freeze_time("2020-01-01T00:00:00Z"):
        some_history(rt.audit, 6)
    export = tmp_path / "old.jsonl"
    cli(capsys, "audit", "export", "--output", str(export))
    lines = export.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["hash"] and r["sig"] and r["kid"] for r in rows)
    some_history(rt.audit, 2, prefix="new")
    assert AuditUpkeep(rt).trim() == 6
    assert rt.audit.anchor()["seq"] == "6"

    code, out = cli(capsys, "audit", "verify", "--trimmed", str(export))
    assert code == 0, out
    code, out = cli(
        capsys,
        "audit",
        "verify",
        "--checkpoint",
        f"2:{rows[1]['hash']}",
        "--checkpoint",
        f"6:{rows[5]['hash']}",
        "--trimmed",
        str(export),
    )
    assert code == 0, out

    # a second export, taken now, overlaps nothing trimmed; both files together still join
    later = tmp_path / "now.jsonl"
    cli(capsys, "audit", "export", "--output", str(later))
    assert cli(capsys, "audit", "verify", "--trimmed", str(export), "--trimmed", str(later))[0] == 0

    def rewritten(change) -> str:
        path = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.jsonl"
        path.write_text("\n".join(change([json.loads(line) for line in lines])) + "\n")
        return str(path)

    def edit_second(rs):
        rs[1]["actor"] = "U0MALLORY"
        return [json.dumps(r) for r in rs]

    code, out = cli(
        capsys,
        "audit",
        "verify",
        "--checkpoint",
        f"2:{rows[1]['hash']}",
        "--trimmed",
        rewritten(edit_second),
    )
    assert code == 1 and "entry 2 " in out, out

    def drop_fourth(rs):  # a hole between the checkpoint and what Redis holds
        return [json.dumps(r) for r in rs[:3] + rs[4:]]

    code, out = cli(
        capsys,
        "audit",
        "verify",
        "--checkpoint",
        f"2:{rows[1]['hash']}",
        "--trimmed",
        rewritten(drop_fourth),
    )
    assert code == 1 and "entry 5 " in out, out

    def stop_early(rs):  # ends before the trim point: does not join
        return [json.dumps(r) for r in rs[:4]]

    code, out = cli(
        capsys,
        "audit",
        "verify",
        "--checkpoint",
        f"2:{rows[1]['hash']}",
        "--trimmed",
        rewritten(stop_early),
    )
    assert code == 1 and "#6" in out, out

    def junk(rs):
        return [json.dumps(r) for r in rs] + ["not json"]

    code, out = cli(capsys, "audit", "verify", "--trimmed", rewritten(junk))
    assert code == 1 and "line 7" in out, out


def test_an_export_that_disagrees_with_redis_where_they_overlap_fails(rt, capsys, tmp_path):
    """A fork: Redis restored from an older backup, then jit chained new (validly signed)
    entries where others had been. Each copy verifies alone; together they must not."""
    some_history(rt.audit, 4)
    export = tmp_path / "before-restore.jsonl"
    cli(capsys, "audit", "export", "--output", str(export))
    rows = rt.redis.xrange(keys.audit_stream())
    sid2, second = rows[1]
    rt.redis.delete(keys.audit_stream())  # the backup ended at #2
    for sid, fields in rows[:2]:
        rt.redis.xadd(keys.audit_stream(), fields, id=sid)
    rt.redis.hset(
        keys.audit_head(),
        mapping={"seq": 2, "hash": second["hash"], "id": sid2, "ms": sid2.split("-")[0]},
    )
    some_history(rt.audit, 2, prefix="after")
    assert cli(capsys, "audit", "verify")[0] == 0
    code, out = cli(capsys, "audit", "verify", "--trimmed", str(export))
    assert code == 1 and "entry 3 " in out and "export" in out, out


# ------------------------------------------------------------------------- keys


def test_a_rotated_key_still_verifies_what_the_previous_key_signed(rt, capsys, monkeypatch):
    from bot.settings import load_settings
    from bot.wiring import build

    some_history(rt.audit, 3)
    old_kid = rt.redis.xrange(keys.audit_stream())[0][1]["kid"]
    monkeypatch.setenv("JIT_SECRET_KEY", NEW_KEY)
    monkeypatch.setenv("JIT_PREVIOUS_SECRET_KEYS", SECRET_KEY)
    rotated = build(load_settings())
    some_history(rotated.audit, 2, prefix="rot")
    kids = [f["kid"] for _, f in rt.redis.xrange(keys.audit_stream())]
    assert kids[:3] == [old_kid] * 3 and kids[3:] == [kids[3]] * 2 and kids[3] != old_kid
    assert rotated.audit.verify() == (5, None)
    assert cli(capsys, "audit", "verify")[0] == 0

    # without the previous key, what it signed cannot be told from a forgery
    monkeypatch.delenv("JIT_PREVIOUS_SECRET_KEYS")
    code, out = cli(capsys, "audit", "verify")
    assert code == 1 and "BROKEN at entry 1 " in out and "unknown key" in out


def test_the_audit_public_keys_are_published_with_the_previous_ones(rt, http, monkeypatch):
    monkeypatch.setenv("JIT_PREVIOUS_SECRET_KEYS", NEW_KEY)
    rt.settings = type(rt.settings)()  # reread the environment
    rt.__dict__.pop("audit", None)
    resp = http.get("/.well-known/jit-audit-keys.json")
    assert resp.status_code == 200 and resp.headers["Cache-Control"].startswith("public")
    jwks = resp.get_json()
    assert len(jwks["keys"]) == 2
    for k in jwks["keys"]:
        assert k["kty"] == "OKP" and k["crv"] == "Ed25519" and k["kid"] and len(k["x"]) == 43
        assert "d" not in k
    token_kids = {k["kid"] for k in http.get("/.well-known/jwks.json").get_json()["keys"]}
    assert not token_kids & {k["kid"] for k in jwks["keys"]}  # a distinct key, not the token key
    rt.audit.append("test.event", actor="jit")
    assert rt.redis.xrange(keys.audit_stream())[-1][1]["kid"] == jwks["keys"][0]["kid"]


def run_jit(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    """`jit …` in a fresh process whose environment holds exactly `env` (no Slack settings)."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *argv],
        env={**base, **env},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )


class _Serve(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_verify_needs_only_redis_and_keys_from_the_secret_a_file_or_a_url(rt, http, redis_url, tmp_path):
    some_history(rt.audit, 3)
    jwks = http.get("/.well-known/jit-audit-keys.json").get_data()
    keyfile = tmp_path / "keys.json"
    keyfile.write_bytes(jwks)

    # no SLACK_* anywhere: the secret alone
    done = run_jit({"REDIS_URL": redis_url, "JIT_SECRET_KEY": SECRET_KEY}, "audit", "verify")
    assert done.returncode == 0 and "ok: 3 entries" in done.stdout, done.stderr
    # or the published keys, from a file
    done = run_jit({"REDIS_URL": redis_url}, "audit", "verify", "--keys", str(keyfile))
    assert done.returncode == 0, done.stderr
    # or from the URL they are published at
    _Serve.body = jwks
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jit-audit-keys.json"
        done = run_jit({"REDIS_URL": redis_url}, "audit", "verify", "--keys", url)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
        server.server_close()
    # no keys at all: a usage error, not a pass
    done = run_jit({"REDIS_URL": redis_url}, "audit", "verify")
    assert done.returncode == 2 and "JIT_SECRET_KEY" in done.stderr and "--keys" in done.stderr
    # someone else's keys: every entry is unverifiable
    other = run_jit({"REDIS_URL": redis_url, "JIT_SECRET_KEY": NEW_KEY}, "audit", "verify")
    assert other.returncode == 1 and "BROKEN at entry 1 " in other.stdout


def test_a_checkpoint_with_a_signature_jit_did_not_make_fails(rt, capsys):
    some_history(rt.audit, 3)
    row = rt.redis.xrange(keys.audit_stream())[1][1]
    assert cli(capsys, "audit", "verify", "--checkpoint", f"2:{row['hash']}:{row['sig']}")[0] == 0
    other = rt.redis.xrange(keys.audit_stream())[0][1]["sig"]
    code, out = cli(capsys, "audit", "verify", "--checkpoint", f"2:{row['hash']}:{other}")
    assert code == 1 and "checkpoint #2" in out and "signature" in out
    with pytest.raises(SystemExit):
        cli(capsys, "audit", "verify", "--checkpoint", "2:abc")
