"""`jit … --help` explains every option and argument of every command."""

from __future__ import annotations

import argparse

from bot import cli


def commands(parser: argparse.ArgumentParser, prefix: str = "jit"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{prefix} {name}")
    yield prefix, parser


def test_every_option_and_argument_has_help_text():
    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, parser in commands(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert missing == []


def test_serve_and_dev_say_what_host_and_port_are():
    for name, parser in commands(cli.build_parser()):
        if name in ("jit serve", "jit dev"):
            text = parser.format_help()
            assert "address" in text and "(default: 127.0.0.1" in text and "(default: 3000)" in text
