"""`embedd search` modes, filters and group_by without a daemon; the read-only sidecar; --sink refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support import cli, write_config

from daemon.store.format import content_hash
from daemon.store.keyword import kw_path
from daemon.store.store import FileState, Fingerprint, NewEntry, Store


def make_store(root: Path, model: Path) -> tuple[Path, Path]:
    cfg = write_config(root, model)
    path = root / "data" / "embeddings.json"
    store = Store.open(
        path, model="m", dimensions=4, fingerprint=Fingerprint("0" * 64, "mean", True, 500, 50)
    )
    docs = {
        "inbox/a.md": ["The valve XK-4471 is discontinued.", "Order valves from the catalogue."],
        "inbox/b.txt": ["def save_store(path): write the valve list"],
    }
    for n, (source, texts) in enumerate(docs.items()):
        entries = [
            NewEntry(t, None, i, content_hash(t), np.full(4, 0.5, dtype=np.float32), 1)
            for i, t in enumerate(texts)
        ]
        store.replace_source(source, entries, FileState(1, 10**18 + n, n))
    store.save()
    store.close()
    return cfg, path


def test_keyword_mode_without_a_daemon_reads_the_sidecar_and_never_writes_it(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg, path = make_store(tmp_path, default_model)
    base = ["search", "--config", str(cfg), "--no-daemon", "--json", "--mode", "keyword"]
    proc = cli([*base, "XK-4471"], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "keyword" and doc["notes"] == []
    assert [(h["source"], h["chunk"]) for h in doc["results"]] == [("inbox/a.md", 0)]
    assert doc["results"][0]["matched_terms"] == ["xk-4471"]

    proc = cli([*base, "--group-by", "file", "-k", "5", "valve"], cli_env)
    assert [h["source"] for h in json.loads(proc.stdout)["results"]] == ["inbox/a.md", "inbox/b.txt"]
    proc = cli([*base, "--format", "text", "valve"], cli_env)
    assert [h["source"] for h in json.loads(proc.stdout)["results"]] == ["inbox/b.txt"]
    proc = cli([*base, "saveStore"], cli_env)
    assert [h["source"] for h in json.loads(proc.stdout)["results"]] == ["inbox/b.txt"]

    # A sidecar behind the store: read-only users build one in memory, say so, and leave the file alone.
    kw_path(path).write_bytes(b"not a database")
    before = kw_path(path).read_bytes()
    proc = cli([*base, "XK-4471"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["source"] == "inbox/a.md"
    assert "built in memory" in proc.stderr
    assert kw_path(path).read_bytes() == before


def test_sink_search_refuses_what_its_engine_cannot_do(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg, _ = make_store(tmp_path, default_model)
    for extra in (["--mode", "keyword"], ["--format", "pdf"], ["--group-by", "file"]):
        proc = cli(["search", "--config", str(cfg), "--sink", "nope", *extra, "valve"], cli_env)
        assert proc.returncode == 2 and "a sink is searched" in proc.stderr, proc.stderr
    proc = cli(["search", "--config", str(cfg), "--no-daemon", "--format", "spreadsheet", "x"], cli_env)
    assert proc.returncode == 2 and "unknown format" in proc.stderr
