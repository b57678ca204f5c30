"""One request, one document for the auditor: `jit audit evidence ID` writes the request, who
approved it and when, the credential's issue and revoke (confirmed by the backend), every audit
entry with its chain position and a signed chain head — and `jit audit verify --evidence FILE`
checks it offline with only the server's published keys. Any changed byte fails."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from audit_support import cli
from support import WEB_TOKEN

from bot.commands import evidence as bundle
from bot.commands.evidence_md import render as render_markdown
from bot.core.crypto import AuditSigner
from bot.store.audit import AuditKeys


@pytest.fixture
def finished(jit, rt):
    """deploy-prod asked by web-ci, approved by two leads, issued, fetched, given back, revoked."""
    rid = jit.ask("deploy-prod", reason="release 4.2 | <!channel>")["id"]
    jit.approve_and_wait(rid, "U0LEAD1")
    jit.approve_and_wait(rid, "U0LEAD2")
    jit.drain(lambda: rt.store.get(rid).status.value == "active", what="the grant")
    fetched = jit.credential(rid, WEB_TOKEN)
    assert fetched.status_code == 200
    secrets = [jit.request_tokens[(rid, WEB_TOKEN)], json.dumps(fetched.get_json()["credential"])[1:-1]]
    assert jit.release(rid, WEB_TOKEN).status_code in (200, 202)
    jit.drain(lambda: rt.store.get(rid).revoke_done_at is not None, what="the revoke")
    rt.audit.append("test.unrelated", request_id="someoneelse", actor="U0LEAD1")  # the head moves on
    return SimpleNamespace(id=rid, secrets=secrets)


@pytest.fixture
def published_keys(http, tmp_path):
    """The key set the server publishes, saved where an auditor keeps it."""
    resp = http.get("/.well-known/jit-audit-keys.json")
    assert resp.status_code == 200
    path = tmp_path / "jit-audit-keys.json"
    path.write_text(resp.get_data(as_text=True))
    return path


def offline(monkeypatch) -> None:
    """The auditor's laptop: no Redis reachable, no secret key."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("JIT_SECRET_KEY", raising=False)
    monkeypatch.delenv("JIT_PREVIOUS_SECRET_KEYS", raising=False)


def test_evidence_round_trip_holds_the_whole_story_and_verifies_offline(
    finished, rt, capsys, tmp_path, published_keys, monkeypatch
):
    rid = finished.id
    path = tmp_path / "evidence.json"
    code, _ = cli(capsys, "audit", "evidence", rid, "--output", str(path))
    assert code == 0
    doc = json.loads(path.read_text())

    assert doc["request"]["action"] == "deploy-prod" and doc["request"]["pipeline"] == "web-ci"
    assert doc["request"]["reason"] == "release 4.2 | <!channel>" and doc["request"]["ttl_seconds"] == 900
    assert doc["pipeline"] == {"name": "web-ci", "verified": False, "verified_claims": {}, "stated_context": {}}
    assert doc["policy"]["sha256"] == rt.policy.sha256
    assert doc["policy"]["rule"]["approvals_required"] == 2 and doc["policy"]["rule"]["grant_type"] == "exec"
    assert "grant_command" not in json.dumps(doc["policy"])  # the rule, never the grant's settings
    assert [a["by"] for a in doc["approvals"]] == ["U0LEAD1", "U0LEAD2"]
    assert all(a["at"] and a["seq"] for a in doc["approvals"])
    assert doc["decision"]["outcome"] == "approved" and doc["decision"]["how"] == "approvers"
    assert doc["decision"]["by"] == "U0LEAD2"
    cred = doc["credential"]
    assert cred["backend"] == "exec" and cred["issued_at"] and cred["expires_at"]
    assert cred["fetched"][0]["by"] == "pipeline:web-ci"
    assert cred["revoked_at"] and cred["revoke_confirmed_by_backend"] is True
    assert cred["revoked_by"] == "pipeline:web-ci" and doc["outcome"] == "revoked"
    assert doc["session"] is None and doc["record"]["status"] == "revoked"
    events = [e["event"] for e in doc["entries"]]
    assert events[0] == "request.created" and events[-1] == "grant.revoked" and "test.unrelated" not in events
    assert all(e["request_id"] == rid and e["hash"] and e["sig"] for e in doc["entries"])
    assert doc["chain"]["head"]["seq"] > doc["entries"][-1]["seq"]  # the head covers them
    assert doc["entries_complete"] is True
    for secret in finished.secrets:  # the request token and the credential itself: never in a bundle
        assert secret not in path.read_text()

    offline(monkeypatch)
    code, out = cli(capsys, "audit", "verify", "--evidence", str(path), "--keys", str(published_keys))
    assert code == 0 and f"evidence ok: request {rid} (revoked)" in out, out
    assert f"--checkpoint {doc['chain']['head']['seq']}:{doc['chain']['head']['hash']}" in out


