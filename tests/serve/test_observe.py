"""The real daemon's events feed and metrics over real HTTP on its socket: what the worker does
shows up in ``GET /v1/events`` (stream and long poll) and moves ``GET /metrics`` by exactly as much."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import Daemon, wait_for, write_config

DEADLINE_S = 120.0


def sock_of(cfg: Path) -> Path:
    return cfg.parent / "data" / "embeddings.sock"


def uds(cfg: Path) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock_of(cfg))), base_url="http://embedd", timeout=DEADLINE_S
    )


class SseReader:
    """Reads an SSE stream on a thread of its own; ``next`` waits for one message with a deadline."""

    def __init__(self, cfg: Path, headers: dict[str, str] | None = None, params: str = "") -> None:
        self.messages: queue.Queue[tuple[str | None, dict[str, Any]] | None] = queue.Queue()
        self._client = uds(cfg)
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(headers or {}, params), daemon=True)
        self._thread.start()
        assert self._opened.wait(DEADLINE_S)

    def _read(self, headers: dict[str, str], params: str) -> None:
        try:
            with self._client.stream(
                "GET", f"/v1/events{params}", headers={"Accept": "text/event-stream", **headers}
            ) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream"), resp.read()
                self._opened.set()
                event_id: str | None = None
                for line in resp.iter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data: "):
                        self.messages.put((event_id, json.loads(line[6:])))
                        event_id = None
        except httpx.HTTPError:
            pass
        finally:
            self._opened.set()
            self.messages.put(None)  # the stream ended

    def next_of(self, kind: str) -> tuple[str | None, dict[str, Any]]:
        """The next message of type ``kind`` (others are skipped)."""
        while True:
            item = self.messages.get(timeout=DEADLINE_S)
            assert item is not None, f"the stream ended before a {kind} event"
            if item[1]["type"] == kind:
                return item

    def ended(self) -> bool:
        self._thread.join(DEADLINE_S)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def daemon(tmp_path: Path, default_model: Path, cli_env: dict[str, str]) -> Iterator[Daemon]:
    cfg = write_config(tmp_path, default_model)
    d = Daemon(cfg, cli_env)
    try:
        d.ready()
        yield d
    finally:
        d.kill()


def scrape(cfg: Path) -> dict[str, float]:
    """Every sample of ``/metrics`` by name and labels, parsed by prometheus_client's own parser."""
    with uds(cfg) as c:
        resp = c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_the_stream_tells_a_file_indexed_then_removed_and_resumes_from_an_id(daemon: Daemon) -> None:
    cfg = daemon.config
    inbox = cfg.parent / "inbox"
    reader = SseReader(cfg)
    try:
        (inbox / "harbour.txt").write_text("The harbour survey starts in May; bring boots.\n")
        indexed_id, indexed = reader.next_of("file_indexed")
        assert indexed["data"]["source"].endswith("harbour.txt")
        assert indexed["data"]["chunks"] == 1
        assert indexed_id is not None and int(indexed_id) == indexed["id"]
        (inbox / "harbour.txt").unlink()
        removed_id, removed = reader.next_of("file_removed")
        assert removed["data"]["source"] == indexed["data"]["source"]
        assert int(removed_id or 0) > int(indexed_id)
    finally:
        reader.close()
    # Resuming after the indexed event replays what came after it, the removal included.
    for how in ({"headers": {"Last-Event-ID": indexed_id}}, {"params": f"?since={indexed_id}"}):
        again = SseReader(cfg, **how)  # type: ignore[arg-type]
        try:
            replay_id, _ = again.next_of("file_removed")
            assert replay_id == removed_id
        finally:
            again.close()
    # The long poll answers the same events as JSON.
    with uds(cfg) as c:
        doc = c.get("/v1/events", params={"since": indexed_id, "timeout": 5}).json()
        assert doc["missed"] == 0
        assert [e["type"] for e in doc["events"] if e["type"].startswith("file_")] == ["file_removed"]
        assert doc["last_id"] >= int(removed_id or 0)
        assert c.get("/v1/events", params={"since": "x", "timeout": 1}).status_code == 400


