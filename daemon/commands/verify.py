"""``embedd verify``: check a store against the folders and the configuration it claims to follow.

Reads the store read-only (a running daemon is not disturbed) and lists every difference:
indexed files that are gone or changed (or were read by an older version of their format's
extraction), selected files that are not indexed, entries whose hash is not the sha256 of
their text, duplicate ids, a wrong declared count, and a fingerprint that does not match the
configured model and chunking.
"""

from __future__ import annotations

import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from daemon.commands.output import print_json
from daemon.config import Config
from daemon.errors import StoreCorruptError
from daemon.ingest.chunker import embedding_input
from daemon.ingest.extract import extraction_version, format_of
from daemon.store.format import FileState, Fingerprint, content_hash
from daemon.store.store import Store
from daemon.watch.scan import FoundFile, locate, path_of, selected_files, unindexable


@dataclass(frozen=True)
class Difference:
    """One way the store departs from the folders or the configuration."""

    kind: str
    detail: str
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The difference as a JSON object."""
        return {"kind": self.kind, "source": self.source, "detail": self.detail}


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found; ``ok`` when there is no difference."""

    store: Path
    files: int  # sources the store knows
    chunks: int
    selected: int  # files the configuration selects on disk now
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        """True when the store matches the folders and the configuration."""
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "ok": self.ok,
            "store": str(self.store),
            "files": self.files,
            "chunks": self.chunks,
            "selected_files": self.selected,
            "differences": [d.to_json() for d in self.differences],
        }


def model_sha256_or_none(path: Path) -> str | None:
    """sha256 of the model file, or None when it cannot be read."""
    from daemon.embed.embedder import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def fingerprint_differences(
    config: Config, fingerprint: Fingerprint | None, model_sha: str | None
) -> list[str]:
    """What makes ``config`` (with a model file of sha256 ``model_sha``) refuse a store of ``fingerprint``.

    Pooling is not compared: it is a property of the model file, which the hash already covers.
    An unknown fingerprint or model hash gives nothing to compare.
    """
    if fingerprint is None:
        return []
    out = []
    if model_sha is not None and model_sha != fingerprint.model_sha256:
        out.append(
            f"model_sha256: store {fingerprint.model_sha256}, configured model "
            f"{config.model.path} has {model_sha}"
        )
    pairs: list[tuple[str, object, object]] = [
        ("normalize", fingerprint.normalize, config.model.normalize),
        ("chunk_size", fingerprint.chunk_size, config.chunking.size),
        ("chunk_overlap", fingerprint.chunk_overlap, config.chunking.overlap),
    ]
    for name, stored, configured in pairs:
        if stored != configured:
            out.append(f"{name}: store {stored!r}, config {configured!r}")
    return out


def verify(config: Config) -> VerifyReport:
    """Compare ``config``'s store with its folders and settings.

    A missing or corrupt store is a difference, not an error. Raises StoreError only when
    the store exists but cannot be read at all.
    """
    path = config.store.path
    diffs: list[Difference] = []
    selected = [f for f in selected_files(config.watches) if _expected(config, f)]
    if not path.exists():
        diffs.append(Difference("no_store", f"no store at {path}: the daemon has not written one yet"))
        diffs += [_unindexed(f.source) for f in selected]
        return VerifyReport(path, 0, 0, len(selected), tuple(diffs))
    try:
        store = Store.open_readonly(path)
    except StoreCorruptError as exc:
        diffs.append(Difference("corrupt_store", str(exc)))
        return VerifyReport(path, 0, 0, len(selected), tuple(diffs))
    with store:
        diffs += _check_settings(config, store.fingerprint)
        if store.declared_count != store.count:
            diffs.append(
                Difference(
                    "count_mismatch",
                    f"the store declares count {store.declared_count} but holds {store.count}",
                )
            )
        diffs += _check_entries(store)
        sources = store.sources()
        for source in sorted(sources):
            diffs += _check_source(config, source, store.file_state(source))
        diffs += [_unindexed(f.source) for f in selected if f.source not in sources]
        return VerifyReport(path, len(sources), store.count, len(selected), tuple(diffs))


def _expected(config: Config, found: FoundFile) -> bool:
    """Whether the daemon would index a selected file.

    It skips symlinks, files over the size limit and names it cannot store (see daemon.watch.scan).
    """
    return (
        found.is_regular
        and found.stat.st_size <= config.daemon.max_file_bytes
        and unindexable(found.watch, found.source, found.path) is None
    )


