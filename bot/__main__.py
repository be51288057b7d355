"""`python -m bot` is the `imagine-bot` command."""

import sys

try:
    from bot.cli import main
except KeyboardInterrupt:  # Ctrl-C while the imports load: leave as quietly as once they have
    sys.exit(130)

sys.exit(main())
