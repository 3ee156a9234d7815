"""Reading a store file: the sidecar cache first, then our line layout, then any valid JSON.

Each way is a fallback for the one before: the cache is only a shortcut to what parsing our
layout would give, and parsing our layout only a shortcut to what the generic parser gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.errors import FingerprintMismatchError, StoreCorruptError
from daemon.store.cache import JsonSignature, read_cache
from daemon.store.format import (
    Columns,
    Fingerprint,
    FormatError,
    Header,
    parse_document,
    parse_header_line,
    parse_own_entries,
)
from daemon.store.texts import Texts

log = structlog.get_logger(__name__)


@dataclass
class Loaded:
    """One version of a store file, parsed."""

    header: Header
    cols: Columns
    via: str  # "cache", "parse" (our layout) or "generic" (any layout)
    # Open for reading while the entries' spans refer to it, so a save can splice from it.
    fd: int | None
    # Identifies this version for a cache; None when the cache cannot describe it.
    sig: JsonSignature | None

    def close(self) -> None:
        """Release the file and the cache's texts, when the version read is not used."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if isinstance(self.cols.contents, Texts):
            self.cols.contents.close()


def load(path: Path, expected_dims: int, *, keep_fd: bool) -> Loaded:
    """Parse the store at ``path``.

    Raises FileNotFoundError when there is none, OSError when it cannot be read, and
    StoreCorruptError when it is not a valid store. ``expected_dims`` only fills in the width
    of a foreign document that neither says nor shows it.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        loaded = _load_fd(path, fd, expected_dims)
    except BaseException:
        os.close(fd)
        raise
    if keep_fd and loaded.cols.spans is not None:
        loaded.fd = fd
    else:
        os.close(fd)
    return loaded


def _load_fd(path: Path, fd: int, expected_dims: int) -> Loaded:
    st = os.fstat(fd)
    with open(fd, "rb", buffering=1 << 20, closefd=False) as f:
        line = f.readline()
        header = parse_header_line(line)
        if header is not None:
            sig = JsonSignature.of(fd, st, line)
            cols = read_cache(path, sig, header.dimensions)
            if cols is not None:
                return Loaded(header, cols, "cache", None, sig)
            cols = parse_own_entries(f, len(line), header, st.st_size)
            if cols is not None:
                return Loaded(header, cols, "parse", None, sig)
            log.info("store_layout_foreign", path=str(path), detail="parsing the whole document")
        f.seek(0)
        data = f.read()
    try:
        header, cols = parse_document(data, expected_dims)
    except FormatError as exc:
        raise StoreCorruptError(path, str(exc)) from None
    return Loaded(header, cols, "generic", None, None)


def check_compatible(
    path: Path, loaded: Loaded, model: str, dimensions: int, fingerprint: Fingerprint
) -> None:
    """Raise FingerprintMismatchError when the loaded store's vectors cannot mix with new ones."""
    header = loaded.header
    diffs = []
    if header.model != model:
        diffs.append(f"model: {header.model!r} -> {model!r}")
    if header.dimensions != dimensions:
        diffs.append(f"dimensions: {header.dimensions} -> {dimensions}")
    if header.fingerprint is not None:
        diffs += header.fingerprint.differences(fingerprint)
    holds_data = len(loaded.cols) > 0 or bool(header.files)
    if diffs and holds_data:
        raise FingerprintMismatchError(
            f"store {path} was built differently from the configuration ({'; '.join(diffs)}), "
            "so its vectors cannot be mixed with new ones; run with --reembed to move it aside "
            f"(to {path.name}.bak-<timestamp>) and embed everything again, or restore the "
            "previous model and chunking settings"
        )
