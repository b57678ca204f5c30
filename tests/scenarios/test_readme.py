"""Every command and snippet in the README runs as written.

The README is a newcomer's path: run it, test it, the pipeline's side, contributing. Each fenced
`sh` block is taken from the README itself and run here (or, for the two that set up a machine,
checked to be exactly what `.ci/run` and `.ci/base-install-check` run): a README that drifts from
the product fails this test, not a newcomer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dev_support import Dev, clean_env, click, request_waiting
from procs import wait_until
from support import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
#: the address the README's snippets use: the port `jit dev` listens on by default
README_URL = "http://127.0.0.1:3000"


def sh_blocks(section: str) -> list[str]:
    """The fenced `sh` blocks under the README's `## section` heading, in order."""
    start = README.index(f"\n## {section}")
    end = README.find("\n## ", start + 4)
    text = README[start : end if end != -1 else len(README)]
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_run_command_is_what_ci_starts_from_a_base_install():
    (block,) = sh_blocks("Try it — no Slack workspace needed")
    assert block.strip() == "pip install -e . && jit dev --example-policy"
    script = (ROOT / ".ci" / "base-install-check").read_text()
    assert 'pip install -q -e "$root"' in script and '/bin/jit" dev --example-policy' in script
    assert "bash .ci/base-install-check" in (ROOT / ".ci" / "run").read_text()


def test_the_test_command_is_what_ci_runs():
    (block,) = sh_blocks("Test it")
    assert block.strip() == "pip install -e '.[test]' && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]'" in ci and "exec python -m pytest" in ci


@pytest.fixture
def dev(tmp_path):
    """`jit dev --example-policy` in a folder of its own, with its local Slack sandbox."""
    d = Dev(tmp_path, "--example-policy")
    try:
        d.wait_ready()
        yield d
    finally:
        d.kill()


def approve_in_the_sandbox(dev: Dev, done: threading.Event) -> None:
    """What a reader does while the snippet waits: alice and bob click Approve on its request."""
    sandbox = dev.sandbox_url()
    rid = wait_until(lambda: request_waiting(sandbox, exclude=""), timeout=60, message="the request in the sandbox")
    for approver in ("U0ALICE", "U0BOB"):
        click(sandbox, approver, rid, "Approve")
    done.set()


def run_while_approving(dev: Dev, script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = threading.Event()
    errors: list[BaseException] = []

    def approve() -> None:
        try:
            approve_in_the_sandbox(dev, done)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    approver = threading.Thread(target=approve, daemon=True)
    approver.start()
    run = bash(script, dev.folder, env)
    approver.join(60)
    assert not errors, errors
    assert done.is_set(), "nobody approved in the sandbox"
    return run


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README's snippet uses jq (.ci/run installs it)")
def test_the_pipelines_three_calls_run_as_written(dev):
    (calls, client) = sh_blocks("The pipeline's side")
    assert README_URL in calls  # the snippet names jit dev's default address; here it listens elsewhere
    env = clean_env(PATH=os.environ["PATH"])

    run = run_while_approving(dev, calls.replace(README_URL, dev.url), env)
    assert run.returncode == 0, run.stdout + run.stderr
    credential_json, status = _last_two_values(run.stdout)
    assert json.loads(credential_json)["token"], run.stdout  # the token backend's JWT
    assert json.loads(status) == "revoked", run.stdout  # given back early
    assert "access " not in run.stderr, run.stderr


def _last_two_values(stdout: str) -> tuple[str, str]:
    """The snippet prints the credential (pretty JSON over several lines), then the status."""
    text = stdout.strip()
    last_line = text.rsplit("\n", 1)[1]
    return text[: -len(last_line)].strip(), last_line


def test_the_client_line_runs_as_written(dev):
    (calls, client) = sh_blocks("The pipeline's side")
    line = client.strip()
    assert line.startswith('eval "$(jit request read-secret')
    bin_dir = str(Path(sys.executable).parent)  # `jit` as installed with the project
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", JIT_URL=dev.url, JIT_TOKEN=dev.pipeline_token())

    run = run_while_approving(dev, f'set -e\n{line}\necho "id=$JIT_REQUEST_ID"', env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^id=[0-9a-f]{16}$", run.stdout, flags=re.M), run.stdout + run.stderr


def test_the_contributing_commands_run_as_written():
    (block,) = sh_blocks("Contributing")
    lines = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert lines[0] == "pip install -e '.[test]'"  # what this suite runs under
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for line in lines[1:]:
        if line == "python -m bench --quick":  # minutes: test_bench_smoke.py runs exactly this
            smoke = (ROOT / "tests" / "scenarios" / "test_bench_smoke.py").read_text()
            assert '"-m", "bench", "--quick"' in smoke
            continue
        run = bash(line.replace("python ", f"{sys.executable} ", 1), ROOT, env, timeout=600)
        assert run.returncode == 0, f"{line}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
