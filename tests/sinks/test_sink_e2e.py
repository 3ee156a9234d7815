"""The daemon mirrors its store into a real Milvus Lite file: the collection follows, row for row."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import Daemon, cli, read_store, wait_for, write_config

from daemon.config import load_config
from daemon.sinks.base import fingerprint_digest
from daemon.sinks.milvus import MilvusSink

pytest.importorskip("pymilvus")

DOCS = {
    "orchard.md": "Apple orchards need pruning in late winter before the buds open. " * 4,
    "glacier.md": "Glaciers carve valleys as they slide downhill under their own weight. " * 4,
    "harbour.txt": "The harbour master schedules tugboats for container ships at dawn. " * 4,
}


def _sink_config(root: Path, name: str) -> Path:
    return write_config(
        root,
        _MODEL[0],
        watch=f"inbox-{name}",
        extra=f'[[sink]]\ntype = "milvus"\nuri = "{root.parent / "shared.db"}"\ncollection = "docs"\n',
        daemon=f'name = "{name}"',
    )


_MODEL: list[Path] = []


@pytest.fixture(autouse=True)
def _model(default_model: Path) -> None:
    _MODEL[:] = [default_model]


def _open_sink(cfg_path: Path) -> MilvusSink:
    config = load_config(cfg_path)
    store = read_store(config.store.path)
    assert store is not None
    return MilvusSink(
        config.sinks[0],
        daemon=config.daemon.name,
        dimensions=store["dimensions"],
        fingerprint=fingerprint_digest(store["fingerprint"]),
    )


def _expected(cfg_path: Path) -> dict[str, list[tuple[int, str, int]]]:
    store = read_store(load_config(cfg_path).store.path)
    assert store is not None
    out: dict[str, list[tuple[int, str, int]]] = {}
    for e in store["embeddings"]:
        m = e["metadata"]
        out.setdefault(m["source"], []).append((m["chunk"], m["hash"], e["timestamp"]))
    return {k: sorted(v) for k, v in out.items()}


def _actual(sink: MilvusSink) -> dict[str, list[tuple[int, str, int]]]:
    return {
        s: sorted((r["chunk"], r["hash"], r["timestamp"]) for r in sink.rows_for(s)) for s in sink.sources()
    }


def _run_until_mirrored(cfg: Path, env: dict[str, str], act: Any) -> None:
    """Start the daemon, let ``act`` change files, wait until the queue is empty, stop it."""
    daemon = Daemon(cfg, env).ready()
    try:
        act()
        daemon.wait_event("store_saved")

        def drained() -> bool:
            status = cli(["status", "--config", str(cfg), "--json"], env)
            sinks = json.loads(status.stdout)["sinks"]
            lag = sinks[0]["lag"]
            return lag is not None and lag["pending"] == 0 and not lag["full_sync"]

        wait_for(drained, what="the sink queue to drain")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0


def test_the_collection_follows_the_store_and_survives_an_outage(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    root = tmp_path / "a"
    cfg = _sink_config(root, "alpha")
    inbox = root / "inbox-alpha"

    def drop() -> None:
        for name, text in DOCS.items():
            (inbox / name).write_text(text)

    _run_until_mirrored(cfg, cli_env, drop)
    sink = _open_sink(cfg)
    try:
        assert _actual(sink) == _expected(cfg)
        assert len(_expected(cfg)) == 3
    finally:
        sink.close()

    # Edit, rename and delete while the sink file is held by another process (unavailable):
    # the changes queue on disk and arrive once it is released.
    blocker = _open_sink(cfg)
    blocker.connect()
    daemon = Daemon(cfg, cli_env).ready()
    try:
        (inbox / "orchard.md").write_text(
            DOCS["orchard.md"] + "\n\nPears too, in a second paragraph about pears."
        )
        (inbox / "glacier.md").rename(inbox / "ice.md")
        (inbox / "harbour.txt").unlink()
        wait_for(lambda: daemon.events("sink_error"), what="the sink to fail while held elsewhere")
        blocker.close()
        wait_for(
            lambda: any(e["event"] == "sink_recovered" for e in daemon.events()), what="the sink to recover"
        )
    finally:
        assert daemon.stop() == 0
    sink = _open_sink(cfg)
    try:
        expected = _expected(cfg)
        assert set(expected) == {"inbox-alpha/orchard.md", "inbox-alpha/ice.md"}
        wait_for(lambda: _actual(sink) == expected, timeout=30, what="the collection to equal the store")
        # A wipe, then `embedd sink sync`, restores it exactly; a second sync changes nothing.
        sink.wipe()
        assert sink.sources() == set()
    finally:
        sink.close()
    first = cli(["sink", "sync", "--config", str(cfg)], cli_env)
    assert first.returncode == 0, first.stderr
    again = cli(["sink", "sync", "--config", str(cfg)], cli_env)
    assert again.returncode == 0 and " 0 rows written" in again.stdout, again.stdout
    sink = _open_sink(cfg)
    try:
        assert _actual(sink) == _expected(cfg)
    finally:
        sink.close()


def test_two_daemons_share_one_collection(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cfg_a = _sink_config(tmp_path / "a", "alpha")
    cfg_b = _sink_config(tmp_path / "b", "beta")
    _run_until_mirrored(
        cfg_a, cli_env, lambda: (tmp_path / "a" / "inbox-alpha" / "orchard.md").write_text(DOCS["orchard.md"])
    )
    _run_until_mirrored(
        cfg_b, cli_env, lambda: (tmp_path / "b" / "inbox-beta" / "glacier.md").write_text(DOCS["glacier.md"])
    )
    # Alpha deletes its file: beta's rows stay.
    _run_until_mirrored(cfg_a, cli_env, (tmp_path / "a" / "inbox-alpha" / "orchard.md").unlink)
    a, b = _open_sink(cfg_a), _open_sink(cfg_b)
    try:
        assert _actual(a) == {}
        assert _actual(b) == _expected(cfg_b) and len(_expected(cfg_b)) == 1
    finally:
        a.close()
        b.close()
    # Search through the sink sees every daemon's rows, filtered by source prefix.
    found = cli(
        ["search", "--config", str(cfg_a), "--sink", "docs", "--json", "valleys", "carved", "by", "ice"],
        cli_env,
    )
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert results[0]["source"] == "inbox-beta/glacier.md" and results[0]["daemon"] == "beta"
    none = cli(
        [
            "search",
            "--config",
            str(cfg_a),
            "--sink",
            "docs",
            "--source-prefix",
            "inbox-alpha/",
            "--json",
            "ice",
        ],
        cli_env,
    )
    assert none.returncode == 0 and json.loads(none.stdout)["results"] == []
    assert np.isfinite(results[0]["score"])
