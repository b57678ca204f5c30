"""`jit request|release|bench …` hand the rest of the line to the client or the benchmarks untouched."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

import bench.__main__
from bot import cli

JIT = [sys.executable, "-m", "bot.cli"]


@pytest.mark.parametrize(
    "argv, usage, mentions",
    [
        (["request", "--help"], "usage: jit request", "--reason"),
        (["release", "--help"], "usage: jit release", "--request-token"),
        (["bench", "--help"], "usage: jit bench", "--quick"),
    ],
)
def test_help_of_a_wrapped_command_is_its_own(argv, usage, mentions):
    done = subprocess.run([*JIT, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(usage) and mentions in done.stdout


def test_options_before_the_action_reach_the_client(monkeypatch, capsys):
    monkeypatch.delenv("JIT_URL", raising=False)
    # the client itself parses this line: it gets as far as asking for a server
    assert cli.main(["request", "--reason", "x", "read-secret"]) == 2
    assert "no server: pass --url or set JIT_URL" in capsys.readouterr().err


def test_options_reach_the_benchmarks_as_given(monkeypatch):
    seen = []
    monkeypatch.setattr(bench.__main__, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--quick", "--only", "hook", "--out", "x.json"]) == 0
    assert seen == [["--quick", "--only", "hook", "--out", "x.json"]]


def test_the_other_commands_still_parse_as_before():
    args = cli.build_parser().parse_args(["policy", "check", "p.yaml"])
    assert args.func is cli.cmd_policy_check and args.file == "p.yaml"
    assert "request" in cli.build_parser().format_help()
