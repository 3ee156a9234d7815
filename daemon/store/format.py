"""The JSON store document: its value types, how we encode it, and how any copy of it is parsed.

The document is the walkthrough's format plus ``fingerprint`` and ``files``. We always write
it in one layout, which stays a single valid JSON document any tool can read::

    {"version":"1.0",...,"files":{...},"embeddings":[
    {"id":...,"content":...,"metadata":{...},"embedding":[...],"timestamp":...},
    ...
    {"id":...}
    ]}

One entry per line is what makes the store fast at scale: an entry's bytes can be found
without a JSON parser, so a save splices unchanged entries from the old file, and the
parser below reads the numbers of one line at a time instead of building the whole tree.
A document in any other layout (pretty-printed, keys reordered, written by another tool)
goes through the generic parser, which is slower but accepts any valid document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeGuard

import numpy as np
import numpy.typing as npt
import orjson

from daemon.store.texts import TextRef

FloatMatrix = npt.NDArray[np.float32]
SpanArray = npt.NDArray[np.int64]
Extra = dict[str, Any]

FORMAT_VERSION = "1.0"
# Far above any embedding model; a larger width is damage, and would make us allocate absurdly.
MAX_DIMENSIONS = 1 << 16
# Bytes between the parts of our layout; spans of entries exclude them. Every line, the
# header's and the last entry's included, ends in NEWLINE; the last line is CLOSE.
NEWLINE = b"\n"
SEP = b",\n"
CLOSE = b"]}\n"
_HEADER_END = b'"embeddings":['
_EMB_KEY = b'"embedding":['
_EMB_END = b'],"timestamp":'
_KNOWN_META = frozenset(("source", "page", "chunk", "hash", "section", "title"))


class FormatError(ValueError):
    """The bytes are not a valid store document; the message says what is wrong."""


@dataclass(frozen=True)
class Fingerprint:
    """What the vectors depend on besides the text: two stores mix only if these are equal."""

    model_sha256: str
    pooling: str
    normalize: bool
    chunk_size: int
    chunk_overlap: int
    # ``[chunking] context_prefix``: the vectors embed the title and section path before the text.
    # Written only when on, so a store from before it existed keeps its bytes and matches "off".
    context_prefix: bool = False

    def to_json(self) -> dict[str, object]:
        """The ``fingerprint`` object of the document."""
        doc = self._fields()
        if not self.context_prefix:
            del doc["context_prefix"]
        return doc

    def _fields(self) -> dict[str, object]:
        return {
            "model_sha256": self.model_sha256,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "context_prefix": self.context_prefix,
        }

    @classmethod
    def from_json(cls, raw: object) -> Fingerprint | None:
        """Parse a ``fingerprint`` object; None when absent or malformed (unknown provenance)."""
        if not isinstance(raw, dict):
            return None
        sha, pooling, normalize = raw.get("model_sha256"), raw.get("pooling"), raw.get("normalize")
        size, overlap = raw.get("chunk_size"), raw.get("chunk_overlap")
        if not (isinstance(sha, str) and isinstance(pooling, str) and isinstance(normalize, bool)):
            return None
        if not (_is_int(size) and _is_int(overlap)):
            return None
        prefix = raw.get("context_prefix", False)
        if not isinstance(prefix, bool):
            return None
        return cls(sha, pooling, normalize, size, overlap, prefix)

    def differences(self, other: Fingerprint) -> list[str]:
        """Human-readable ``field: ours -> theirs`` for every field that differs."""
        out = []
        for name, mine in self._fields().items():
            theirs = other._fields()[name]
            if mine != theirs:
                out.append(f"{name}: {_short(mine)} -> {_short(theirs)}")
        return out


@dataclass(frozen=True)
class FileState:
    """The signature of an indexed file: equal signatures mean its entries are up to date.

    The stat signature says the file was not touched; ``extraction`` is the version of the
    extraction and splitting that made its entries (see ``daemon.ingest.extract``), so a file
    whose format is read differently now is indexed again although it did not change. It is
    written only when it is not 1, so records from before versions existed stay as they were.
    """

    size: int
    mtime_ns: int
    inode: int
    extraction: int = 1
    language: str | None = None  # a source file's language (its tree-sitter grammar), else None

    def to_json(self) -> dict[str, int | str]:
        """The per-file object under ``files``; ``language`` only for source code."""
        doc: dict[str, int | str] = {"size": self.size, "mtime_ns": self.mtime_ns, "inode": self.inode}
        if self.extraction != 1:
            doc["extraction"] = self.extraction
        if self.language is not None:
            doc["language"] = self.language
        return doc

    @classmethod
    def from_json(cls, raw: object) -> FileState | None:
        """Parse a per-file object; None when malformed (the file is then simply re-read)."""
        if type(raw) is not dict:
            return None
        size, mtime, inode = raw.get("size"), raw.get("mtime_ns"), raw.get("inode")
        extraction = raw.get("extraction", 1)
        language = raw.get("language")
        # ``type(x) is int`` rather than _is_int: JSON gives no int subclass but bool, and a
        # store of 100,000 files runs this at every open.
        if not (type(size) is int and type(mtime) is int and type(inode) is int and type(extraction) is int):
            return None
        return cls(size, mtime, inode, extraction, language if type(language) is str else None)


@dataclass
class Header:
    """Everything in the document except the entries."""

    model: str
    dimensions: int  # 0 when a foreign document does not say and holds no entries
    created: str
    updated: str
    fingerprint: Fingerprint | None
    files: dict[str, FileState] = field(default_factory=dict)
    version: str = FORMAT_VERSION
    count: int = 0  # as declared by the document; the entries themselves are the truth
    # The last journal record (``daemon.store.journal``) this document holds; 0 when none.
    journal_seq: int = 0


@dataclass
class Columns:
    """The entries of a document, column by column, with the vectors as one float32 matrix."""

    ids: Sequence[str]  # a list, or Texts (the cache's buffer, cut when read)
    contents: Sequence[TextRef]  # a list of strings, or Texts read from the cache file
    sources: list[str]
    pages: list[int | None]
    chunks: list[int]
    hashes: Sequence[str]
    timestamps: list[int]
    extras: list[Extra | None]
    sections: list[str | None]  # heading path (``metadata.section``), None when the format has none
    titles: list[str | None]  # the document's own title (``metadata.title``)
    # Row i is entry i's vector; rows past len(ids) are spare capacity, not initialised.
    matrix: FloatMatrix
    # (offset, length) of each entry's bytes in the file it came from; None when unknown.
    spans: SpanArray | None
    # Each entry's source as an index into the distinct sources, when the reader had them (the cache).
    source_codes: tuple[npt.NDArray[np.int32], tuple[str, ...]] | None = None
    # The keyword index's signature of each of those sources' rows, when the cache recorded them.
    signatures: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def entry_id(source: str, chunk: int) -> str:
    """Stable id of the chunk at position ``chunk`` of ``source``."""
    return hashlib.sha256(f"{source}\x00{chunk}".encode()).hexdigest()[:32]


def content_hash(content: str) -> str:
    """sha256 hex of a chunk's text, the key under which its vector is reused."""
    return hashlib.sha256(content.encode()).hexdigest()


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds, like JavaScript's toISOString()."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_header(header: Header, count: int) -> bytes:
    """The first line of our layout, up to and including ``"embeddings":[``."""
    doc: dict[str, object] = {
        "version": header.version,
        "model": header.model,
        "dimensions": header.dimensions,
        "count": count,
        "created": header.created,
        "updated": header.updated,
    }
    if header.fingerprint is not None:
        doc["fingerprint"] = header.fingerprint.to_json()
    if header.journal_seq:
        # Written only once a journal was used, so a store that never had one keeps its bytes.
        doc["journal_seq"] = header.journal_seq
    doc["files"] = {name: header.files[name].to_json() for name in sorted(header.files)}
    doc["embeddings"] = []
    raw = orjson.dumps(doc)
    # Serialising an empty list and cutting it open keeps every byte before it orjson's.
    return raw[: -len(b"]}")]


