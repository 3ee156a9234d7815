"""The keyword index in the real daemon: deletes and renames, SIGKILL, an old store, a corrupt sidecar."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
from support import Daemon, read_store, wait_for, write_config


def uds(cfg: Path) -> httpx.Client:
    sock = cfg.parent / "data" / "embeddings.sock"
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://embedd", timeout=60)


def hits(cfg: Path, query: str, mode: str = "keyword", k: int = 1000) -> list[dict[str, Any]]:
    with uds(cfg) as c:
        r = c.post("/v1/search", json={"query": query, "k": k, "mode": mode})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def keyed(results: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(h["source"], h["chunk"]) for h in results}


def stored_keys(cfg: Path, word: str) -> set[tuple[str, int]]:
    store = read_store(cfg.parent / "data" / "embeddings.json")
    assert store is not None
    return {
        (e["metadata"]["source"], e["metadata"]["chunk"])
        for e in store["embeddings"]
        if word in e["content"].lower()
    }


def text(i: int) -> str:
    return f"Report {i}: the zephyrine turbine number T{i} passed its inspection.\n"


def test_deletes_renames_sigkill_an_old_store_and_a_corrupt_sidecar(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    inbox = tmp_path / "inbox"
    for i in range(6):
        (inbox / f"r{i}.txt").write_text(text(i))
    kw = tmp_path / "data" / "embeddings.json.kw"
    daemon = Daemon(cfg, cli_env)
    try:
        daemon.ready()
        wait_for(lambda: len(hits(cfg, "zephyrine")) == 6, what="six files in the keyword index")
        (inbox / "r0.txt").unlink()
        (inbox / "r1.txt").rename(inbox / "moved.txt")
        want = {f"inbox/r{i}.txt" for i in range(2, 6)} | {"inbox/moved.txt"}
        for mode in ("keyword", "hybrid"):
            wait_for(
                lambda mode=mode: {h["source"] for h in hits(cfg, "zephyrine", mode)} == want,
                what=f"the delete and the rename in {mode} results",
            )
        assert hits(cfg, "T0") == [] and [h["source"] for h in hits(cfg, "T1")] == ["inbox/moved.txt"]
        # SIGKILL in the middle of a burst of changes.
        for i in range(6, 30):
            (inbox / f"r{i}.txt").write_text(text(i))
        wait_for(lambda: len(hits(cfg, "zephyrine")) >= 12, what="part of the burst indexed")
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
    finally:
        daemon.kill()

    def consistent(d: Daemon) -> None:
        d.ready()
        wait_for(lambda: len(hits(cfg, "zephyrine")) == 29, what="every file after the restart")
        # What the keyword side answers is what the store holds (once the last change is saved).
        wait_for(
            lambda: keyed(hits(cfg, "zephyrine")) == stored_keys(cfg, "zephyrine"),
            what="the keyword index equal to the store",
        )

    daemon = Daemon(cfg, cli_env)
    try:
        consistent(daemon)
    finally:
        assert daemon.stop() == 0

    # An old store without the sidecar gets its index built once.
    for p in kw.parent.glob("embeddings.json.kw*"):
        p.unlink()
    daemon = Daemon(cfg, cli_env)
    try:
        consistent(daemon)
        assert daemon.events("keyword_index_sync")
    finally:
        assert daemon.stop() == 0
    assert kw.exists()

    # A corrupt sidecar is rebuilt.
    for p in kw.parent.glob("embeddings.json.kw-*"):
        p.unlink()
    kw.write_bytes(b"this is not a database, " * 500)
    daemon = Daemon(cfg, cli_env)
    try:
        consistent(daemon)
        assert daemon.events("keyword_index_rebuild")
    finally:
        assert daemon.stop() == 0
