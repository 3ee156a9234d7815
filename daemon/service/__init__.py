"""The running daemon: file events to the store, the worker loop, the process lifecycle
(signals, reload, model and store ownership) and systemd's notify protocol."""
