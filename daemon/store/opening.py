"""What the writer opens: the store file read and checked, or a fresh start and why.

A missing store starts empty; a corrupt one is moved aside to ``<name>.corrupt-<UTC>``; one
built with another model or chunking is refused, or with ``rebuild`` moved aside to
``<name>.bak-<UTC>``. A store of unknown provenance (no fingerprint) is adopted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from daemon.errors import FingerprintMismatchError, StoreCorruptError, StoreError
from daemon.store.cache import cache_path, remove_cache, write_cache
from daemon.store.format import Columns, Fingerprint, Header, utc_now_iso
from daemon.store.io import move_aside, remove_stale_temps
from daemon.store.journal import journal_path
from daemon.store.load import Loaded, check_compatible, load

log = structlog.get_logger("daemon.store.store")


@dataclass
class Opened:
    """The state a writer starts from."""

    header: Header
    cols: Columns | None
    via: str  # cache, parse, generic, new, corrupt or rebuild
    fd: int | None = None  # the file, open while the entries' spans refer to it
    json_size: int = 0
    rewrite: bool = True  # the first save must rewrite the file (new, foreign layout, adopted header)


def open_for_writing(
    path: Path, model: str, dimensions: int, fingerprint: Fingerprint, rebuild: bool
) -> Opened:
    """Read ``path`` for its writer, who holds the lock; raises StoreError or FingerprintMismatchError."""
    remove_stale_temps(path, cache_path(path), journal_path(path))
    fresh = Header(model, dimensions, utc_now_iso(), utc_now_iso(), fingerprint)
    try:
        try:
            loaded = load(path, dimensions, keep_fd=True)
        except FileNotFoundError:
            return Opened(fresh, None, "new")
        except StoreCorruptError as exc:
            moved = move_aside(path, "corrupt")
            remove_cache(path)
            log.warning("store_corrupt", path=str(path), moved_to=str(moved), reason=exc.reason)
            return Opened(fresh, None, "corrupt")
        try:
            check_compatible(path, loaded, model, dimensions, fingerprint)
        except FingerprintMismatchError as exc:
            loaded.close()
            if not rebuild:
                raise
            moved = move_aside(path, "bak")
            remove_cache(path)
            log.warning("store_rebuild", path=str(path), moved_to=str(moved), reason=str(exc))
            return Opened(fresh, None, "rebuild")
    except OSError as exc:
        raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
    try:
        return _adopt(path, loaded, model, dimensions, fingerprint)
    except BaseException:
        loaded.close()
        raise


def _adopt(path: Path, loaded: Loaded, model: str, dimensions: int, fingerprint: Fingerprint) -> Opened:
    header = loaded.header
    holds_data = len(loaded.cols) > 0 or bool(header.files)
    if header.fingerprint is None and holds_data:
        # The walkthrough's stores carry no fingerprint; model and width match, so we
        # take them as ours. Vectors are still reused only where a chunk's hash matches.
        log.warning("store_fingerprint_missing", path=str(path), detail="adopting the configured one")
    adopted = header.fingerprint != fingerprint or header.model != model or header.dimensions != dimensions
    header = replace(header, model=model, dimensions=dimensions, fingerprint=fingerprint)
    if not len(loaded.cols):
        loaded.cols.matrix = np.empty((0, dimensions), dtype=np.float32)
    size = os.fstat(loaded.fd).st_size if loaded.fd is not None else path.stat().st_size
    if loaded.via == "parse" and loaded.sig is not None:
        texts = write_cache(path, loaded.sig, loaded.cols)
        if texts is not None:
            loaded.cols.contents = texts  # read from the cache, not held as strings
    log.info(
        "store_loaded", path=str(path), entries=len(loaded.cols), files=len(header.files), via=loaded.via
    )
    # A foreign layout is rewritten in ours at the first save, so later starts are fast.
    return Opened(header, loaded.cols, loaded.via, loaded.fd, size, rewrite=adopted or loaded.fd is None)
