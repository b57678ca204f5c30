"""What each `jit` subcommand does (bot/cli.py only parses the command line)."""
