"""``[chunking] context_prefix`` with the real daemon and model: a store built without it keeps
working as it is, turning it on is refused until ``--reembed``, which then embeds the prefix."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from support import Daemon, read_store, wait_for, write_config

SECTION = "\n\n".join(
    f"Step {i} of the glacier survey: measure the ice edge with the laser and log it. " * 3 for i in range(6)
)
DOC = f"# Field guide\n\n## Glacier survey\n\n{SECTION}\n"


def _store_where(path: Path, check: Any) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        store = read_store(path)
        return store if store is not None and check(store) else None

    return wait_for(probe, what="the store to reach the expected state")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_an_old_store_works_until_reembed_then_the_prefix_is_embedded(
    tmp_path: Path, cli_env: dict[str, str], default_model: Path
) -> None:
    cfg = write_config(tmp_path, default_model)
    store_path = tmp_path / "data" / "embeddings.json"
    (tmp_path / "inbox" / "guide.md").write_text(DOC)
    daemon = Daemon(cfg, cli_env).ready()
    old = _store_where(store_path, lambda s: s["count"] >= 3)
    assert daemon.stop() == 0
    assert "context_prefix" not in old["fingerprint"]
    assert all(e["metadata"]["hash"] == sha(e["content"]) for e in old["embeddings"])

    # The option written out as off: the store without the field is that store, opened as it is.
    cfg = write_config(tmp_path, default_model, extra="[chunking]\ncontext_prefix = false\n")
    before = store_path.read_bytes()
    daemon = Daemon(cfg, cli_env).ready()
    assert daemon.stop() == 0
    assert read_store(store_path) == read_store_bytes(before)

    cfg = write_config(tmp_path, default_model, extra="[chunking]\ncontext_prefix = true\n")
    refused = Daemon(cfg, cli_env)
    assert refused.proc.wait(timeout=120) == 5
    refused.stop()
    message = refused.events("fingerprint_mismatch")[0]["error"]
    assert "context_prefix: False -> True" in message and "--reembed" in message

    daemon = Daemon(cfg, cli_env, "--reembed").ready()
    try:
        new = _store_where(
            store_path, lambda s: s["fingerprint"].get("context_prefix") is True and s["count"] >= 3
        )
    finally:
        assert daemon.stop() == 0
    contents = [e["content"] for e in new["embeddings"]]
    assert contents == [e["content"] for e in old["embeddings"]]  # content is the chunk's own text
    first, *later = new["embeddings"]
    assert first["content"].startswith("# Field guide") and first["metadata"]["hash"] == sha(first["content"])
    assert later
    for entry in later:  # chunks that do not begin with their heading were embedded with the path
        assert entry["metadata"]["hash"] == sha(f"Field guide > Glacier survey\n\n{entry['content']}")
    by_content = {e["content"]: e["embedding"] for e in old["embeddings"]}
    assert all(e["embedding"] != by_content[e["content"]] for e in later)


def read_store_bytes(data: bytes) -> dict[str, Any]:
    import json

    doc: dict[str, Any] = json.loads(data)
    return doc