def _unindexed(source: str) -> Difference:
    return Difference(
        "unindexed_file",
        "selected by the configuration but not in the store (new since the daemon last ran, "
        "or unreadable: see its file_skipped log)",
        source,
    )


def _check_settings(config: Config, fingerprint: Fingerprint | None) -> list[Difference]:
    model_sha = model_sha256_or_none(config.model.path)
    out = []
    if model_sha is None:
        out.append(Difference("model_missing", f"cannot read the configured model {config.model.path}"))
    if fingerprint is None:
        out.append(
            Difference(
                "no_fingerprint",
                "the store records no fingerprint (written by another tool), so what made its "
                "vectors is unknown; the daemon adopts the configured one at its next save",
            )
        )
    out += [
        Difference("fingerprint_mismatch", d) for d in fingerprint_differences(config, fingerprint, model_sha)
    ]
    return out


def _check_entries(store: Store) -> list[Difference]:
    out = []
    ids: Counter[str] = Counter()
    positions: Counter[tuple[str, int]] = Counter()
    for entry in store.iter_entries():
        ids[entry.id] += 1
        positions[(entry.source, entry.chunk)] += 1
        if entry.hash not in (
            content_hash(entry.content),
            content_hash(embedding_input(entry.content, entry.section, entry.title)),
        ):
            out.append(
                Difference(
                    "hash_mismatch",
                    f"chunk {entry.chunk}: metadata hash {entry.hash[:16]}… is not the sha256 of its content"
                    " (nor of its content with the context prefix)",
                    entry.source,
                )
            )
    out += [Difference("duplicate_id", f"id {eid} is used by {n} entries") for eid, n in ids.items() if n > 1]
    out += [
        Difference("duplicate_chunk", f"chunk {chunk} is stored {n} times", source)
        for (source, chunk), n in positions.items()
        if n > 1
    ]
    return out


def _check_source(config: Config, source: str, recorded: FileState | None) -> list[Difference]:
    path = path_of(config.watches, source)
    if path is None:
        return [Difference("unwatched_source", "not below any folder this configuration watches", source)]
    located = locate(config.watches, path)
    if located is None or located[1] != source:
        return [
            Difference(
                "unselected_source",
                f"{path} is no longer selected by the configuration's include/exclude patterns",
                source,
            )
        ]
    try:
        st = path.lstat()
    except FileNotFoundError:
        return [Difference("missing_file", f"{path} no longer exists", source)]
    except OSError as exc:
        return [Difference("unreadable_file", f"cannot stat {path}: {exc.strerror or exc}", source)]
    if not stat.S_ISREG(st.st_mode):
        return [Difference("not_regular_file", f"{path} is no longer a regular file", source)]
    if recorded is None:
        return [Difference("unrecorded_file", "has entries but no size/mtime/inode record", source)]
    changed = []
    if st.st_size != recorded.size:
        changed.append(f"size {recorded.size} -> {st.st_size}")
    if st.st_mtime_ns != recorded.mtime_ns:
        changed.append(f"mtime_ns {recorded.mtime_ns} -> {st.st_mtime_ns}")
    if st.st_ino != recorded.inode:
        changed.append(f"inode {recorded.inode} -> {st.st_ino}")
    if changed:
        return [Difference("changed_file", f"changed since it was indexed: {', '.join(changed)}", source)]
    version = extraction_version(path)
    if recorded.extraction != version:
        return [
            Difference(
                "stale_extraction",
                f"indexed by version {recorded.extraction} of the {format_of(path).name} extraction, "
                f"which is at version {version} now; the daemon indexes it again when it next starts "
                "or rescans (unchanged chunks keep their vectors)",
                source,
            )
        ]
    return []


def render_report(report: VerifyReport, out: TextIO) -> None:
    """Print ``report`` for a person: one line per difference, then a summary line."""
    for d in report.differences:
        where = f"{d.source}: " if d.source else ""
        out.write(f"{d.kind:<22}{where}{d.detail}\n")
    if report.ok:
        out.write(
            f"OK: {report.files} files, {report.chunks} chunks in {report.store} match the folders "
            "and the configuration\n"
        )
        return
    kinds = Counter(d.kind for d in report.differences)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    n = len(report.differences)
    out.write(f"FAILED: {n} difference{'s' if n != 1 else ''} ({summary}) in {report.store}\n")


def verify_command(config: Config, *, as_json: bool, out: TextIO) -> bool:
    """``embedd verify``: print the report; True when the store matches the folders and the config."""
    report = verify(config)
    if as_json:
        print_json(report.to_json(), out)
    else:
        render_report(report, out)
    return report.ok
