"""Hostile and broken files, end to end: the real `embedd` CLI in a subprocess, the real default
model, real files. For every case the daemon stays up, the good files are indexed and the store
stays valid. Every wait polls with a generous deadline; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest
from fakes import FakeEmbedder
from structlog.testing import capture_logs
from support import (
    DEADLINE_S,
    NOBODY,
    NOBODY_PREFIX,
    Daemon,
    make_pdf,
    pdf_stream,
    raw_pdf,
    read_store,
    text_pdf,
    wait_for,
    write_config,
    zeros_flate,
)

from daemon.config import parse_config
from daemon.service.service import Service, fingerprint_for
from daemon.store.store import Store
from daemon.watch.debounce import Debouncer
from daemon.watch.events import EventKind, FileEvent
from daemon.watch.scan import IN_SYMLINKED_FOLDER, NOT_UTF8

MIB = 1024 * 1024
TEXT = "A perfectly ordinary note about {topic}, written so that there is something to embed.\n"


# -- helpers --------------------------------------------------------------------------------


def sources(store: dict[str, Any]) -> set[str]:
    return {e["metadata"]["source"] for e in store["embeddings"]}


def contents(store: dict[str, Any], source: str) -> list[str]:
    entries = [e for e in store["embeddings"] if e["metadata"]["source"] == source]
    return [e["content"] for e in sorted(entries, key=lambda e: e["metadata"]["chunk"])]


def assert_sound(store_path: Path) -> dict[str, Any]:
    """The store on disk parses as JSON, is self-consistent, and loads with embedd's own loader."""
    store = read_store(store_path)
    assert store is not None
    assert store["count"] == len(store["embeddings"])
    ids = [e["id"] for e in store["embeddings"]]
    assert len(ids) == len(set(ids))
    for e in store["embeddings"]:
        assert len(e["embedding"]) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in e["embedding"])), 1.0, abs_tol=1e-4)
        assert e["content"].strip()
    assert sources(store) <= set(store["files"])
    with Store.open_readonly(store_path) as loaded:
        assert loaded.count == store["count"]
    return store


def store_where(store_path: Path, check: Any, what: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        store = read_store(store_path)
        return store if store is not None and check(store) else None

    return wait_for(probe, what=what)


def skipped(daemon: Daemon, path: Path) -> list[dict[str, Any]]:
    return daemon.events_matching("file_skipped", path=str(path))


def wait_skipped(daemon: Daemon, path: Path) -> str:
    """The reason the daemon gave for skipping ``path`` (waits for it)."""
    reason = daemon.wait_event("file_skipped", path=str(path))[0]["reason"]
    assert isinstance(reason, str)
    return reason


def indexed(daemon: Daemon, source: str) -> list[dict[str, Any]]:
    return daemon.events_matching("file_indexed", source=source)


def stop_cleanly(daemon: Daemon) -> None:
    """Stop the daemon; it must still have been running, and must exit 0."""
    died = daemon.proc.poll()
    code = daemon.stop()
    assert died is None, f"the daemon died with {died}:\n{daemon.log_path.read_text()[-8000:]}"
    assert code == 0, daemon.log_path.read_text()[-8000:]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


# -- PDFs -----------------------------------------------------------------------------------


def _slow_pdf(pages: int = 20) -> bytes:
    """Tiny on disk, but each page is 340,000 empty text-show operators: pypdf needs ~3 s a page."""
    return text_pdf([b"BT /F1 1 Tf " + b"() Tj " * 340_000 + b"ET"] * pages)


def _page_tree_cycle() -> bytes:
    content = pdf_stream(b"BT /F1 12 Tf 72 700 Td (Never reached) Tj ET")
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [6 0 R] /Count 1 >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            content,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
            b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 5 0 R] /Count 2 >>",
        ]
    )


