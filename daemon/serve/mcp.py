"""The Model Context Protocol server (``embedd mcp``): search and status tools for AI assistants.

It speaks MCP on stdio with the official SDK and answers by asking the running daemon over
its socket; it never loads a model of its own (a second copy of the model would double the
memory and compete for the same cores). When no daemon runs, a tool says so in its result.
stdout carries the protocol: everything else goes to stderr.
"""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from daemon.config import Config
from daemon.errors import DaemonRequestError, DaemonUnavailable, UsageError
from daemon.query.options import Filters, SearchOptions, parse_time, to_body
from daemon.serve.client import DaemonClient

INSTRUCTIONS = (
    "Hybrid (keyword and semantic) search over the documents an embedd daemon indexes (text, "
    "Markdown, PDF, Word, PowerPoint, EPUB, OpenDocument, HTML, reStructuredText). Call `search` "
    'with a natural-language query, exact names or codes, or a "quoted phrase"; each hit has the '
    "source file, the page or slide, the heading path it sits under, the chunk's position and its "
    "text, best first."
)


class SearchHit(BaseModel):
    """One chunk of a document, ranked for the query."""

    rank: int
    score: float = Field(
        description="what hits are ordered by: the fused score (hybrid), cosine similarity (vector) or BM25"
    )
    source: str = Field(description="the file, as the watch path plus the path below it")
    page: int | None = Field(description="the PDF page or the slide (1-based); null for other files")
    section: str | None = Field(default=None, description='the heading path, as "# A > ## B"')
    title: str | None = Field(default=None, description="the document's own title, when it has one")
    chunk: int = Field(description="the chunk's position in the file")
    content: str
    matched_terms: list[str] = Field(default_factory=list, description="the query's words found in the chunk")


class SearchAnswer(BaseModel):
    """The hits of one query."""

    query: str
    model: str
    searched: int = Field(description="chunks compared")
    hits: list[SearchHit]


def build_server(config: Config) -> MCPServer:
    """An MCP server for ``config``'s daemon."""
    server = MCPServer("embedd", instructions=INSTRUCTIONS, log_level="WARNING")
    where = str(config.source_path) if config.source_path is not None else "the configuration"

    def ask(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        client = DaemonClient.for_config(config)
        if client is None:
            raise ToolError(
                f"no embedd daemon is running for {where} (its API is off or its socket is missing); "
                f"start it with `embedd --config {where}`"
            )
        try:
            return client.request(method, path, body)
        except DaemonUnavailable:
            raise ToolError(
                f"no embedd daemon answers at {client.where}; start it with `embedd --config {where}`"
            ) from None
        except DaemonRequestError as exc:
            raise ToolError(exc.message) from None

    @server.tool()
    def search(  # noqa: PLR0917 - an MCP tool's parameters are its schema
        query: str,
        k: int = 5,
        source_prefix: str | None = None,
        mode: str = "hybrid",
        group_by: str = "chunk",
        formats: list[str] | None = None,
        modified_after: str | None = None,
        modified_before: str | None = None,
    ) -> SearchAnswer:
        """Find the chunks of the indexed documents that best match ``query``, best first.

        ``k`` is how many (1 to 1000); ``source_prefix`` keeps only files whose source starts
        with it (for instance "inbox/reports/"); ``mode`` is "hybrid" (keywords and meaning,
        the default), "vector" (meaning only) or "keyword" (the words only); ``group_by``
        "file" returns the best chunk of k distinct files; ``formats`` keeps only those file
        formats ("pdf", "markdown", "docx", "text"...); ``modified_after`` / ``modified_before``
        are ISO 8601 dates.
        """
        try:
            opts = SearchOptions(
                k=k,
                mode=mode,  # type: ignore[arg-type]  # checked by SearchOptions
                group_by=group_by,
                filters=Filters(
                    source_prefix or None,
                    tuple(formats or ()),
                    None if modified_after is None else parse_time(modified_after, "modified_after"),
                    None if modified_before is None else parse_time(modified_before, "modified_before"),
                ),
            )
        except UsageError as exc:
            raise ToolError(str(exc)) from None
        body = to_body(query, opts)
        doc = ask("POST", "/v1/search", body)
        hits = [
            SearchHit(
                rank=h["rank"],
                score=h["score"],
                source=h["source"],
                page=h["page"],
                section=h.get("section"),
                title=h.get("title"),
                chunk=h["chunk"],
                content=h["content"],
                matched_terms=h.get("matched_terms") or [],
            )
            for h in doc["results"]
        ]
        return SearchAnswer(query=query, model=doc["model"], searched=doc["searched"], hits=hits)

    @server.tool()
    def status() -> dict[str, Any]:
        """What the store holds (files, chunks, model), and what the daemon is doing."""
        doc = ask("GET", "/v1/status")
        store = doc.get("store", {})
        return {
            "store": {k: store.get(k) for k in ("path", "files", "chunks", "model", "dimensions", "updated")},
            "daemon": doc.get("daemon"),
            "watches": doc.get("watches"),
        }

    return server
