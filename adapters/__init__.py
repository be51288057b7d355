"""Platform adapters: one module per chat platform, each behind the core's Reply port."""
