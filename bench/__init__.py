"""Benchmarks of jit against real processes on loopback: `python -m bench` or `jit bench`.

They start redis-server, `jit serve` and `jit worker` (bench/stack.py) and answer Slack with a
small stand-in (bench/slack.py), from the installed package: a source checkout and the container
image run them alike. Results: a markdown table on stdout and a JSON file (bench/results/latest.json
in a checkout); the README's "Performance" section holds the last full run.
"""
