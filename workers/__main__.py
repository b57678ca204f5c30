"""`python -m workers` is `jit worker`."""

import sys

from bot.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
