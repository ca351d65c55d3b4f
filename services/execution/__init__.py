"""The execution service: order entry, pre-trade risk, the durable journal and the fill ledger."""
