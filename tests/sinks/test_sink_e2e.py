"""The daemon mirrors its store into each engine: the same story, run by the real CLI, on every
backend (Milvus Lite, Qdrant local, Chroma folder, LanceDB folder, Milvus server, Chroma server).

index -> edit, rename, delete while running -> a change made while stopped, picked up at the
restart -> wipe, `embedd sink sync`, and a second sync that writes nothing -> a second daemon
sharing the collection -> `embedd search --sink` over both daemons' rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sink_support import (
    ALL,
    DOCS,
    Backend,
    actual_rows,
    expected_rows,
    make_backend,
    running,
    sink_for,
    store_sources,
    synced,
    unique_collection,
)
from support import cli, write_config


@pytest.fixture(params=ALL)
def e2e_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    shared = tmp_path / "shared"
    shared.mkdir()
    return make_backend(request.param, request, shared)


def _config(root: Path, name: str, backend: Backend, collection: str, model: Path) -> Path:
    sink = f'[[sink]]\ntype = "{backend.type}"\nuri = "{backend.uri}"\ncollection = "{collection}"\n'
    return write_config(root, model, watch=f"inbox-{name}", extra=sink, daemon=f'name = "{name}"')


def test_the_collection_follows_the_store(
    e2e_backend: Backend, tmp_path: Path, cli_env: dict[str, str], default_model: Path
) -> None:
    collection = unique_collection("docs")
    cfg = _config(tmp_path / "a", "alpha", e2e_backend, collection, default_model)
    inbox = tmp_path / "a" / "inbox-alpha"
    mine = {f"inbox-alpha/{n}" for n in DOCS}

    with running(cfg, cli_env):
        for name, text in DOCS.items():
            (inbox / name).write_text(text)
        synced(cfg, lambda s: store_sources(s) == mine)
        # Edit, rename and delete while the daemon runs.
        (inbox / "orchard.md").write_text(DOCS["orchard.md"] + "\n\nPears too, in a paragraph about pears.")
        (inbox / "glacier.md").rename(inbox / "ice.md")
        (inbox / "harbour.txt").unlink()
        synced(
            cfg,
            lambda s: (
                store_sources(s) == {"inbox-alpha/orchard.md", "inbox-alpha/ice.md"}
                and any("Pears" in e["content"] for e in s["embeddings"])
            ),
        )
    expected = expected_rows(cfg)
    assert set(expected) == {"inbox-alpha/orchard.md", "inbox-alpha/ice.md"}
    assert actual_rows(cfg) == expected

    # A file added while the daemon is stopped reaches the sink after the restart.
    (inbox / "harbour.txt").write_text(DOCS["harbour.txt"])
    with running(cfg, cli_env):
        synced(cfg, lambda s: "inbox-alpha/harbour.txt" in store_sources(s))
    assert actual_rows(cfg) == expected_rows(cfg)

    # A wipe, then `embedd sink sync`, restores it exactly; a second sync changes nothing.
    sink = sink_for(cfg)
    try:
        sink.wipe()
        assert sink.count() == 0
    finally:
        sink.close()
    first = cli(["sink", "sync", "--config", str(cfg)], cli_env)
    assert first.returncode == 0, first.stderr
    assert f"{sum(map(len, expected_rows(cfg).values()))} rows written" in first.stdout, first.stdout
    again = cli(["sink", "sync", "--config", str(cfg)], cli_env)
    assert again.returncode == 0 and " 0 rows written" in again.stdout and " 0 deleted" in again.stdout, again
    assert actual_rows(cfg) == expected_rows(cfg)

    # A second daemon writes into the same collection; neither touches the other's rows.
    cfg_b = _config(tmp_path / "b", "beta", e2e_backend, collection, default_model)
    with running(cfg_b, cli_env):
        (tmp_path / "b" / "inbox-beta" / "glacier.md").write_text(DOCS["glacier.md"])
        synced(cfg_b, lambda s: store_sources(s) == {"inbox-beta/glacier.md"})
    assert actual_rows(cfg_b) == expected_rows(cfg_b)
    assert actual_rows(cfg) == expected_rows(cfg)

    # Searching the sink sees every daemon's rows, and the source prefix narrows it.
    found = cli(
        ["search", "--config", str(cfg), "--sink", collection, "--json", "valleys carved by ice"], cli_env
    )
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert {(r["source"], r["daemon"]) for r in results[:2]} == {
        ("inbox-beta/glacier.md", "beta"),
        ("inbox-alpha/ice.md", "alpha"),
    }
    narrowed = cli(
        [
            "search",
            "--config",
            str(cfg),
            "--sink",
            collection,
            "--source-prefix",
            "inbox-alpha/",
            "--json",
            "ice",
        ],
        cli_env,
    )
    assert narrowed.returncode == 0, narrowed.stderr
    got = json.loads(narrowed.stdout)["results"]
    assert got and {r["daemon"] for r in got} == {"alpha"}
