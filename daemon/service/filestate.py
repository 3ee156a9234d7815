"""What the worker records about a file: the signature that says it changed, and the store's
fingerprint and reading limits a configuration gives."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import Config
from daemon.embed.embedder import Embedder
from daemon.ingest.extract import ExtractLimits, file_kind, format_of
from daemon.store.store import FileState, Fingerprint


def fingerprint_for(config: Config, embedder: Embedder) -> Fingerprint:
    """The store fingerprint a configuration and model produce: vectors from two never mix."""
    return Fingerprint(
        model_sha256=embedder.fingerprint,
        pooling=embedder.pooling,
        normalize=config.model.normalize,
        chunk_size=config.chunking.size,
        chunk_overlap=config.chunking.overlap,
        context_prefix=config.chunking.context_prefix,
    )


def file_state(st: os.stat_result, path: Path) -> FileState:
    """The cheap signature that tells a file changed without reading it, and the version of the
    extraction that reads it now: a file read differently than when it was indexed is stale.
    A source file also records its language."""
    fmt = format_of(path)
    return FileState(st.st_size, st.st_mtime_ns, st.st_ino, fmt.version, fmt.language)


def extract_limits(config: Config) -> ExtractLimits:
    """The limits on reading one file that ``config`` sets."""
    return ExtractLimits(
        max_bytes=config.daemon.max_file_bytes,
        timeout_s=config.daemon.extract_timeout_s,
        memory_bytes=config.daemon.extract_memory_bytes,
        max_html_bytes=config.daemon.max_html_bytes,
        chunk_chars=config.chunking.size,
    )


# A file that failed, as it was when it failed: its FileState plus its ctime, because a
# chmod or chown (which moves only the ctime) can be exactly what makes it readable.
FailedAs = tuple[FileState, int]


def failed_as(st: os.stat_result, path: Path) -> FailedAs:
    """The signature under which a failed file is not tried again until it changes."""
    return file_state(st, path), st.st_ctime_ns


def not_regular(st: os.stat_result) -> str:
    """Why a path that is not a regular file is not indexed."""
    return f"is {file_kind(st.st_mode) or 'not a regular file'}; only regular files are indexed"
