"""The JSON embedding store: its format, durable I/O, the sidecar cache, loading and splice-saving."""
