"""Benchmarks of jit against real processes on loopback: `python -m bench` or `jit bench`.

They start redis-server, `jit serve` and `jit worker` through the test suite's process harness
(tests/procs.py) and answer Slack with its fake (tests/fakes/slack/), so they need a source
checkout, not an installed package. Results: a markdown table on stdout and
bench/results/latest.json; the README's "Performance" section holds the last full run.
"""
