"""The gateway: one front door that routes each execution call to the shard owning its symbol."""
