"""`python -m bot` is the `imagine-bot` command."""

import sys

from bot.cli import main

sys.exit(main())
