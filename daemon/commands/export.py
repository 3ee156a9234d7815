"""``embedd export``: the store as JSON lines in the walkthrough's vector-store format.

One object per line::

    {"id": ..., "vector": [...], "metadata": {"content", "source", "page", "chunk", "timestamp", "hash"}}

with ``section`` (heading path, slide title, EPUB chapter) and ``title`` (the document's own)
after ``hash`` for the entries that have them.

Our store layout holds one entry per line (``daemon.store.format``), so the export reads it
line by line and converts each entry on its own: memory stays constant whatever the store's
size, and a vector's numbers are copied as the store wrote them, never parsed. A store in
another layout (pretty-printed, written by another tool) is loaded whole instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

import orjson

from daemon.config import Config
from daemon.errors import StoreCorruptError, StoreError, UsageError
from daemon.store.format import CLOSE, Header, content_hash, entry_id, parse_header_line
from daemon.store.journal import has_records

# Where our layout puts the vector: '"embedding":[' ... '],"timestamp":' (see storeformat).
_EMB_KEY = b'"embedding":['
_EMB_END = b'],"timestamp":'
_KNOWN_META = ("source", "page", "chunk", "hash", "section", "title")
_FLUSH_BYTES = 1 << 20


class Sink(Protocol):
    """Where export lines go: a binary file, stdout's buffer, an AtomicWriter."""

    def write(self, data: bytes, /) -> object:
        """Append ``data``."""
        ...


@dataclass(frozen=True)
class ExportStats:
    """What one export wrote."""

    entries: int
    streamed: bool  # True: read line by line in constant memory; False: a foreign layout loaded whole


class _Departs(Exception):
    """Internal: the file is not in our line layout after all (detected before anything was written)."""


def export_jsonl(store_path: Path, out: Sink) -> ExportStats:
    """Write every entry of the store at ``store_path`` to ``out`` as one JSON line each.

    Raises StoreError when there is no store and StoreCorruptError when it is not valid
    (lines already written then stay written: write to a temp file to get all or nothing).
    """
    try:
        f = open(store_path, "rb", buffering=_FLUSH_BYTES)  # noqa: SIM115 - closed below, fallback after
    except FileNotFoundError:
        raise StoreError(f"no store at {store_path}: the daemon has not written one yet") from None
    except OSError as exc:
        raise StoreError(f"cannot read the store {store_path}: {exc.strerror or exc}") from exc
    with f:
        header = parse_header_line(f.readline())
        # With changes in the journal the file alone is behind: the loader replays them.
        if header is not None and not has_records(store_path):
            try:
                return ExportStats(_write_all(_stream_lines(store_path, f, header), out), streamed=True)
            except _Departs:
                pass
    return ExportStats(_write_all(_loaded_lines(store_path), out), streamed=False)


def export_to_file(store_path: Path, target: Path) -> ExportStats:
    """Export into ``target`` atomically: a crash or an error leaves no partial file behind.

    Raises UsageError when ``target`` is the store itself.
    """
    from daemon.store.io import AtomicWriter

    if target.resolve() == store_path.resolve():
        raise UsageError(f"{target} is the store itself; export to another file")
    try:
        with AtomicWriter(target) as writer:
            stats = export_jsonl(store_path, writer)
            writer.commit()
    except OSError as exc:
        raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return stats


def _write_all(lines: Iterable[bytes], out: Sink) -> int:
    """Write ``lines`` in blocks of about a megabyte; returns how many there were."""
    n = 0
    block: list[bytes] = []
    size = 0
    for line in lines:
        block.append(line)
        size += len(line)
        n += 1
        if size >= _FLUSH_BYTES:
            out.write(b"".join(block))
            block.clear()
            size = 0
    if block:
        out.write(b"".join(block))
    return n


def _stream_lines(path: Path, f: BinaryIO, header: Header) -> Iterator[bytes]:
    """Export lines of our layout, one store line at a time.

    Raises _Departs when the first entry line is not in our layout (nothing was yielded yet),
    StoreCorruptError when a later one is not.
    """
    lineno = 1
    closed = False
    yielded = False
    for line in f:
        lineno += 1
        if closed:
            if line.strip():
                raise StoreCorruptError(path, f"line {lineno}: data after the closing line")
            continue
        if line in (CLOSE, CLOSE.rstrip()):
            closed = True
            continue
        try:
            out = _convert_line(line, header.dimensions)
        except (orjson.JSONDecodeError, ValueError) as exc:
            if not yielded:
                raise _Departs from None
            raise StoreCorruptError(path, f"line {lineno}: {exc}") from None
        yielded = True
        yield out
    if not closed:
        if not yielded:
            raise _Departs
        raise StoreCorruptError(path, "truncated: the closing ]} line is missing")


