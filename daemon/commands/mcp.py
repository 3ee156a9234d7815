"""``embedd mcp``: serve the Model Context Protocol on stdio, answered by the running daemon."""

from __future__ import annotations

from daemon.config import Config


def mcp_command(config: Config) -> None:
    """Run the MCP server until the client closes stdin."""
    from daemon.serve.mcp import build_server

    build_server(config).run("stdio")
