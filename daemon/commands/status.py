"""``embedd status``: what a store holds and whether a daemon is running on it, without disturbing it.

Only the store's first line is read for our layout (it holds the counts, the fingerprint and
the file records), so status is instant at any store size. Whether a daemon holds the store
is read from ``/proc/locks``, which takes no lock at all; only where that file is missing do
we probe with a shared non-blocking ``flock`` released at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from daemon.commands.output import print_json
from daemon.commands.verify import fingerprint_differences, model_sha256_or_none
from daemon.config import Config
from daemon.errors import StoreError
from daemon.store.cache import cache_path
from daemon.store.format import Fingerprint, parse_header_line
from daemon.store.journal import has_records

_PROC_LOCKS = Path("/proc/locks")


@dataclass(frozen=True)
class LockState:
    """Whether a process holds a store's lock; ``pid`` is the holder, or the last one recorded."""

    held: bool
    pid: int | None


@dataclass(frozen=True)
class Status:
    """What ``embedd status`` reports."""

    config: Path | None
    store: Path
    exists: bool
    store_bytes: int
    cache_bytes: int
    layout: str | None  # "lines" (ours, read from the first line) or "other" (parsed whole)
    model: str | None  # as recorded in the store
    dimensions: int | None
    files: int
    chunks: int
    created: str | None
    updated: str | None
    fingerprint: Fingerprint | None
    daemon: LockState
    model_path: Path
    model_sha256: str | None  # None when the configured model file cannot be read
    differences: tuple[str, ...]  # configuration vs the store's fingerprint; empty when they agree
    watches: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "config": str(self.config) if self.config is not None else None,
            "store": {
                "path": str(self.store),
                "exists": self.exists,
                "bytes": self.store_bytes,
                "cache_bytes": self.cache_bytes,
                "layout": self.layout,
                "model": self.model,
                "dimensions": self.dimensions,
                "files": self.files,
                "chunks": self.chunks,
                "created": self.created,
                "updated": self.updated,
                "fingerprint": self.fingerprint.to_json() if self.fingerprint is not None else None,
            },
            "daemon": {"running": self.daemon.held, "pid": self.daemon.pid if self.daemon.held else None},
            "model": {
                "path": str(self.model_path),
                "exists": self.model_sha256 is not None,
                "sha256": self.model_sha256,
                "matches_store": not self.differences if self.exists else None,
            },
            "differences": list(self.differences),
            "watches": list(self.watches),
        }


def lock_state(store: Path) -> LockState:
    """Whether a daemon holds ``store``'s lock file; never blocks, never creates or takes the lock."""
    from daemon.store.store import lock_path

    path = lock_path(store)
    try:
        st = path.stat()
    except FileNotFoundError:
        return LockState(False, None)
    except OSError as exc:
        raise StoreError(f"cannot inspect the lock {path}: {exc.strerror or exc}") from exc
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        # Another user's daemon: /proc/locks still tells, by inode, without reading the file.
        holder = _holder_from_proc_locks(st, None)
        if holder is None:
            raise StoreError(f"cannot read the lock {path}: {exc.strerror or exc}") from exc
        return holder
    try:
        recorded = _recorded_pid(fd)
        holder = _holder_from_proc_locks(os.fstat(fd), recorded)
        if holder is not None:
            return holder
        return LockState(_probe_held(fd), recorded)
    finally:
        os.close(fd)


def _recorded_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holder_from_proc_locks(st: os.stat_result, recorded: int | None) -> LockState | None:
    """The lock's state from ``/proc/locks``; None when that file cannot be read."""
    try:
        lines = _PROC_LOCKS.read_text().splitlines()
    except OSError:
        return None
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 22993 fe:00:2146473 0 EOF"; "->" marks a waiter, not a holder.
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue
        try:
            major, minor, inode = fields[5].split(":")
            pid = int(fields[4])
            lock_dev, lock_ino = (int(major, 16), int(minor, 16)), int(inode)
        except ValueError:
            continue
        # On overlay file systems the kernel shows the lower device, so a matching inode with
        # the pid the holder wrote into the file counts too.
        if lock_ino == st.st_ino and (lock_dev == dev or (recorded is not None and pid == recorded)):
            return LockState(True, pid if pid > 0 else recorded)
    return LockState(False, recorded)


