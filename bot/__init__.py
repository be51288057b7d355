"""imagine-bot core: commands, engine, ledger, router, media, web, CLI. Imports no platform library."""