def encode_entry(
    eid: str,
    *,
    content: str,
    source: str,
    page: int | None,
    chunk: int,
    hash_: str,
    extra: Extra | None,
    vector: FloatMatrix,
    timestamp: int,
    section: str | None = None,
    title: str | None = None,
) -> bytes:
    """One entry as compact JSON; ``vector`` is a contiguous float32 row, written shortest.

    ``section`` and ``title`` are written only when there is one, so an entry without them
    keeps the exact bytes it had before they existed.
    """
    metadata: dict[str, object] = {"source": source, "page": page, "chunk": chunk, "hash": hash_}
    if section is not None:
        metadata["section"] = section
    if title is not None:
        metadata["title"] = title
    if extra:
        metadata.update(extra)
    entry = {
        "id": eid,
        "content": content,
        "metadata": metadata,
        "embedding": vector,
        "timestamp": timestamp,
    }
    return orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_header_line(line: bytes) -> Header | None:
    """Parse the first line of our layout; None when the document is in another layout."""
    body = line.rstrip(b"\r\n")
    if not body.endswith(_HEADER_END):
        return None
    try:
        doc = orjson.loads(body + b"]}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    try:
        return header_from_doc(doc)
    except FormatError:
        return None  # the generic parser will say what is wrong


def header_from_doc(doc: dict[str, Any]) -> Header:
    """The header fields of a parsed document, with defaults for what a foreign one lacks."""
    dims = doc.get("dimensions")
    if dims is not None and not (_is_int(dims) and 0 < dims <= MAX_DIMENSIONS):
        raise FormatError(f"dimensions is {dims!r}, not an integer from 1 to {MAX_DIMENSIONS}")
    created = doc.get("created")
    created = created if isinstance(created, str) else utc_now_iso()
    updated = doc.get("updated")
    files: dict[str, FileState] = {}
    raw_files = doc.get("files")
    if isinstance(raw_files, dict):
        for name, raw in raw_files.items():
            state = FileState.from_json(raw)
            if state is not None:
                files[name] = state
    model = doc.get("model")
    version = doc.get("version")
    count = doc.get("count")
    journal_seq = doc.get("journal_seq")
    return Header(
        model=model if isinstance(model, str) else "",
        dimensions=dims if isinstance(dims, int) else 0,
        created=created,
        updated=updated if isinstance(updated, str) else created,
        fingerprint=Fingerprint.from_json(doc.get("fingerprint")),
        files=files,
        version=version if isinstance(version, str) else FORMAT_VERSION,
        count=count if _is_int(count) and count > 0 else 0,
        journal_seq=journal_seq if _is_int(journal_seq) and journal_seq > 0 else 0,
    )


class _Builder:
    """Collects entries into Columns, validating each as it comes."""

    def __init__(self, dims: int, capacity: int) -> None:
        self.dims = dims
        # Headroom lets the store append without copying the matrix; untouched rows cost no RAM.
        self.matrix: FloatMatrix = np.empty((capacity + capacity // 8 + 64, dims), dtype=np.float32)
        self.contents: list[str] = []
        self.ids: list[str] = []
        self.hashes: list[str] = []
        self.cols = Columns(
            self.ids, self.contents, [], [], [], self.hashes, [], [], [], [], self.matrix, None
        )
        self._interned: dict[str, str] = {}
        self._missing_chunk = False

    def add(self, item: dict[str, Any], vector: object) -> None:
        cols = self.cols
        n = len(cols.ids)
        if type(vector) is not list or len(vector) != self.dims:
            got = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise FormatError(f"entry {n}: embedding has {got} values, expected {self.dims}")
        if n == len(self.matrix):
            grown = np.empty((n * 2, self.dims), dtype=np.float32)
            grown[:n] = self.matrix
            self.matrix = grown
        try:
            self.matrix[n] = vector
        except (TypeError, ValueError) as exc:
            raise FormatError(f"entry {n}: embedding holds a value that is not a number") from exc

        # type(x) is int: JSON true/false parse to bool, a subclass of int, and are no count.
        content = item.get("content")
        if type(content) is not str:
            content = ""
        meta = item.get("metadata")
        if type(meta) is not dict:
            meta = {}
        source = meta.get("source")
        if type(source) is not str:
            source = ""
        source = self._interned.setdefault(source, source)
        chunk = meta.get("chunk")
        if type(chunk) is not int or chunk < 0:
            chunk = -1  # numbered in finish(), after every chunk of the source is known
            self._missing_chunk = True
        hash_ = meta.get("hash")
        if type(hash_) is not str or len(hash_) != 64:
            hash_ = content_hash(content)
        page = meta.get("page")
        section = meta.get("section")
        title = meta.get("title")
        eid = item.get("id")
        timestamp = item.get("timestamp")

        self.ids.append(eid if type(eid) is str else "")
        self.contents.append(content)
        cols.sources.append(source)
        cols.pages.append(page if type(page) is int else None)
        cols.chunks.append(chunk)
        self.hashes.append(hash_)
        cols.timestamps.append(timestamp if type(timestamp) is int else 0)
        extra = (
            None if meta.keys() <= _KNOWN_META else {k: v for k, v in meta.items() if k not in _KNOWN_META}
        )
        for key, value in (("section", section), ("title", title)):
            if value is not None and type(value) is not str:
                extra = {**(extra or {}), key: value}  # not ours: kept as another writer's key
        cols.extras.append(extra)
        # Every chunk of a section repeats its path, every chunk of a file its title: one copy each.
        cols.sections.append(self._interned.setdefault(section, section) if type(section) is str else None)
        cols.titles.append(self._interned.setdefault(title, title) if type(title) is str else None)

    def finish(self, spans: Iterable[int] | None) -> Columns:
        cols = self.cols
        n = len(cols.ids)
        if self._missing_chunk:
            self._number_chunks()
        for i, eid in enumerate(self.ids):
            if not eid:
                self.ids[i] = entry_id(cols.sources[i], cols.chunks[i])
        if not np.isfinite(self.matrix[:n]).all():
            raise FormatError("an embedding holds a value that is not a finite float32")
        # A copy frees the spare rows of a count that promised far more entries than came.
        cols.matrix = (
            self.matrix if len(self.matrix) <= 2 * n + 1024 else self.matrix[: n + n // 8 + 64].copy()
        )
        if spans is not None:
            cols.spans = np.fromiter(spans, dtype=np.int64, count=2 * n).reshape(n, 2)
        return cols

    def _number_chunks(self) -> None:
        """Give entries without a chunk position the next free ones of their source, in file order."""
        chunks = self.cols.chunks
        next_free: dict[str, int] = {}
        for source, chunk in zip(self.cols.sources, chunks, strict=True):
            next_free[source] = max(next_free.get(source, 0), chunk + 1)
        for i, source in enumerate(self.cols.sources):
            if chunks[i] < 0:
                chunks[i] = next_free[source]
                next_free[source] += 1


class _NotOurs(Exception):
    """Internal: the bytes depart from our layout (which says nothing about their validity)."""


def parse_own_entries(f: BinaryIO, offset: int, header: Header, size: int) -> Columns | None:
    """Parse the entry lines of our layout from ``f``, positioned at ``offset`` after the header.

    Returns None as soon as anything departs from our layout, so the caller can fall back to
    the generic parser, which decides whether the document is valid at all.
    """
    if header.dimensions <= 0:
        return None
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return _parse_own_lines(f, offset, header, size)
    except (_NotOurs, orjson.JSONDecodeError, FormatError):
        return None


def _parse_own_lines(f: BinaryIO, offset: int, header: Header, size: int) -> Columns:
    dims = header.dimensions
    # Each number takes at least two bytes ("0,"), which bounds a corrupt count's allocation.
    builder = _Builder(dims, min(header.count, size // (2 * dims) + 1))
    spans: list[int] = []
    pos = offset
    closed = False
    last = False
    for line in f:
        if closed:
            raise _NotOurs("bytes after the closing line")
        if line in (CLOSE, CLOSE.rstrip()):
            closed = True
            continue
        if last:
            raise _NotOurs("an entry line without its comma was not the last one")
        # Slicing `line` as little as possible: each copy of 5 kB lines costs at 100,000s.
        if line.endswith(b",\n"):
            body_len = len(line) - 2
        elif line.endswith(b"\n"):
            body_len = len(line) - 1
            last = True
        else:
            raise _NotOurs("an entry line without a newline")
        end = line.rfind(_EMB_END, 0, body_len)
        start = line.rfind(_EMB_KEY, 0, end)
        if end < 0 or start < 0:
            raise _NotOurs("entry keys in another order")
        meta = orjson.loads(line[:start] + line[end + 2 : body_len])
        if not isinstance(meta, dict) or "embedding" in meta:
            raise _NotOurs("the embedding was not where we write it")
        builder.add(meta, orjson.loads(memoryview(line)[start + len(_EMB_KEY) - 1 : end + 1]))
        spans.append(pos)
        spans.append(body_len)
        pos += len(line)
    if not closed or (spans and not last):
        raise _NotOurs("no closing line")
    return builder.finish(spans)


def parse_document(data: bytes, expected_dims: int) -> tuple[Header, Columns]:
    """Parse any valid store document (any layout); raises FormatError saying what is wrong."""
    stripped = data.strip()
    if not stripped:
        raise FormatError("the file is empty")
    if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
        raise FormatError("the file is not a JSON object (truncated or not a store)")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FormatError(f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError("the top level is not a JSON object")
    raw_entries = doc.get("embeddings")
    if not isinstance(raw_entries, list):
        raise FormatError('"embeddings" is missing or not a list')
    header = header_from_doc(doc)
    if header.dimensions == 0:
        first = raw_entries[0] if raw_entries and isinstance(raw_entries[0], dict) else {}
        emb = first.get("embedding")
        header.dimensions = len(emb) if isinstance(emb, list) and emb else expected_dims
    builder = _Builder(header.dimensions, len(raw_entries))
    with np.errstate(over="ignore", invalid="ignore"):
        for i, item in enumerate(raw_entries):
            if not isinstance(item, dict):
                raise FormatError(f"entry {i} is not a JSON object")
            builder.add(item, item.get("embedding"))
            raw_entries[i] = None  # drop the floats as we go to lower the peak
    return header, builder.finish(None)


def _is_int(value: object) -> TypeGuard[int]:
    # JSON true/false parse to bool, a subclass of int, and are never a count or an offset.
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 20 else text[:13] + "..." + text[-4:]