def _probe_held(fd: int) -> bool:
    """Try a shared lock without waiting and give it back at once; failure means a writer holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise StoreError(f"cannot test the lock of the store: {exc.strerror or exc}") from exc
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def store_status(config: Config) -> Status:
    """Gather the status of ``config``'s store; a store that does not exist yet is reported as such.

    Raises StoreError when the store cannot be read and StoreCorruptError when it is not valid.
    """
    path = config.store.path
    model_sha = model_sha256_or_none(config.model.path)
    base: dict[str, Any] = {
        "config": config.source_path,
        "store": path,
        "daemon": lock_state(path),
        "model_path": config.model.path,
        "model_sha256": model_sha,
        "watches": tuple(w.name for w in config.watches),
    }
    cache_bytes = 0
    with contextlib.suppress(OSError):
        cache_bytes = cache_path(path).stat().st_size
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Status(
            exists=False,
            store_bytes=0,
            cache_bytes=cache_bytes,
            layout=None,
            model=None,
            dimensions=None,
            files=0,
            chunks=0,
            created=None,
            updated=None,
            fingerprint=None,
            differences=(),
            **base,
        )
    except OSError as exc:
        raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
    # One open file: the daemon renames new versions in, so everything comes from one version.
    with open(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = parse_header_line(f.readline())
    # Changes not folded into the JSON file yet are in the journal: then only a replay tells.
    if header is not None and not has_records(path):
        layout, model, dims, files, chunks = (
            "lines",
            header.model,
            header.dimensions,
            len(header.files),
            header.count,
        )
        created, updated, fingerprint = header.created, header.updated, header.fingerprint
    else:
        from daemon.store.store import Store

        # A foreign layout says nothing trustworthy in its first line: parse it all.
        with Store.open_readonly(path) as store:
            layout, model, dims = "other" if header is None else "lines", store.model, store.dimensions
            files, chunks = len(store.sources()), store.count
            created, updated, fingerprint = store.created, store.updated, store.fingerprint
    return Status(
        exists=True,
        store_bytes=size,
        cache_bytes=cache_bytes,
        layout=layout,
        model=model,
        dimensions=dims,
        files=files,
        chunks=chunks,
        created=created,
        updated=updated,
        fingerprint=fingerprint,
        differences=tuple(fingerprint_differences(config, fingerprint, model_sha)),
        **base,
    )


def render_status(status: Status, out: TextIO) -> None:
    """Print ``status`` for a person."""

    def row(label: str, value: str) -> None:
        out.write(f"{label:<12}{value}\n")

    if status.daemon.held:
        row("daemon", f"running (pid {status.daemon.pid})" if status.daemon.pid else "running")
    else:
        row("daemon", "not running")
    if not status.exists:
        row("store", f"{status.store} (does not exist yet: the daemon writes it on its first start)")
    else:
        cache = f", cache {_mib(status.cache_bytes)}" if status.cache_bytes else ""
        row("store", f"{status.store} ({_mib(status.store_bytes)}{cache})")
        row("files", str(status.files))
        row("chunks", str(status.chunks))
        row("model", f"{status.model or '(not recorded)'}, {status.dimensions} dimensions")
        fp = status.fingerprint
        if fp is None:
            row("fingerprint", "none recorded (written by another tool; the daemon adopts it)")
        else:
            norm = "normalised" if fp.normalize else "not normalised"
            row(
                "fingerprint",
                f"model sha256 {fp.model_sha256[:16]}…, {fp.pooling} pooling, {norm}, "
                f"chunks {fp.chunk_size}/{fp.chunk_overlap}",
            )
        row("updated", f"{status.updated} (created {status.created})")
    if status.model_sha256 is None:
        model_note = "missing or unreadable: build it with `embedd model build --config …`"
    elif not status.exists:
        model_note = "present"
    elif status.differences:
        model_note = "DIFFERS from the store: " + "; ".join(status.differences)
    else:
        model_note = "matches the store"
    row("config", f"{status.config}" if status.config is not None else "(none)")
    row("  model", f"{status.model_path} ({model_note})")
    row("  watching", ", ".join(status.watches))


def render_live(live: dict[str, Any], out: TextIO) -> None:
    """Print what the running daemon said about itself."""
    bulk = ""
    if live.get("bulk_index"):
        bulk = (
            f", bulk index running ({live.get('bulk_files_left', '?')} of "
            f"{live.get('bulk_files_total', '?')} files left)"
        )
    doing = len(live.get("in_progress", []))
    out.write(
        f"{'  state':<12}{live.get('phase')}, {live.get('queued_files', 0)} files queued "
        f"({live.get('pending_files', 0)} pending, {doing} in progress){bulk}\n"
    )
    for folder in live.get("unavailable_folders", []):
        out.write(
            f"{'  UNAVAILABLE':<12}{folder.get('path')} since {folder.get('since')}: {folder.get('reason')} "
            "(its entries are kept)\n"
        )
    listeners = ", ".join(f"{x['kind']} {x['address']}" for x in live.get("listeners", []))
    if listeners:
        out.write(f"{'  api':<12}{listeners}\n")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def status_document(config: Config) -> dict[str, Any]:
    """What ``embedd status --json`` prints (without a daemon's live state); also ``GET /v1/status``."""
    from daemon.sinks.mirror import sink_lags

    data = store_status(config).to_json()
    data["sinks"] = [
        {"name": name, "lag": None if lag is None else dataclasses.asdict(lag)}
        for name, lag in sink_lags(config)
    ]
    return data


def status_command(config: Config, *, as_json: bool, out: TextIO) -> None:
    """``embedd status``: the store's status and each sink's lag, for a person or as JSON.

    When a daemon answers on the configured socket (or port), its live state (what it is
    doing, its queue, the API's listeners) replaces the ``daemon`` part.
    """
    from daemon.serve.client import live_status
    from daemon.sinks.mirror import sink_lags

    live = live_status(config)
    if as_json:
        data = status_document(config)
        if live is not None:
            data["daemon"] = live
        print_json(data, out)
        return
    status = store_status(config)
    lags = sink_lags(config)
    render_status(status, out)
    if live is not None:
        render_live(live, out)
    for name, lag in lags:
        if lag is None:
            out.write(f"sink {name}: no queue yet (the daemon has not run with this sink)\n")
            continue
        age = f", oldest {lag.oldest_age_s:.0f} s" if lag.oldest_age_s is not None else ""
        error = f", last error: {lag.error}" if lag.error else ""
        full = ", full sync pending" if lag.full_sync else ""
        out.write(f"sink {name}: {lag.pending} files waiting{age}{full}{error}\n")


STORE_ONLY_NOTE = (
    "no daemon answers: only the files the store holds are listed, all as indexed "
    "(pending, failed, skipped and unavailable files are known to a running daemon)"
)


def file_states(config: Config, *, failed: bool) -> dict[str, Any]:
    """Every file's state: from the running daemon (``GET /v1/files``), else from the store.

    ``failed``: only the files not indexed for a reason (failed or skipped).
    """
    from urllib.parse import urlencode

    from daemon.errors import DaemonRequestError, DaemonUnavailable
    from daemon.serve.client import DaemonClient

    client = DaemonClient.for_config(config)
    if client is not None:
        try:
            rows: list[dict[str, Any]] = []
            for state in ("failed", "skipped") if failed else (None,):
                offset: int | None = 0
                while offset is not None:
                    query = {"limit": 1000, "offset": offset, **({"state": state} if state else {})}
                    doc = client.files(urlencode(query))
                    rows += doc["files"]
                    offset = doc["next_offset"]
            rows.sort(key=lambda r: r["source"])
            return {"files": rows, "total": len(rows), "from": "daemon", "note": None}
        except (DaemonUnavailable, DaemonRequestError):
            pass
    from daemon.service.files import stored_rows
    from daemon.store.store import Store

    try:
        with Store.open_readonly(config.store.path) as store:
            found = (
                []
                if failed
                else stored_rows(
                    sorted(store.sources()), lambda s: [c.timestamp for c in store.entries_for(s)]
                )
            )
    except StoreError:
        if not config.store.path.exists():
            found = []
        else:
            raise
    return {
        "files": [r.to_json() for r in found],
        "total": len(found),
        "from": "store",
        "note": STORE_ONLY_NOTE,
    }


def files_command(config: Config, *, failed: bool, as_json: bool, out: TextIO) -> None:
    """``embedd status --files [--failed]``: one line per file with its state (or one JSON object)."""
    doc = file_states(config, failed=failed)
    if as_json:
        print_json(doc, out)
        return
    for row in doc["files"]:
        when = row["indexed_at"] or "-"
        why = f"  {row['reason']} (since {row['since']})" if row["reason"] else ""
        out.write(f"{row['state']:<12}{row['chunks']:>7}  {when:<25} {row['source']}{why}\n")
    out.write(f"{doc['total']} files\n")
    if doc["note"]:
        out.write(f"note: {doc['note']}\n")
