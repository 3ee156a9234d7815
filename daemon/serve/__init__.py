"""The local API: HTTP on a Unix socket or loopback TCP, the client the commands use, and MCP."""
