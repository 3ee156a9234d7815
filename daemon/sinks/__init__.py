"""Mirroring the store into vector databases: the Sink protocol, one module per engine,
the durable per-sink queue and the syncer."""
