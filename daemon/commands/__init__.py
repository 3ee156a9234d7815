"""The user-facing commands: init, status, search, export, verify, model build and sink sync.

Each is a function the CLI calls with typed arguments; it prints its result and raises typed
errors, and the CLI alone turns those into exit codes.
"""
