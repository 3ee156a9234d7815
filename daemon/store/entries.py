"""The values the store hands out and takes in: new entries from the pipeline, stored chunks
for diffing, whole entries for search and export, and what a save did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from daemon.store.format import Extra, FloatMatrix


@dataclass(frozen=True)
class NewEntry:
    """A chunk of a file with its vector, as the pipeline hands it to ``replace_source``."""

    content: str
    page: int | None
    chunk: int
    hash: str
    vector: FloatMatrix
    timestamp: int  # ms since the epoch when the vector was computed
    section: str | None = None  # heading path, slide title or EPUB chapter
    title: str | None = None  # the document's own title (an HTML <title>, a .docx's title)


@dataclass(frozen=True)
class StoredChunk:
    """What the pipeline needs of a stored chunk to diff a file against the store."""

    id: str
    chunk: int
    page: int | None
    hash: str
    timestamp: int


@dataclass(frozen=True)
class Entry:
    """One stored entry, as search and export read it."""

    id: str
    content: str
    source: str
    page: int | None
    chunk: int
    hash: str
    vector: FloatMatrix  # read-only view; valid until the store next changes
    timestamp: int
    extra: Extra | None = None  # metadata keys a foreign writer added
    section: str | None = None
    title: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        """The entry's ``metadata`` object as the file holds it."""
        meta: dict[str, Any] = {
            "source": self.source,
            "page": self.page,
            "chunk": self.chunk,
            "hash": self.hash,
        }
        if self.section is not None:
            meta["section"] = self.section
        if self.title is not None:
            meta["title"] = self.title
        if self.extra:
            meta.update(self.extra)
        return meta


@dataclass(frozen=True)
class SaveStats:
    """What one ``save`` did."""

    saved: bool
    entries: int
    entries_written: int  # serialised anew
    entries_reused: int  # copied from the previous file
    bytes_written: int
    bytes_reused: int
    durable_seconds: float  # until the new file was renamed in place and fsynced
    seconds: float  # including the sidecar cache
    journalled: bool = False  # appended to the journal rather than rewriting the JSON file


class Row(Protocol):
    """One stored row as the writer and snapshots read it; the store never edits a row a
    snapshot holds."""

    @property
    def id(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def chunk(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def extra(self) -> Extra | None: ...
    @property
    def section(self) -> str | None: ...
    @property
    def title(self) -> str | None: ...
