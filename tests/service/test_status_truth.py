"""Status that tells the truth: during a bulk index with a rescan every second, the live state
the real daemon answers at each poll matches the files really indexed. The real ``embedd``
daemon in a subprocess, the real model, real files; the status is read over its Unix socket."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from structlog.testing import capture_logs
from support import Daemon, wait_for, write_config

from daemon.service.progress import Progress
from daemon.service.throughput import BulkProgress

FILES = 30
TEXT = "Paragraph {i} of file {n} is about {topic}, told in plain words for a patient reader. " * 12


def test_the_live_state_matches_the_files_indexed_at_every_poll(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, daemon="rescan_interval_s = 1")
    inbox = tmp_path / "inbox"
    topics = ["rivers", "bread", "compilers", "tax law", "bicycles", "opera"]
    for n in range(FILES):
        (inbox / f"doc{n:02d}.txt").write_text(
            "\n\n".join(TEXT.format(i=i, n=n, topic=topics[(n + i) % 6]) for i in range(3))
        )
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    polls: list[dict[str, Any]] = []
    try:
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(tmp_path / "data" / "embeddings.sock")),
            base_url="http://embedd",
            timeout=60,
        )
        while True:
            live = client.get("/v1/status").json()["daemon"]
            polls.append(live)
            indexed = live["in_memory"]["files"]
            pending, doing = live["pending_files"], len(live["in_progress"])
            assert indexed + pending + doing == FILES, live
            assert live["queued_files"] == pending + doing
            if live["bulk_index"]:
                assert live["bulk_files_total"] == FILES, live
                assert live["bulk_files_left"] == pending + doing, live
            else:
                assert indexed == FILES, f"the bulk ended before its last file: {live}"
                break
            assert daemon.proc.poll() is None
            time.sleep(0.05)
        rescans = [e for e in daemon.events("rescan_done")]
        assert rescans, "no rescan ran during the bulk: the test proves nothing"
        assert [e["files"] for e in daemon.events("bulk_index_queued")] == [FILES]
        wait_for(lambda: daemon.events("progress"), what="progress events")
        final = [e for e in daemon.events("progress") if e["task"] == "indexing" and e["final"]]
        assert [(e["done"], e["total"]) for e in final] == [(FILES, FILES)]
    finally:
        client.close()
        assert daemon.stop() == 0
    assert len(polls) > 3, "too few polls to say anything"
    assert sum(1 for p in polls if p["bulk_index"]) >= 2


def test_a_rescan_never_counts_a_pending_file_twice() -> None:
    bulk = BulkProgress()
    paths = [Path(f"/w/f{i}") for i in range(10)]
    bulk.start(paths)
    bulk.start(paths[3:])  # a rescan finds the same files still pending
    assert (bulk.total, bulk.left) == (10, 10)
    for p in paths[:9]:
        assert not bulk.done(p)
    bulk.start([paths[9], Path("/w/new")])  # one pending, one new: only the new one joins
    assert (bulk.total, bulk.left) == (11, 2)
    assert not bulk.done(paths[9])
    assert bulk.done(Path("/w/new")) and not bulk.active


def test_the_first_progress_report_has_no_made_up_rate() -> None:
    now = [100.0]
    with capture_logs() as logs:
        bar = Progress("embedding x", 512, unit="chunks", bar=False, clock=lambda: now[0])
        bar.advance(64)  # at once: no time has passed to measure
        now[0] += 2.0
        bar.advance(64)
    first, second = [e for e in logs if e["event"] == "progress"]
    assert first["rate"] == 0 and first["eta_s"] is None
    assert second["rate"] == 64.0