def _bomb_pdf() -> bytes:
    """~1 MB on disk; the page's content stream inflates to 1 GiB of zeros."""
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [5 0 R] /Count 1 >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            pdf_stream(b"", compressed=zeros_flate(1024)),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>",
        ]
    )


def _truncated_pdf() -> bytes:
    """The first half of a real PDF: the page objects and the xref table are gone."""
    data = make_pdf(["Cut off in the middle of the file."])
    return data[: len(data) // 2]


def test_hostile_pdfs_cost_one_file_each(root: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    # pdf_timeout_s: the old name of extract_timeout_s, which configs written before keep using.
    cfg = write_config(root, default_model, daemon="pdf_timeout_s = 3\nrescan_interval_s = 2")
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        bad = {
            "noise.pdf": (os.urandom(64 * 1024), "not a PDF / corrupt"),
            "truncated.pdf": (_truncated_pdf(), "not a PDF / corrupt"),
            "tree-cycle.pdf": (_page_tree_cycle(), "cyclic page references"),
            "locked.pdf": (make_pdf(["Only with the password."], user_password="hunter2"), "encrypted"),
            "bomb.pdf": (_bomb_pdf(), ""),  # pypdf's own limit or the worker's memory cap
            "slow.pdf": (_slow_pdf(), "timed out after 3s"),
        }
        good = {
            "xref-loop.pdf": text_pdf(
                [b"BT /F1 12 Tf 72 700 Td (The xref chain loops back on itself) Tj ET"],
                prev_xref_to_itself=True,
            ),
            "open-encrypted.pdf": make_pdf(["Encrypted, but with an empty user password."], user_password=""),
            "plain.pdf": make_pdf(["An ordinary PDF about orchards."]),
        }
        for name, (data, _) in bad.items():
            (inbox / name).write_bytes(data)
        for name, data in good.items():
            (inbox / name).write_bytes(data)

        reasons = {name: wait_skipped(daemon, inbox / name) for name in bad}
        for name, (_, expected) in bad.items():
            assert expected in reasons[name], (name, reasons[name])
        assert "limit" in reasons["bomb.pdf"], reasons["bomb.pdf"]
        assert "daemon.extract_timeout_s" in reasons["slow.pdf"]
        for name in good:
            daemon.wait_event("file_indexed", source=f"inbox/{name}")
        (inbox / "after.txt").write_text(TEXT.format(topic="life after the bad PDFs"))
        daemon.wait_event("file_indexed", source="inbox/after.txt")
        assert any("Circular xref" in w["reason"] for w in daemon.events_matching("file_warning"))

        # Skipped until it changes: two periodic rescans later no PDF worker ran again.
        rescans = len(daemon.events("rescan_done"))
        me = psutil.Process(daemon.proc.pid)

        def two_rescans_without_a_worker() -> bool:
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    assert "worker.py" not in " ".join(child.cmdline()), "a skipped PDF was parsed again"
            return len(daemon.events("rescan_done")) >= rescans + 2

        wait_for(two_rescans_without_a_worker, what="two rescans")
        for name in bad:
            assert len(skipped(daemon, inbox / name)) == 1, name

        # ... and once it changes it is tried again.
        (inbox / "slow.pdf").write_bytes(make_pdf(["Fixed: this PDF now opens quickly."]))
        daemon.wait_event("file_indexed", source="inbox/slow.pdf")
        store = store_where(store_path, lambda s: "inbox/slow.pdf" in sources(s), "the fixed PDF")
        assert "inbox/open-encrypted.pdf" in sources(store)
    finally:
        stop_cleanly(daemon)
    store = assert_sound(store_path)
    assert sources(store) == {*(f"inbox/{n}" for n in good), "inbox/after.txt", "inbox/slow.pdf"}
    assert "xref chain loops" in " ".join(contents(store, "inbox/xref-loop.pdf"))
    assert "empty user password" in " ".join(contents(store, "inbox/open-encrypted.pdf"))


# -- text files -----------------------------------------------------------------------------


def _long_line(total: int = 2 * MIB) -> tuple[str, list[str]]:
    """``total`` characters without a newline; markers every 100 KB show that nothing was cut."""
    filler = "lorem ipsum dolor sit amet "
    parts: list[str] = []
    markers: list[str] = []
    size = 0
    while size < total:
        marker = f"MARKER{len(markers):04d}"
        markers.append(marker)
        part = marker + " " + filler * (100_000 // len(filler))
        parts.append(part)
        size += len(part)
    markers.append("THE-VERY-END")
    return "".join(parts) + "THE-VERY-END", markers


def test_hostile_text_files(root: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    cfg = write_config(root, default_model, daemon="max_file_mb = 10")
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    daemon = Daemon(cfg, cli_env).ready()
    try:
        (inbox / "latin1.txt").write_bytes(b"Caf\xe9 au lait and a na\xefve note about the harbour.\n")
        utf16 = "\ufeffGrüße aus Köln: UTF-16 text about trams.\n"
        (inbox / "utf16.txt").write_bytes(utf16.encode("utf-16-le"))
        (inbox / "nul.txt").write_bytes(b"looks like text\x00but has a NUL byte\n")
        (inbox / "empty.txt").write_bytes(b"")
        (inbox / "blank.md").write_bytes(b"  \n\t\n   \r\n")
        (inbox / "program.txt").write_bytes(Path(sys.executable).resolve().read_bytes()[: 256 * 1024])
        line, markers = _long_line()
        (inbox / "long-line.txt").write_text(line)
        with (inbox / "huge.txt").open("wb") as f:
            f.truncate(20 * 1024 * MIB)  # 20 GiB, sparse: costs no disk

        assert "binary" in wait_skipped(daemon, inbox / "nul.txt")
        assert "binary" in wait_skipped(daemon, inbox / "program.txt")
        huge = wait_skipped(daemon, inbox / "huge.txt")
        assert "over the limit" in huge and "daemon.max_file_mb" in huge
        for name in ("latin1.txt", "utf16.txt", "empty.txt", "blank.md", "long-line.txt"):
            daemon.wait_event("file_indexed", source=f"inbox/{name}", timeout=300)
        warning = daemon.wait_event("file_warning", path=str(inbox / "latin1.txt"))[0]
        assert "invalid UTF-8 at byte 3" in warning["reason"]
        for name in ("empty.txt", "blank.md"):
            assert indexed(daemon, f"inbox/{name}")[0]["chunks"] == 0
        (inbox / "after.md").write_text(TEXT.format(topic="text after the bad ones"))
        daemon.wait_event("file_indexed", source="inbox/after.md")
        # The 20 GiB file was never read: the daemon's memory stays far below it.
        assert psutil.Process(daemon.proc.pid).memory_info().rss < 2 * 1024 * MIB
    finally:
        stop_cleanly(daemon)
    store = assert_sound(store_path)
    assert sources(store) == {"inbox/latin1.txt", "inbox/utf16.txt", "inbox/long-line.txt", "inbox/after.md"}
    assert {"inbox/empty.txt", "inbox/blank.md"} <= set(store["files"])
    assert "\ufffd" in contents(store, "inbox/latin1.txt")[0]
    assert contents(store, "inbox/utf16.txt") == ["Grüße aus Köln: UTF-16 text about trams."]
    long_chunks = contents(store, "inbox/long-line.txt")
    assert len(long_chunks) >= len(line) // 500
    assert all(len(chunk) <= 500 for chunk in long_chunks)
    joined = "\n".join(long_chunks)
    missing = [m for m in markers if m not in joined]
    assert not missing, f"text lost from the long line: {missing[:5]}"
    assert long_chunks[0].startswith("MARKER0000") and long_chunks[-1].endswith("THE-VERY-END")
    assert sum(len(c) for c in long_chunks) >= len(line)


# -- filesystem oddities --------------------------------------------------------------------


def _bad_name(folder: Path, raw: bytes) -> Path:
    """A path in ``folder`` whose last component is the raw bytes ``raw`` (not valid UTF-8)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + raw))


def _shown(path: Path) -> str:
    """How the daemon writes a path that is not valid UTF-8 in its log: undecodable bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def test_symlinks_fifos_vanishing_files_and_bad_names(
    root: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(root, default_model)
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("SECRET: this file lives outside the watched folder.\n")
    (outside / "dir" / "deep.txt").write_text("SECRET: deep inside a folder outside the watch.\n")
    # Before the start (found by the startup scan) ...
    (inbox / "link-to-secret.txt").symlink_to(outside / "secret.txt")
    (inbox / "linked-dir").symlink_to(outside / "dir")
    (inbox / "self-loop.txt").symlink_to("self-loop.txt")
    (inbox / "loop-dir").symlink_to(".")
    _bad_name(inbox, b"caf\xe9.txt").write_text(TEXT.format(topic="a Latin-1 file name"))
    (inbox / "keep.txt").write_text(TEXT.format(topic="a file that is fine"))
    daemon = Daemon(cfg, cli_env).ready()
    try:
        # ... and after it (live events).
        (inbox / "late-link.md").symlink_to(outside / "dir" / "deep.txt")
        (outside / "dir" / "new.txt").write_text("SECRET: written outside after the start.\n")
        os.mkfifo(inbox / "pipe.txt")
        bad_dir = _bad_name(inbox, b"dossier-\xff")
        bad_dir.mkdir()
        (bad_dir / "inside.txt").write_text(TEXT.format(topic="a file in a badly named folder"))
        (inbox / "after-fifo.txt").write_text(TEXT.format(topic="the file after the FIFO"))
        (inbox / "to-be-renamed.txt").write_text(TEXT.format(topic="a file renamed to a bad name"))

        for name in ("keep.txt", "after-fifo.txt", "to-be-renamed.txt"):
            daemon.wait_event("file_indexed", source=f"inbox/{name}")
        for name in ("link-to-secret.txt", "self-loop.txt", "late-link.md"):
            assert "symlink" in wait_skipped(daemon, inbox / name)
        assert "FIFO" in wait_skipped(daemon, inbox / "pipe.txt")
        for bad in (_bad_name(inbox, b"caf\xe9.txt"), bad_dir / "inside.txt"):
            event = daemon.wait_event("file_skipped", path=_shown(bad))[0]
            assert "UTF-8" in event["reason"], event

        (inbox / "to-be-renamed.txt").rename(_bad_name(inbox, b"renamed-\xfe.txt"))
        daemon.wait_event("file_removed", source="inbox/to-be-renamed.txt")
        daemon.wait_event("file_skipped", path=_shown(_bad_name(inbox, b"renamed-\xfe.txt")))

        # Files deleted while the daemon works through a batch: some vanish between event and read.
        names = [f"churn-{i:02d}.txt" for i in range(24)]
        for i, name in enumerate(names):
            (inbox / name).write_text((TEXT.format(topic=f"churn file {i}") + f"Line {i}-{{}}.\n") * 60)
        daemon.wait_event("file_indexed", source="inbox/churn-00.txt")
        for name in names[1::2]:
            (inbox / name).unlink()
        (inbox / "last.txt").write_text(TEXT.format(topic="the file after the churn"))
        daemon.wait_event("file_indexed", source="inbox/last.txt")
        survivors = {f"inbox/{n}" for n in names[::2]}
        store = store_where(
            store_path,
            lambda s: survivors <= sources(s) and not any(f"inbox/{n}" in sources(s) for n in names[1::2]),
            "the churned files to settle",
        )
        assert not any("SECRET" in e["content"] for e in store["embeddings"])
    finally:
        stop_cleanly(daemon)
    store = assert_sound(store_path)
    assert sources(store) == {"inbox/keep.txt", "inbox/after-fifo.txt", "inbox/last.txt", *survivors}
    assert not any("SECRET" in e["content"] for e in store["embeddings"])
    vanished = sum(1 for n in names[1::2] if not indexed(daemon, f"inbox/{n}"))
    print(f"churn: {vanished} of {len(names[1::2])} deleted files vanished before they were read")


def _probe(prefix: list[str], script: str) -> str | None:
    """None when ``prefix python -c script`` works, else why not."""
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]


def test_unreadable_files_as_an_unprivileged_user(nobody_root: Path, cli_env: dict[str, str]) -> None:
    why = _probe(NOBODY_PREFIX, "import daemon.cli, llama_cpp")
    if why is not None:
        pytest.skip(f"cannot run the daemon as uid {NOBODY}: {why}")
    root = nobody_root
    model = next(root.glob("*.gguf"))
    cfg = write_config(root, model)
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    (inbox / "readable.txt").write_text(TEXT.format(topic="a readable file"))
    (inbox / "secret.txt").write_text(TEXT.format(topic="a file only root may read"))
    (inbox / "secret.txt").chmod(0o000)
    private = inbox / "private"
    private.mkdir()
    (private / "hidden.txt").write_text(TEXT.format(topic="a file in a folder only root may open"))
    private.chmod(0o700)
    daemon = Daemon(cfg, cli_env, prefix=NOBODY_PREFIX).ready()
    try:
        assert "permission denied" in wait_skipped(daemon, inbox / "secret.txt")
        # Unreadable is not deleted: reported once as an unavailable folder, at error level.
        daemon.wait_event("folder_unavailable", path=str(private), level="error")
        daemon.wait_event("file_indexed", source="inbox/readable.txt")
        (inbox / "later.txt").write_text(TEXT.format(topic="a file dropped later"))
        daemon.wait_event("file_indexed", source="inbox/later.txt")
        # Fixing the permissions is a change: the file is tried again.
        (inbox / "secret.txt").chmod(0o644)
        daemon.wait_event("file_indexed", source="inbox/secret.txt")
    finally:
        stop_cleanly(daemon)
    store = assert_sound(store_path)
    assert sources(store) == {"inbox/readable.txt", "inbox/later.txt", "inbox/secret.txt"}
    assert store_path.stat().st_uid == NOBODY


USERNS_PREFIX = [
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_inotify_watches && exec "$@"',
    "embedd-in-userns",
]


def test_inotify_watch_limit_falls_back_to_polling(
    root: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    # fs.inotify.max_user_watches is system-wide; a user namespace has its own limit
    # (/proc/sys/user/max_inotify_watches), so only this daemon runs out of watches.
    why = _probe(
        USERNS_PREFIX,
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        "fd = libc.inotify_init1(0); assert libc.inotify_add_watch(fd, b'/', 2) == -1; "
        f"assert ctypes.get_errno() == {errno.ENOSPC}",
    )
    if why is not None:
        pytest.skip(f"cannot give the daemon a user namespace without inotify watches: {why}")
    cfg = write_config(root, default_model)
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET: outside the watched folder.\n")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "before.txt").write_text(TEXT.format(topic="a file there before the start"))
    # Symlinked folders a polling walker must not descend into: loops and a way outside.
    (inbox / "loop-a").symlink_to(".")
    (inbox / "loop-b").symlink_to(".")
    (inbox / "sub" / "up").symlink_to("..")
    (inbox / "outside-dir").symlink_to(outside)
    daemon = Daemon(cfg, cli_env, prefix=USERNS_PREFIX).ready()
    try:
        limit = daemon.wait_event("inotify_limit_reached")[0]
        assert limit["setting"] == "fs.inotify.max_user_watches" and "sysctl" in limit["fix"]
        daemon.wait_event("watch_root_scheduled", mode="polling")
        daemon.wait_event("file_indexed", source="inbox/sub/before.txt")
        (inbox / "polled.txt").write_text(TEXT.format(topic="a file found by polling"))
        (inbox / "sub" / "deeper.md").write_text(TEXT.format(topic="a nested file found by polling"))
        (outside / "new-secret.txt").write_text("SECRET: written outside after the start.\n")
        daemon.wait_event("file_indexed", source="inbox/polled.txt")
        daemon.wait_event("file_indexed", source="inbox/sub/deeper.md")
        (inbox / "polled.txt").write_text(TEXT.format(topic="an edit found by polling"))
        store_where(
            store_path, lambda s: any("an edit found" in e["content"] for e in s["embeddings"]), "the edit"
        )
        (inbox / "polled.txt").unlink()
        store_where(store_path, lambda s: "inbox/polled.txt" not in sources(s), "the deletion")
    finally:
        stop_cleanly(daemon)
    store = assert_sound(store_path)
    assert sources(store) == {"inbox/sub/before.txt", "inbox/sub/deeper.md"}
    assert not any("SECRET" in e["content"] for e in store["embeddings"])


def test_watched_folder_deleted_and_recreated(
    root: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(root, default_model)
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    for name in ("a.txt", "b.md"):
        (inbox / name).write_text(TEXT.format(topic=name))
    daemon = Daemon(cfg, cli_env).ready()
    try:
        store_where(store_path, lambda s: sources(s) == {"inbox/a.txt", "inbox/b.md"}, "the first files")
        shutil.rmtree(inbox)
        # A missing watched folder is unavailable, not emptied (issue 18): its entries stay ...
        daemon.wait_event("folder_unavailable", path=str(inbox))
        assert sources(assert_sound(store_path)) == {"inbox/a.txt", "inbox/b.md"}
        # ... until it is back: then the files it no longer holds leave.
        inbox.mkdir()
        (inbox / "c.txt").write_text(TEXT.format(topic="a file in the recreated folder"))
        (inbox / "sub").mkdir()
        (inbox / "sub" / "d.md").write_text(TEXT.format(topic="a nested file in the recreated folder"))
        store_where(
            store_path,
            lambda s: sources(s) == {"inbox/c.txt", "inbox/sub/d.md"},
            "the recreated folder's files",
        )
        (inbox / "e.txt").write_text(TEXT.format(topic="a later file, seen by the new watch"))
        daemon.wait_event("file_indexed", source="inbox/e.txt")
    finally:
        stop_cleanly(daemon)
    assert sources(assert_sound(store_path)) == {"inbox/c.txt", "inbox/sub/d.md", "inbox/e.txt"}


# -- floods ---------------------------------------------------------------------------------


def _count_in_log(daemon: Daemon, needle: bytes) -> int:
    """Cheap count of log lines containing ``needle`` (for logs with tens of thousands of lines)."""
    return daemon.log_path.read_bytes().count(needle)


@pytest.mark.slow
def test_inotify_queue_overflow_while_paused(
    root: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    # The periodic rescan is an hour away: only the events and the overflow's rescan can find
    # the files, so the test fails (times out) if an overflow went unnoticed.
    files, rescan_s = 20_000, 3600
    cfg = write_config(root, default_model, daemon=f"rescan_interval_s = {rescan_s}")
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        # Paused, the daemon reads no inotify events: 3 per file (create, modify, close) fill the
        # kernel's queue (fs.inotify.max_queued_events) and the rest are dropped.
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(files):
                body = TEXT.format(topic="floods") if i % 1000 else TEXT.format(topic=f"flood marker {i}")
                (inbox / f"f{i:05d}.txt").write_text(body)
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        resumed_at, resumed = datetime.now(UTC), time.monotonic()
        needle = b'"event":"file_indexed"'

        def all_indexed() -> bool:
            assert daemon.proc.poll() is None, daemon.log_path.read_text()[-5000:]
            if _count_in_log(daemon, needle) >= files:
                return True
            time.sleep(1.0)  # the log grows to megabytes: do not re-read it 20 times a second
            return False

        wait_for(all_indexed, timeout=20 * DEADLINE_S, what=f"{files} files indexed")
        took = time.monotonic() - resumed
        last_indexed = _when(daemon.events("file_indexed")[-1])
        rescans = [e for e in daemon.events("rescan_done") if resumed_at <= _when(e) <= last_indexed]
        overflowed = bool(daemon.events("inotify_overflow"))
        print(
            f"flood: {files} files indexed {took:.0f} s after SIGCONT, "
            f"{len(rescans)} periodic rescans meanwhile; overflow reported: {overflowed}"
        )
        assert not rescans, "no periodic rescan ran: the events and the overflow's rescan found every file"
        queue = Path("/proc/sys/fs/inotify/max_queued_events")
        if queue.exists() and int(queue.read_text()) < 3 * files:
            assert overflowed, "the kernel's queue must have overflowed, and watchdog reports that"
    finally:
        stop_cleanly(daemon)
    store = assert_sound(store_path)
    assert len(store["files"]) == files
    assert len(sources(store)) == files


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def test_rapid_appends_and_a_slow_copy_are_indexed_once_complete(
    root: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(root, default_model)
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    daemon = Daemon(cfg, cli_env).ready()
    try:
        # A copy written in pieces over a few seconds, pausing longer than the debounce each time.
        pieces = [f"Piece {i} of a slowly copied file. " * 40 + "\n\n" for i in range(8)]
        fd = os.open(inbox / "copy.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for piece in pieces:
                os.write(fd, piece.encode())
                time.sleep(0.6)
        finally:
            os.close(fd)
        daemon.wait_event("file_indexed", source="inbox/copy.txt")

        log = inbox / "appended.txt"
        for i in range(1000):
            with log.open("a") as f:
                f.write(f"line {i:04d}\n")
            time.sleep(0.002)
        (inbox / "marker.txt").write_text(TEXT.format(topic="the end of the test"))
        daemon.wait_event("file_indexed", source="inbox/copy.txt")
        daemon.wait_event("file_indexed", source="inbox/appended.txt")
        daemon.wait_event("file_indexed", source="inbox/marker.txt")
        store = store_where(
            store_path,
            lambda s: (
                any("line 0999" in c for c in contents(s, "inbox/appended.txt"))
                and any("Piece 7" in c for c in contents(s, "inbox/copy.txt"))
            ),
            "the final contents",
        )
    finally:
        stop_cleanly(daemon)
    appends = len(indexed(daemon, "inbox/appended.txt"))
    copies = len(indexed(daemon, "inbox/copy.txt"))
    print(f"appends: 1000 appends -> {appends} re-embeds; slow copy: indexed {copies} time(s)")
    assert appends <= 10
    assert copies == 1
    store = assert_sound(store_path)
    numbers = re.findall(r"line (\d{4})", "\n".join(contents(store, "inbox/appended.txt")))
    assert set(numbers) == {f"{i:04d}" for i in range(1000)}
    copied = "".join(contents(store, "inbox/copy.txt"))
    assert all(f"Piece {i} " in copied for i in range(8))
    assert stat.S_ISREG((inbox / "copy.txt").stat().st_mode)


# -- the same rules in-process: paths that no watcher event should ever carry ---------------
# A race (a folder swapped for a symlink between an event and the read, a rename while the
# daemon was down) can still hand the service such a path; these drive it there directly.


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """A real Service and store in ``tmp_path`` with a fake embedder (no daemon process)."""
    config = parse_config(
        {
            "model": {"path": "model.gguf"},
            "store": {"path": "data/store.json"},
            "watch": [{"path": "inbox"}],
        },
        tmp_path,
    )
    (tmp_path / "inbox").mkdir()
    embedder = FakeEmbedder()
    store = Store.open(
        config.store.path, model="fake-model", dimensions=8, fingerprint=fingerprint_for(config, embedder)
    )
    try:
        yield Service(config, embedder, store)
    finally:
        store.close()


def test_a_path_through_a_symlinked_folder_never_reaches_the_store(service: Service, tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET: outside the watched folder.\n")
    (inbox / "real").mkdir()
    doc = inbox / "real" / "doc.txt"
    doc.write_text(TEXT.format(topic="a real folder"))
    (inbox / "linked").symlink_to(outside)
    with capture_logs() as logs:
        service.handle(FileEvent(EventKind.CHANGED, doc))
        service.handle(FileEvent(EventKind.CHANGED, inbox / "linked" / "secret.txt"))
        assert service.reconcile(inbox / "linked") == 0  # a rescan of a folder that became a symlink
        # A stored file moved into the symlinked folder leaves the store; it is not relabelled.
        doc.rename(outside / "doc.txt")
        service.handle(FileEvent(EventKind.MOVED, doc, inbox / "linked" / "doc.txt"))
    assert service.store.sources() == set()
    skipped = [e for e in logs if e["event"] == "file_skipped"]
    assert [(e["source"], e["reason"]) for e in skipped] == [
        ("inbox/linked/secret.txt", IN_SYMLINKED_FOLDER),
        ("inbox/linked/doc.txt", IN_SYMLINKED_FOLDER),
    ]
    assert [e["source"] for e in logs if e["event"] == "file_removed"] == ["inbox/real/doc.txt"]


def test_a_rename_to_a_name_that_is_not_utf8_found_by_a_rescan(service: Service, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    good = inbox / "good.txt"
    good.write_text(TEXT.format(topic="a file renamed while the daemon was down"))
    service.handle(FileEvent(EventKind.CHANGED, good))
    assert service.store.sources() == {"inbox/good.txt"}
    bad = _bad_name(inbox, b"bad-\xe9.txt")
    good.rename(bad)  # same inode, size and mtime: the rescan sees a rename
    with capture_logs() as logs:
        service.reconcile()
        service.reconcile()
    assert service.store.sources() == set()
    # Only the files' events: the keyword postings, built in a thread, may log their end here.
    files = [e for e in logs if e["event"].startswith("file_")]
    assert [e["event"] for e in files] == ["file_removed", "file_skipped"]
    assert files[1]["path"] == _shown(bad) and files[1]["reason"] == NOT_UTF8
    service.store.save()
    store = assert_sound(service.store.path)
    assert store["files"] == {}


def test_debouncer_holds_a_file_until_its_writer_closes_it() -> None:
    now = [0.0]
    size = [0]
    debouncer = Debouncer(0.2, clock=lambda: now[0], stat=lambda path: (size[0], 0), open_quiet_s=30.0)
    path = Path("/inbox/copy.txt")

    def write(writer_open: bool | None) -> None:
        size[0] += 100
        debouncer.push(FileEvent(EventKind.CHANGED, path, writer_open=writer_open))

    debouncer.push(FileEvent(EventKind.CHANGED, path))  # created
    write(True)
    for _ in range(5):  # pieces 2 s apart, ten times the quiet period
        now[0] += 2.0
        assert debouncer.due() == []
        write(True)
    now[0] += 0.1
    debouncer.push(FileEvent(EventKind.CHANGED, path, writer_open=False))  # closed
    now[0] += 0.3
    assert debouncer.due() == [FileEvent(EventKind.CHANGED, path)]

    # A writer that never closes (a log kept open) is indexed after open_quiet_s of silence.
    write(True)
    now[0] += 29.0
    assert debouncer.due() == []
    now[0] += 1.5
    assert debouncer.due() == [FileEvent(EventKind.CHANGED, path)]