def changes(data: bytes):
    """One-byte changes across the whole file (a flipped bit, a byte dropped, a byte added), and at
    every byte of the bundle's signature and chain head."""
    step = max(1, len(data) // 400)
    head = data.index(b'"head"')
    every = set(range(0, len(data), step)) | set(range(len(data) - 300, len(data))) | set(range(head, head + 400))
    for i in sorted(every):
        yield data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
    for i in range(0, len(data), step * 4):
        yield data[:i] + data[i + 1 :]
        yield data[:i] + b" " + data[i:]
    yield data + b"\n"


def valid(data: bytes, keys: AuditKeys) -> bool:
    """What `jit audit verify --evidence` decides."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    rendered = bundle.dumps if text.lstrip().startswith("{") else render_markdown
    try:
        bundle.check(text, keys, rendered)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("fmt", ["json", "md"])
def test_a_one_byte_change_anywhere_in_the_bundle_fails_verification(
    finished, rt, capsys, tmp_path, published_keys, monkeypatch, fmt
):
    path = tmp_path / f"evidence.{fmt}"
    assert cli(capsys, "audit", "evidence", finished.id, "--format", fmt, "--output", str(path))[0] == 0
    data = path.read_bytes()
    keys = AuditKeys(json.loads(published_keys.read_text()))
    assert valid(data, keys)
    survivors = [i for i, changed in enumerate(changes(data)) if valid(changed, keys)]
    assert survivors == [], f"{len(survivors)} one-byte changes went unnoticed"

    # and through the command: an approver's name changed in the readable part only
    offline(monkeypatch)
    edited = data.replace(b"U0LEAD1", b"U0LEAD9", 1)
    assert edited != data
    path.write_bytes(edited)
    code, out = cli(capsys, "audit", "verify", "--evidence", str(path), "--keys", str(published_keys))
    assert code == 1 and out.startswith("evidence NOT valid: "), out


def test_the_markdown_bundle_reads_like_a_document_and_renders_no_live_mentions(finished, capsys, tmp_path):
    path = tmp_path / "evidence.md"
    assert cli(capsys, "audit", "evidence", finished.id, "--format", "md", "--output", str(path))[0] == 0
    text = path.read_text()
    assert text.startswith(f"# Evidence: request `{finished.id}`")
    for heading in ("## Request", "## Pipeline identity", "## Policy and decision", "### Approvals", "## Credential"):
        assert f"\n{heading}\n" in text
    assert "| U0LEAD1 |" in text and "| Revoke confirmed by the backend | yes |" in text
    readable = text[: text.rindex("```json")]
    assert "<!channel>" not in readable and "release 4.2 \\| &lt;!channel&gt;" in readable


def test_a_bundle_made_with_another_key_does_not_verify_against_the_servers_keys(
    finished, rt, capsys, tmp_path, published_keys, monkeypatch
):
    from bot.store.policy_versions import PolicyStore
    from bot.wiring import parse_policy

    doc = bundle.build(rt.audit, finished.id, PolicyStore(rt.redis, 0, parse_policy).get)
    mallory = AuditSigner("mallory-secret-key-0123456789-abcdefghijkl")
    doc["approvals"][0]["by"] = "U0MALLORY"
    doc["signature"] = bundle.sign(doc, mallory)  # a consistent document, signed by someone else
    path = tmp_path / "forged.json"
    path.write_text(bundle.dumps(doc))
    offline(monkeypatch)
    code, out = cli(capsys, "audit", "verify", "--evidence", str(path), "--keys", str(published_keys))
    assert code == 1 and "signature does not verify" in out, out


def test_evidence_for_an_unknown_request_says_so(rt, capsys):
    from bot.cli import main as jit_cli

    assert jit_cli(["audit", "evidence", "nosuchrequest0001"]) == 1
    assert "no audit entries for request nosuchrequest0001" in capsys.readouterr().err