def _convert_line(line: bytes, dims: int) -> bytes:
    """One store entry line -> one export line; the vector's bytes are copied, not parsed."""
    body = line.rstrip(b"\r\n")
    if body.endswith(b","):
        body = body[:-1]
    end = body.rfind(_EMB_END)
    start = body.rfind(_EMB_KEY, 0, end) if end >= 0 else -1
    if start < 0:
        # Keys in another order: parse the whole entry.
        item = orjson.loads(body)
        if not isinstance(item, dict):
            raise ValueError("not a JSON object")
        vector = item.get("embedding")
        if not isinstance(vector, list):
            raise ValueError("no embedding")
        raw_vector = orjson.dumps(vector)
    else:
        item = orjson.loads(body[:start] + body[end + 2 :])
        if not isinstance(item, dict):
            raise ValueError("not a JSON object")
        raw_vector = body[start + len(_EMB_KEY) - 1 : end + 1]
    if dims and raw_vector.count(b",") + 1 != dims:
        raise ValueError(f"the embedding does not hold {dims} numbers")
    meta = item.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    content = item.get("content")
    content = content if isinstance(content, str) else ""
    source, chunk = meta.get("source"), meta.get("chunk")
    eid = item.get("id")
    if not isinstance(eid, str) or not eid:
        eid = entry_id(str(source), chunk if isinstance(chunk, int) else 0)
    hash_ = meta.get("hash")
    if not isinstance(hash_, str):
        hash_ = content_hash(content)
    return _line(
        eid,
        raw_vector,
        _metadata(
            content=content,
            source=source,
            page=meta.get("page"),
            chunk=chunk,
            timestamp=item.get("timestamp"),
            hash_=hash_,
            extra=meta,
            section=meta.get("section"),
            title=meta.get("title"),
        ),
    )


def _metadata(
    *,
    content: str,
    source: object,
    page: object,
    chunk: object,
    timestamp: object,
    hash_: str,
    extra: dict[str, Any],
    section: object = None,
    title: object = None,
) -> dict[str, Any]:
    """The export's metadata object: the walkthrough's keys, the hash, the section and title when
    the entry has them, then any keys another writer added."""
    metadata: dict[str, Any] = {
        "content": content,
        "source": source,
        "page": page,
        "chunk": chunk,
        "timestamp": timestamp,
        "hash": hash_,
    }
    if section is not None:
        metadata["section"] = section
    if title is not None:
        metadata["title"] = title
    metadata.update((k, v) for k, v in extra.items() if k not in _KNOWN_META and k not in metadata)
    return metadata


def _line(eid: str, raw_vector: bytes, metadata: dict[str, Any]) -> bytes:
    return b"".join(
        (
            b'{"id":',
            orjson.dumps(eid),
            b',"vector":',
            raw_vector,
            b',"metadata":',
            orjson.dumps(metadata),
            b"}\n",
        )
    )


def _loaded_lines(path: Path) -> Iterator[bytes]:
    """Export lines of a store in any layout, through the normal loader."""
    from daemon.store.store import Store

    with Store.open_readonly(path) as store:
        for e in store.iter_entries():
            raw_vector = orjson.dumps(e.vector, option=orjson.OPT_SERIALIZE_NUMPY)
            meta = _metadata(
                content=e.content,
                source=e.source,
                page=e.page,
                chunk=e.chunk,
                timestamp=e.timestamp,
                hash_=e.hash,
                extra=e.extra or {},
                section=e.section,
                title=e.title,
            )
            yield _line(e.id, raw_vector, meta)


def export_command(config: Config, output: str, *, stdout: BinaryIO, stderr: TextIO) -> ExportStats:
    """``embedd export``: stream the store as JSON lines to ``stdout`` (``output`` "-") or a file."""
    if output == "-":
        stats = export_jsonl(config.store.path, stdout)
        stdout.flush()
        return stats
    target = Path(output)
    stats = export_to_file(config.store.path, target)
    how = "streamed" if stats.streamed else "loaded whole (not in embedd's line layout)"
    stderr.write(f"exported {stats.entries} entries to {target} ({how})\n")
    return stats
