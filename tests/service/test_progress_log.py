"""Logging setup and progress reporting, each on its own."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from structlog.testing import capture_logs

from daemon import log as logsetup
from daemon.service.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_json_lines_carry_iso_timestamps_and_levels() -> None:
    out = io.StringIO()
    assert logsetup.configure("auto", "info", stream=out) == "json"
    structlog.get_logger("t").info("file_indexed", path="inbox/a.md", chunks=3)
    structlog.get_logger("t").debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "file_indexed" and event["level"] == "info" and event["chunks"] == 3
    assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]


def test_console_on_a_terminal_unless_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    tty = Tty()
    assert logsetup.configure("auto", "info", stream=tty) == "console"
    structlog.get_logger("t").warning("file_skipped", path="x.pdf", reason="encrypted")
    assert "file_skipped" in tty.getvalue() and "encrypted" in tty.getvalue()
    assert not tty.getvalue().lstrip().startswith("{")
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert logsetup.configure("auto", "info", stream=Tty()) == "json"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logsetup.configure("xml")


def test_progress_draws_a_bar_on_a_terminal() -> None:
    tty = Tty()
    clock = FakeClock()
    bar = Progress("indexing", 4, unit="files", stream=tty, bar=True, clock=clock, interval_s=0)
    for _ in range(4):
        clock.now += 0.5
        bar.advance()
    bar.close()
    text = tty.getvalue()
    assert "\rindexing [" in text and "4/4 files (100%)" in text and "2.0 files/s" in text
    assert text.endswith("\n")


def test_progress_emits_events_when_not_on_a_terminal() -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        bar = Progress("embedding inbox/big.pdf", 10, unit="chunks", bar=False, clock=clock, interval_s=1.0)
        for _ in range(10):
            clock.now += 0.3
            bar.advance()
        bar.close()
    events = [e for e in logs if e["event"] == "progress"]
    # At most one report per interval, the last one when done, and a final one.
    assert 3 <= len(events) <= 6
    assert events[-1]["final"] is True and events[-1]["done"] == 10 and events[-1]["total"] == 10
    mid = events[0]
    assert mid["task"] == "embedding inbox/big.pdf" and mid["unit"] == "chunks" and mid["eta_s"] is not None
