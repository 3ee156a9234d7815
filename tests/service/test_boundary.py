"""The worker's error boundary and its store lock, through the real service loop: the real
``Service.run`` on its own thread, real watchdog observers, real files and a real store (the
embedder is the small fake). A failure is injected for one file only; every wait polls."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEmbedder
from support import pdf_stream, raw_pdf, wait_for, zeros_flate

from daemon import log as logsetup
from daemon.config import parse_config
from daemon.ingest import pipeline
from daemon.service.service import Service, fingerprint_for
from daemon.store.store import Store

BODY = "A note about {topic}, with enough words that the fake embedder has a chunk to embed.\n"


class Running:
    """``Service.run`` on a thread over ``root/inbox``, its JSON log in memory."""

    def __init__(self, root: Path, **daemon: object) -> None:
        self.inbox = root / "inbox"
        self.inbox.mkdir()
        self.config = parse_config(
            {
                "model": {"path": "model.gguf"},
                "store": {"path": "data/store.json"},
                "watch": [{"path": "inbox"}],
                "daemon": {"debounce_ms": 100, "rescan_interval_s": 1, **daemon},
            },
            root,
        )
        self.embedder = FakeEmbedder()
        self.lock = threading.RLock()
        self.store = Store.open(
            self.config.store.path,
            model="fake-model",
            dimensions=8,
            fingerprint=fingerprint_for(self.config, self.embedder),
        )
        self.log = io.StringIO()
        logsetup.configure("json", "debug", stream=self.log)
        self.service = Service(self.config, self.embedder, self.store, store_lock=self.lock)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.getvalue().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
        return out

    def indexed(self, source: str) -> bool:
        with self.lock:
            return self.store.file_state(source) is not None

    def alive(self) -> bool:
        return self.thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the worker did not stop"
        self.store.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path)
    yield r
    if r.thread.is_alive() or not r.stop.is_set():
        r.close()


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("missing key"), OSError(5, "I/O error")])
def test_an_unexpected_error_in_extraction_costs_one_file(
    running: Running, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    real_extract = pipeline.extract

    def extract(path: Path, limits: Any) -> Any:
        if path.name == "bad.txt":
            raise error
        return real_extract(path, limits)

    monkeypatch.setattr(pipeline, "extract", extract)
    for name in ("a.txt", "bad.txt", "b.txt"):
        (running.inbox / name).write_text(BODY.format(topic=name))
    running.thread.start()
    wait_for(lambda: running.indexed("inbox/a.txt") and running.indexed("inbox/b.txt"), what="the good files")
    [failed] = wait_for(lambda: running.events("file_failed"), what="file_failed")
    assert failed["level"] == "error" and failed["source"] == "inbox/bad.txt"
    assert failed["error"].startswith(type(error).__name__)
    assert failed["exception"], "logged with its traceback"
    # Rescans do not retry it while it is unchanged, and the worker goes on.
    rescans = len(running.events("rescan_done"))
    wait_for(lambda: len(running.events("rescan_done")) >= rescans + 2, what="two rescans")
    assert len(running.events("file_failed")) == 1
    (running.inbox / "c.txt").write_text(BODY.format(topic="after the failure"))
    wait_for(lambda: running.indexed("inbox/c.txt"), what="a later file")
    # The patch is gone and the file changes: indexed.
    monkeypatch.setattr(pipeline, "extract", real_extract)
    (running.inbox / "bad.txt").write_text(BODY.format(topic="fixed now"))
    wait_for(lambda: running.indexed("inbox/bad.txt"), what="the changed file")
    assert running.alive()
    running.close()


def test_an_unexpected_error_in_a_store_call_costs_one_file(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Store.replace_source

    def replace_source(self: Store, source: str, *args: Any, **kwargs: Any) -> None:
        if source == "inbox/bad.txt":
            raise KeyError(source)
        real(self, source, *args, **kwargs)

    monkeypatch.setattr(Store, "replace_source", replace_source)
    for name in ("a.txt", "bad.txt"):
        (running.inbox / name).write_text(BODY.format(topic=name))
    running.thread.start()
    wait_for(lambda: running.indexed("inbox/a.txt"), what="the good file")
    [failed] = wait_for(lambda: running.events("file_failed"), what="file_failed")
    assert failed["error"] == "KeyError: 'inbox/bad.txt'"
    monkeypatch.setattr(Store, "replace_source", real)
    (running.inbox / "bad.txt").write_text(BODY.format(topic="fixed now"))
    wait_for(lambda: running.indexed("inbox/bad.txt"), what="the changed file")
    assert running.alive()
    running.close()


def test_the_store_lock_is_free_while_a_file_is_extracted(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink thread (or a save) takes the store lock while a slow extraction runs."""
    real_extract = pipeline.extract
    entered, release = threading.Event(), threading.Event()

    def extract(path: Path, limits: Any) -> Any:
        if path.name == "slow.txt":
            entered.set()
            assert release.wait(120), "never released"
        return real_extract(path, limits)

    monkeypatch.setattr(pipeline, "extract", extract)
    running.thread.start()
    (running.inbox / "slow.txt").write_text(BODY.format(topic="a slow file"))
    assert entered.wait(120), "the extraction never started"
    got: list[bool] = []

    def sink_like_reader() -> None:
        ok = running.lock.acquire(timeout=60)
        got.append(ok)
        if ok:
            running.store.sources()  # what a sink thread reads under the lock
            running.lock.release()

    reader = threading.Thread(target=sink_like_reader)
    reader.start()
    reader.join(90)
    try:
        assert got == [True], "the reader waited for the extraction"
        assert not running.indexed("inbox/slow.txt")
    finally:
        release.set()
    wait_for(lambda: running.indexed("inbox/slow.txt"), what="the slow file, once released")
    running.close()


def test_a_memory_bomb_in_the_sandbox_costs_one_file(tmp_path: Path) -> None:
    """MemoryError while parsing is contained in the sandboxed worker: the file is skipped with the
    reason, the loop goes on (the extraction-level tests are in tests/ingest/test_extract.py)."""
    running = Running(tmp_path, extract_memory_mb=128)
    try:
        # A one-page PDF whose content stream inflates to 1 GiB of zeros (as in test_extract.py).
        bomb = raw_pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
                pdf_stream(b"", compressed=zeros_flate(1024)),
                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            ]
        )
        (running.inbox / "bomb.pdf").write_bytes(bomb)
        (running.inbox / "good.txt").write_text(BODY.format(topic="beside the bomb"))
        running.thread.start()
        [skipped] = wait_for(lambda: running.events("file_skipped"), what="the bomb skipped")
        assert skipped["reason"].startswith("exceeded memory limit (128 MB)"), skipped
        wait_for(lambda: running.indexed("inbox/good.txt"), what="the good file")
        (running.inbox / "later.txt").write_text(BODY.format(topic="after the bomb"))
        wait_for(lambda: running.indexed("inbox/later.txt"), what="a later file")
        assert running.alive() and running.events("file_failed") == []
    finally:
        running.close()