def test_a_client_that_never_reads_does_not_stall_indexing_and_stopping_ends_streams(
    daemon: Daemon,
) -> None:
    cfg = daemon.config
    inbox = cfg.parent / "inbox"
    # A stream whose client never reads a byte, with the smallest receive buffer the kernel allows.
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(str(sock_of(cfg)))
    stuck.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: embedd\r\nAccept: text/event-stream\r\n\r\n")
    listening = SseReader(cfg)
    try:
        files = 12
        for i in range(files):
            (inbox / f"note{i:02}.txt").write_text(
                f"Note {i}: the tram brake inspection log, entry {i}.\n" * 30
            )
        daemon.wait_event("file_indexed", count=files, timeout=DEADLINE_S * 2)
        seen = set()
        while len(seen) < files:
            seen.add(listening.next_of("file_indexed")[1]["data"]["source"])
        assert len(seen) == files
        # Stopping the daemon ends the open streams promptly, the stuck one included.
        assert daemon.stop() == 0
        assert listening.ended()
        assert not daemon.events("api_server_stuck")
    finally:
        listening.close()
        stuck.close()


def test_metrics_move_by_exactly_what_the_daemon_did(daemon: Daemon) -> None:
    cfg = daemon.config
    inbox = cfg.parent / "inbox"
    before = scrape(cfg)
    assert before["embedd_files_indexed_total{}"] == 0
    assert before["embedd_store_files{}"] == 0
    assert before["embedd_embedder_threads{}"] >= 1
    (inbox / "a.txt").write_text("The harbour survey starts in May; bring boots and a torch.\n")
    (inbox / "b.txt").write_text("A sourdough loaf needs a long, cool rise in the fridge.\n")
    daemon.wait_event("file_indexed", count=2)
    daemon.wait_event("store_saved")
    # The same text again under another name: its one chunk is reused, not embedded.
    (inbox / "c.txt").write_text("A sourdough loaf needs a long, cool rise in the fridge.\n")
    daemon.wait_event("file_indexed", count=3)
    (inbox / "a.txt").unlink()
    daemon.wait_event("file_removed")
    with uds(cfg) as c:
        for q in ("harbour survey", "bread"):
            assert c.post("/v1/search", json={"query": q, "k": 2}).status_code == 200
        assert c.post("/v1/embeddings", json={"input": ["one", "two", "three"]}).status_code == 200
    saves = len(
        wait_for(lambda: daemon.events("store_saved") if len(daemon.events("store_saved")) >= 2 else None)
    )

    def settled() -> dict[str, float] | None:
        now = scrape(cfg)
        return now if now["embedd_store_saves_total{}"] == len(daemon.events("store_saved")) else None

    after = wait_for(settled, what="the metrics to count every save")
    assert saves >= 2
    assert after["embedd_files_indexed_total{}"] == 3
    assert after["embedd_chunks_embedded_total{}"] == 2
    assert after["embedd_chunks_reused_total{}"] == 1
    removed = {k: v for k, v in after.items() if k.startswith("embedd_files_removed_total")}
    assert sum(removed.values()) == 1
    assert after["embedd_tokens_embedded_total{}"] == sum(e["tokens"] for e in daemon.events("file_indexed"))
    assert after["embedd_store_save_seconds_count{}"] == after["embedd_store_saves_total{}"]
    assert after["embedd_search_seconds_count{mode=hybrid}"] == 2  # the default mode
    assert after["embedd_embeddings_request_seconds_count{}"] == 1
    assert after["embedd_embeddings_inputs_total{}"] == 3
    assert after["embedd_store_files{}"] == 2
    assert after["embedd_store_chunks{}"] == 2
    assert after["embedd_queued_files{}"] == 0
    assert (
        after["embedd_embedder_jobs_total{priority=query}"]
        - before["embedd_embedder_jobs_total{priority=query}"]
        == 3
    )
