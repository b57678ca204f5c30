"""`python -m bot` is `jit serve`."""

import sys

from bot.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
