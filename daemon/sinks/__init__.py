"""Mirroring the store into vector databases: the Sink interface, one module per engine,
the durable per-sink queue and the syncer."""
