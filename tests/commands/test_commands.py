"""The user-facing commands next to the daemon: init, status, search, export, verify.

End-to-end tests run the real ``embedd`` CLI in a subprocess against a store built by the
real daemon with the real default model; the store is built once for the module. Unit tests
of one piece (lock probing, ranking, export's streaming) run in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import Daemon, cli, make_pdf, read_store, wait_for, write_config

from daemon import cli as embedd_cli
from daemon.commands import export as export_mod
from daemon.commands import init as starter
from daemon.commands import status
from daemon.commands.export import export_jsonl
from daemon.commands.verify import verify
from daemon.config import DEFAULTS, WATCH_DEFAULTS, load_config
from daemon.query.hit import snippet
from daemon.query.rank import top_k
from daemon.store.format import (
    CLOSE,
    NEWLINE,
    SEP,
    Fingerprint,
    Header,
    content_hash,
    encode_entry,
    encode_header,
    entry_id,
)
from daemon.store.io import StoreLock
from daemon.store.store import Store, lock_path

# Distinct topics, so a query drawn from one document has one right answer.
DOCUMENTS = {
    "bread.md": (
        "# Baking sourdough bread\n\n"
        "A sourdough loaf needs only flour, water, salt and a lively starter. Mix the dough, "
        "let it rest, then fold it every half hour. The dough should rise slowly overnight in "
        "a cool kitchen before it is shaped and baked in a very hot oven with steam."
    ),
    "volcanoes.txt": (
        "Volcanoes erupt when molten magma rises through cracks in the Earth's crust. Some "
        "eruptions pour out slow rivers of lava, others explode and throw ash clouds high into "
        "the atmosphere, grounding aeroplanes far away."
    ),
    "chess.md": (
        "Chess openings set up the middle game. The Sicilian Defence answers 1.e4 with c5 and "
        "leads to sharp, unbalanced positions; the Queen's Gambit offers a pawn to gain control "
        "of the centre. Castling early keeps the king safe."
    ),
    "taxes.txt": (
        "Filing an income tax return: collect your payslips and receipts, declare every source "
        "of income, claim the deductions you are entitled to and submit the form to the revenue "
        "office before the deadline to avoid a penalty."
    ),
    "sub/bicycles.md": (
        "Maintaining a bicycle: keep the chain clean and oiled, check the tyre pressure every "
        "week, and adjust the brake pads when they wear down. A well-tuned derailleur shifts "
        "gears smoothly."
    ),
}
PDF_PAGES = [
    "Glaciers are slow rivers of ice that carve valleys as they move downhill.",
    "",
    "Lighthouses guide ships at night with a rotating beam of light from the coast.",
]
SOURCES = {f"inbox/{name}" for name in DOCUMENTS} | {"inbox/guide.pdf"}


@dataclass(frozen=True)
class Indexed:
    """A workspace whose store the real daemon built and then left (stopped with SIGTERM)."""

    root: Path
    config: Path
    store_path: Path
    model: Path

    @property
    def store(self) -> dict[str, Any]:
        store = read_store(self.store_path)
        assert store is not None
        return store


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return cli(args, env, cwd=cwd)


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fill(inbox: Path) -> None:
    for name, text in DOCUMENTS.items():
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_text(text + "\n")
    (inbox / "guide.pdf").write_bytes(make_pdf(PDF_PAGES))


def _wait_for_sources(path: Path, sources: set[str]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        store = read_store(path)
        if store is None:
            return None
        return store if set(store["files"]) >= sources else None

    return wait_for(probe, what=f"the store to hold {sorted(sources)}")


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory, default_model: Path, cli_env: dict[str, str]
) -> Indexed:
    root = tmp_path_factory.mktemp("indexed")
    cfg = write_config(root, default_model)
    _fill(root / "inbox")
    store_path = root / "data" / "embeddings.json"
    daemon = Daemon(cfg, cli_env).ready()
    try:
        _wait_for_sources(store_path, SOURCES)
    finally:
        assert daemon.stop() == 0
    return Indexed(root, cfg, store_path, default_model)


# ----- help, version, exit codes -------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["model"], ["model", "build"], ["init"], ["status"], ["search"], ["export"], ["verify"]],
)
def test_every_command_has_help_with_examples_and_a_version(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as help_exit:
        embedd_cli.main([*command, "--help"])
    assert help_exit.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and "embedd" in text
    with pytest.raises(SystemExit) as version_exit:
        embedd_cli.main([*command, "--version"])
    assert version_exit.value.code == 0
    assert capsys.readouterr().out.startswith("embedd ")


def test_top_level_help_documents_every_command_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        embedd_cli.main(["--help"])
    text = capsys.readouterr().out
    for command in ("init", "status", "search", "export", "verify"):
        assert f"embedd {command}" in text
    exit_codes = text[text.index("exit codes:") :]
    for code in ("0", "1", "2", "3", "4", "5", "130"):
        assert f"  {code} " in exit_codes


def test_commands_other_than_init_require_a_config(cli_env: dict[str, str], tmp_path: Path) -> None:
    for command in (["status"], ["search", "bread"], ["export"], ["verify"]):
        proc = _run(command, cli_env, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "--config is required" in proc.stderr


# ----- init ------------------------------------------------------------------------------


def test_init_writes_a_commented_config_that_loads(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "docs").mkdir()
    proc = _run(["init", "docs", "notes"], cli_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "config.toml"
    assert f"wrote {path}" in proc.stdout
    assert "notes  (does not exist yet" in proc.stdout
    assert "embedd model build --config" in proc.stdout  # the default model is not built here

    config = load_config(path)
    assert [w.name for w in config.watches] == ["docs", "notes"]
    assert [w.path for w in config.watches] == [tmp_path / "docs", tmp_path / "notes"]
    assert config.store.path == tmp_path / "data" / "embeddings.json"
    assert config.model.path == tmp_path / str(DEFAULTS["model"]["path"])

    text = path.read_text()
    data = tomllib.loads(text)
    for table, keys in DEFAULTS.items():
        written = {k: v for k, v in keys.items() if v is not None}  # computed defaults: commented out
        assert set(data[table]) == set(written), table  # every key written, with its default
        assert all(data[table][k] == v for k, v in written.items())
    assert '# socket = "data/embeddings.sock"' in text
    assert config.serve.socket == tmp_path / "data" / "embeddings.sock"
    lines = text.splitlines()
    # Each key of the first tables has a comment right above it.
    for key in ("threads", "normalize", "gpu_layers", "size", "overlap", "include", "debounce_ms", "nice"):
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[i - 1].startswith("# "), key


def test_init_never_overwrites_and_refuses_an_invalid_layout(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    proc = _run(["init", "docs"], cli_env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and str(path) in proc.stderr
    assert path.read_text() == "# mine\n"

    # Watching the config's own folder would put the default store inside it: refused, nothing written.
    proc = _run(["init", ".", "--config", "other.toml"], cli_env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "store.path" in proc.stderr and "--store" in proc.stderr
    assert not (tmp_path / "other.toml").exists()

    # ... which --store fixes; absolute paths outside the config's folder stay absolute.
    outside = tmp_path.parent / f"{tmp_path.name}-store" / "e.json"
    proc = _run(["init", ".", "--config", "sub/other.toml", "--store", str(outside)], cli_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = load_config(tmp_path / "sub" / "other.toml")
    assert config.store.path == outside
    assert config.watches[0].path == tmp_path and config.watches[0].name == str(tmp_path)


def test_every_config_key_has_a_comment_in_the_starter() -> None:
    for table, keys in DEFAULTS.items():
        assert set(keys) <= set(starter.COMMENTS[table]), table
    assert set(WATCH_DEFAULTS) <= set(starter.COMMENTS["watch"])


# ----- status ------------------------------------------------------------------------------


def test_status_reports_the_store(indexed: Indexed, cli_env: dict[str, str]) -> None:
    store = indexed.store
    doc = _json(_run(["status", "--config", str(indexed.config), "--json"], cli_env))
    assert doc["store"]["exists"] is True
    assert doc["store"]["layout"] == "lines"
    assert doc["store"]["files"] == len(SOURCES)
    assert doc["store"]["chunks"] == store["count"] == len(store["embeddings"])
    assert doc["store"]["model"] == "all-MiniLM-L6-v2" and doc["store"]["dimensions"] == 384
    assert doc["store"]["bytes"] == indexed.store_path.stat().st_size
    assert doc["store"]["updated"] == store["updated"]
    assert doc["store"]["fingerprint"] == store["fingerprint"]
    assert doc["store"]["fingerprint"]["model_sha256"] == _sha256(indexed.model)
    assert doc["daemon"] == {"running": False, "pid": None}
    assert doc["model"]["matches_store"] is True and doc["differences"] == []

    proc = _run(["status", "--config", str(indexed.config)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "not running" in proc.stdout
    assert f"chunks      {store['count']}" in proc.stdout
    assert "matches the store" in proc.stdout


def test_status_before_the_first_start(tmp_path: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    cfg = write_config(tmp_path, default_model)
    proc = _run(["status", "--config", str(cfg)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "does not exist yet" in proc.stdout
    doc = _json(_run(["status", "--config", str(cfg), "--json"], cli_env))
    assert doc["store"]["exists"] is False and doc["store"]["chunks"] == 0
    assert doc["daemon"]["running"] is False
    assert not (tmp_path / "data").exists(), "status creates nothing"


def test_status_of_a_foreign_layout_parses_it_whole(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, tmp_path / "no-model.gguf"))
    config.store.path.parent.mkdir()
    config.store.path.write_text(json.dumps(_walkthrough_doc(), indent=2))
    found = status.store_status(config)
    assert (found.layout, found.chunks, found.files, found.dimensions) == ("other", 2, 1, 4)
    assert found.fingerprint is None and found.model_sha256 is None and found.differences == ()
    assert found.to_json()["model"]["exists"] is False


def test_lock_state_sees_a_holder_without_taking_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "embeddings.json"
    assert status.lock_state(store) == status.LockState(False, None)
    assert not lock_path(store).exists(), "probing creates no lock file"
    for proc_locks in (status._PROC_LOCKS, tmp_path / "no-proc-locks"):  # and the flock fallback
        monkeypatch.setattr(status, "_PROC_LOCKS", proc_locks)
        lock = StoreLock.acquire(lock_path(store))
        try:
            assert status.lock_state(store) == status.LockState(True, os.getpid())
        finally:
            lock.release()
        assert status.lock_state(store) == status.LockState(False, os.getpid())
        # The probe gave the lock back: a daemon can take it.
        StoreLock.acquire(lock_path(store)).release()


# ----- search --------------------------------------------------------------------------------


QUERIES = {
    "how long should the dough rise before baking the loaf": "inbox/bread.md",
    "ash clouds from an erupting volcano": "inbox/volcanoes.txt",
    "which chess opening should I play against e4": "inbox/chess.md",
    "deadline for submitting my income tax return": "inbox/taxes.txt",
    "how do I oil a bike chain and fix the brakes": "inbox/sub/bicycles.md",
    "ships guided by a beam of light at night": "inbox/guide.pdf",
}


def test_search_finds_the_document_a_query_comes_from(indexed: Indexed, cli_env: dict[str, str]) -> None:
    for query, source in QUERIES.items():
        doc = _json(_run(["search", "--config", str(indexed.config), query, "-k", "3", "--json"], cli_env))
        results = doc["results"]
        assert [r["rank"] for r in results] == [1, 2, 3]
        assert results[0]["source"] == source, (query, [r["source"] for r in results])
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    lighthouse = _json(
        _run(["search", "--config", str(indexed.config), "--json", "-k", "1", "lighthouse beam"], cli_env)
    )["results"][0]
    assert lighthouse["page"] == 3 and "Lighthouses" in lighthouse["content"]
    store_ids = {e["id"] for e in indexed.store["embeddings"]}
    assert lighthouse["id"] in store_ids


def test_search_prints_source_page_chunk_score_and_a_snippet(
    indexed: Indexed, cli_env: dict[str, str]
) -> None:
    proc = _run(
        ["search", "--config", str(indexed.config), "glaciers", "carving", "valleys", "-k", "2"], cli_env
    )
    assert proc.returncode == 0, proc.stderr
    first, text = proc.stdout.splitlines()[:2]
    # The score is hybrid's fused one (issue 17): from 0 to 1, exactly 1 for the best hit on both sides.
    assert re.match(r" 1\. (0\.\d{4}|1\.0000)  ", first), first
    assert "inbox/guide.pdf  page 1  chunk 0" in first
    assert text.strip().startswith("Glaciers are slow rivers of ice")


def test_search_refuses_a_store_built_with_another_model(
    indexed: Indexed, f16_model: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    cfg = tmp_path / "f16.toml"
    cfg.write_text(
        f'[model]\npath = "{f16_model}"\n[store]\npath = "{indexed.store_path}"\n'
        f'[[watch]]\npath = "{indexed.root / "inbox"}"\n'
    )
    proc = _run(["search", "--config", str(cfg), "bread"], cli_env)
    assert proc.returncode == 5, proc.stderr
    assert _sha256(indexed.model) in proc.stderr and _sha256(f16_model) in proc.stderr
    assert str(f16_model) in proc.stderr


def test_search_without_a_store_or_model_fails_clearly(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    proc = _run(["search", "--config", str(cfg), "bread"], cli_env)
    assert proc.returncode == 1 and "no store at" in proc.stderr

    missing = write_config(tmp_path / "b", tmp_path / "nope.gguf")
    empty = Store.open(
        tmp_path / "b" / "data" / "embeddings.json",
        model="m",
        dimensions=384,
        fingerprint=Fingerprint("0" * 64, "mean", True, 500, 50),
    )
    empty.save()
    empty.close()
    proc = _run(["search", "--config", str(missing), "bread"], cli_env)
    assert proc.returncode == 3 and "nope.gguf" in proc.stderr


def test_large_matrices_are_scored_in_two_halves_with_the_same_numbers() -> None:
    from daemon.query import rank

    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((rank.SPLIT_ROWS + 1001, 384)).astype(np.float32)
    query = rng.standard_normal(384).astype(np.float32)
    split = rank.scores_of(matrix, query)
    assert rank._pool() is not None or len(os.sched_getaffinity(0)) < 2
    assert np.array_equal(split, np.einsum("ij,j->i", matrix, query))
    assert [r for r, _ in top_k(matrix, query, 10, normalized=False)] == list(
        np.argsort(-(matrix @ query) / np.linalg.norm(matrix, axis=1))[:10]
    )


def test_top_k_ranks_by_cosine_with_or_without_normalised_rows() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((50, 16)).astype(np.float32)
    query = rng.standard_normal(16).astype(np.float32)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = np.argsort(-(unit @ (query / np.linalg.norm(query))))[:5].tolist()
    assert [row for row, _ in top_k(matrix, query, 5, normalized=False)] == expected
    assert [row for row, _ in top_k(unit, query * 3, 5, normalized=True)] == expected
    assert len(top_k(unit, query, 500, normalized=True)) == 50
    assert top_k(unit[:0], query, 5, normalized=True) == []
    assert snippet("a  b\n c") == "a b c"
    assert snippet("word " * 100, 20).endswith(" …") and len(snippet("word " * 100, 20)) <= 22


# ----- export ----------------------------------------------------------------------------------


def _check_export_lines(lines: list[str], store: dict[str, Any]) -> None:
    assert len(lines) == store["count"] == len(store["embeddings"])
    by_id = {e["id"]: e for e in store["embeddings"]}
    seen = set()
    for line in lines:
        doc = json.loads(line)
        assert list(doc) == ["id", "vector", "metadata"]
        assert len(doc["vector"]) == 384
        entry = by_id[doc["id"]]
        assert doc["vector"] == entry["embedding"]  # the same numbers, to the last digit
        meta = doc["metadata"]
        # A Markdown chunk's heading path follows the walkthrough's keys; a text file's has none.
        structure = [key for key in ("section", "title") if key in entry["metadata"]]
        assert list(meta) == ["content", "source", "page", "chunk", "timestamp", "hash", *structure]
        assert all(meta[key] == entry["metadata"][key] for key in structure)
        assert meta["content"] == entry["content"] and meta["timestamp"] == entry["timestamp"]
        assert meta["hash"] == entry["metadata"]["hash"] == content_hash(meta["content"])
        assert (meta["source"], meta["page"], meta["chunk"]) == (
            entry["metadata"]["source"],
            entry["metadata"]["page"],
            entry["metadata"]["chunk"],
        )
        seen.add(doc["id"])
    assert seen == set(by_id)


def test_export_writes_one_json_line_per_entry(
    indexed: Indexed, cli_env: dict[str, str], tmp_path: Path
) -> None:
    proc = _run(["export", "--config", str(indexed.config), "--format", "jsonl"], cli_env)
    assert proc.returncode == 0, proc.stderr
    _check_export_lines(proc.stdout.splitlines(), indexed.store)

    out = tmp_path / "out" / "vectors.jsonl"
    out.parent.mkdir()
    proc = _run(["export", "--config", str(indexed.config), "--output", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert f"exported {indexed.store['count']} entries to {out}" in proc.stderr
    _check_export_lines(out.read_text().splitlines(), indexed.store)
    assert [p.name for p in out.parent.iterdir()] == ["vectors.jsonl"], "no temp file left behind"

    before = indexed.store_path.read_bytes()
    proc = _run(["export", "--config", str(indexed.config), "-o", str(indexed.store_path)], cli_env)
    assert proc.returncode == 2 and "is the store itself" in proc.stderr
    assert indexed.store_path.read_bytes() == before


def _synthetic_store(path: Path, n: int, dims: int = 384) -> None:
    """A store in our layout written line by line, like the daemon's, without holding it in memory."""
    rng = np.random.default_rng(n)
    fp = Fingerprint("ab" * 32, "mean", True, 500, 50)
    header = Header("m", dims, "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z", fp)
    with path.open("wb") as f:
        f.write(encode_header(header, n) + NEWLINE)
        for i in range(n):
            text = f"entry {i} " + "lorem ipsum dolor sit amet " * 18
            source = f"inbox/f{i // 10}.md"
            f.write(
                encode_entry(
                    entry_id(source, i % 10),
                    content=text,
                    source=source,
                    page=None,
                    chunk=i % 10,
                    hash_=content_hash(text),
                    extra=None,
                    vector=rng.standard_normal(dims).astype(np.float32),
                    timestamp=1_700_000_000_000 + i,
                )
            )
            f.write(SEP if i < n - 1 else NEWLINE)
        f.write(CLOSE)


def _export_peak_kib(store: Path, env: dict[str, str]) -> int:
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from daemon.commands.export import export_jsonl\n"
        "with open('/dev/null', 'wb') as out:\n"
        "    stats = export_jsonl(Path(sys.argv[1]), out)\n"
        "assert stats.streamed\n"
        "print(stats.entries, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(store)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    _entries, peak = proc.stdout.split()
    return int(peak)


def test_export_memory_does_not_grow_with_the_store(tmp_path: Path, cli_env: dict[str, str]) -> None:
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    _synthetic_store(small, 1_000)
    _synthetic_store(large, 20_000)  # about 100 MB of JSON; its vectors alone are 30 MB as float32
    growth_kib = _export_peak_kib(large, cli_env) - _export_peak_kib(small, cli_env)
    # Loading the large store whole costs about 55 MB more than the small one.
    assert growth_kib < 10 * 1024, f"peak memory grew by {growth_kib} KiB for 19,000 more entries"


@pytest.fixture
def no_loader(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every whole-store loader fail, to prove export streams our layout."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the full loader was called")

    monkeypatch.setattr(Store, "open_readonly", refuse)
    monkeypatch.setattr("daemon.store.load.load", refuse)
    monkeypatch.setattr("daemon.store.format.parse_document", refuse)
    yield


def test_export_streams_our_layout_line_by_line(tmp_path: Path, no_loader: None) -> None:
    path = tmp_path / "s.json"
    _synthetic_store(path, 30, dims=8)
    with (tmp_path / "out.jsonl").open("wb") as out:
        stats = export_jsonl(path, out)
    assert stats == export_mod.ExportStats(30, streamed=True)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 30 and all(len(json.loads(line)["vector"]) == 8 for line in lines)


def _walkthrough_doc() -> dict[str, Any]:
    """A store as the reference walkthrough writes it: pretty-printed, no fingerprint, no files."""
    return {
        "version": "1.0",
        "model": "m",
        "dimensions": 4,
        "count": 2,
        "created": "2025-01-02T03:04:05.678Z",
        "embeddings": [
            {
                "id": f"doc_{i}",
                "content": f"text {i}",
                "metadata": {"source": "ml.pdf", "page": i + 1, "loc": {"lines": {"from": 1}}},
                "embedding": [0.5, -0.25, 0.125, float(i)],
                "timestamp": 1_234_567_890 + i,
            }
            for i in range(2)
        ],
    }


def test_export_of_a_foreign_layout_loads_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "walkthrough.json"
    path.write_text(json.dumps(_walkthrough_doc(), indent=2))
    with (tmp_path / "out.jsonl").open("wb") as out:
        stats = export_jsonl(path, out)
    assert stats == export_mod.ExportStats(2, streamed=False)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["id"] for d in lines] == ["doc_0", "doc_1"]
    assert lines[1]["vector"] == [0.5, -0.25, 0.125, 1.0]
    assert lines[1]["metadata"]["page"] == 2 and lines[1]["metadata"]["loc"] == {"lines": {"from": 1}}
    assert lines[1]["metadata"]["hash"] == content_hash("text 1")


# ----- verify ---------------------------------------------------------------------------------


def test_verify_passes_on_a_store_the_daemon_left(indexed: Indexed, cli_env: dict[str, str]) -> None:
    proc = _run(["verify", "--config", str(indexed.config)], cli_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"OK: {len(SOURCES)} files, {indexed.store['count']} chunks")
    doc = json.loads(_run(["verify", "--config", str(indexed.config), "--json"], cli_env).stdout)
    assert doc["ok"] is True and doc["differences"] == [] and doc["selected_files"] == len(SOURCES)


def test_verify_finds_tampered_entries(indexed: Indexed, tmp_path: Path) -> None:
    # A copy of the real store beside it, checked against the same (untouched) folder.
    lines = indexed.store_path.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[1].rstrip(b",\n"))
    entry["content"] = entry["content"] + " (edited by hand)"
    lines[1] = json.dumps(entry, separators=(",", ":")).encode() + b",\n"
    lines.insert(2, lines[3])  # a duplicated entry: same id, same chunk, one more than declared
    tampered = indexed.root / "data" / "tampered.json"
    tampered.write_bytes(b"".join(lines))
    cfg = indexed.root / "tampered.toml"
    cfg.write_text(indexed.config.read_text().replace("data/embeddings.json", "data/tampered.json"))

    report = verify(load_config(cfg))
    kinds = sorted(d.kind for d in report.differences)
    assert kinds == ["count_mismatch", "duplicate_chunk", "duplicate_id", "hash_mismatch"], report
    hashed = next(d for d in report.differences if d.kind == "hash_mismatch")
    assert hashed.source == entry["metadata"]["source"]


def test_verify_finds_a_changed_chunking(indexed: Indexed) -> None:
    cfg = indexed.root / "chunking.toml"
    cfg.write_text(indexed.config.read_text() + "\n[chunking]\nsize = 300\noverlap = 30\n")
    report = verify(load_config(cfg))
    assert [d.kind for d in report.differences] == ["fingerprint_mismatch", "fingerprint_mismatch"]
    assert "chunk_size: store 500, config 300" in report.differences[0].detail


# ----- while the daemon runs, and after ------------------------------------------------------------


def test_commands_beside_a_running_daemon(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    for name in ("bread.md", "volcanoes.txt", "chess.md"):
        (inbox / name).write_text(DOCUMENTS[name] + "\n")
    daemon = Daemon(cfg, cli_env).ready()
    try:
        _wait_for_sources(store_path, {"inbox/bread.md", "inbox/volcanoes.txt", "inbox/chess.md"})
        running = _json(_run(["status", "--config", str(cfg), "--json"], cli_env))
        # The daemon's own answer over its socket: its state beside what the store says.
        assert running["daemon"]["running"] and running["daemon"]["pid"] == daemon.proc.pid
        assert running["daemon"]["phase"] == "ready" and running["daemon"]["queued_files"] == 0
        text = _run(["status", "--config", str(cfg)], cli_env).stdout
        assert f"running (pid {daemon.proc.pid})" in text and "ready, 0 files queued" in text

        # Search is answered by the daemon; without it, it reads the store without its lock.
        found = _json(_run(["search", "--config", str(cfg), "--json", "lava and magma"], cli_env))
        assert found["results"][0]["source"] == "inbox/volcanoes.txt"
        cold = _json(
            _run(["search", "--config", str(cfg), "--json", "--no-daemon", "lava and magma"], cli_env)
        )
        assert [h["id"] for h in cold["results"]] == [h["id"] for h in found["results"]]
        (inbox / "taxes.txt").write_text(DOCUMENTS["taxes.txt"] + "\n")
        daemon.wait_event("file_indexed", source="inbox/taxes.txt")
        _wait_for_sources(store_path, {"inbox/taxes.txt"})
        assert daemon.proc.poll() is None
        assert not daemon.events("store_save_failed") and not daemon.events("store_locked")
    finally:
        assert daemon.stop() == 0

    stopped = _json(_run(["status", "--config", str(cfg), "--json"], cli_env))
    assert stopped["daemon"] == {"running": False, "pid": None}
    assert stopped["store"]["files"] == 4
    assert _run(["verify", "--config", str(cfg)], cli_env).returncode == 0

    # Changes made while no daemon watches: verify lists each, and exits 1.
    with (inbox / "bread.md").open("a") as f:
        f.write("Add seeds to the crust if you like.\n")
    (inbox / "chess.md").unlink()
    (inbox / "new.md").write_text("A note written while the daemon was down.\n")
    proc = _run(["verify", "--config", str(cfg)], cli_env)
    assert proc.returncode == 1
    assert "changed_file          inbox/bread.md: changed since it was indexed: size" in proc.stdout
    assert "missing_file          inbox/chess.md" in proc.stdout
    assert "unindexed_file        inbox/new.md" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("FAILED: 3 differences")
    doc = json.loads(_run(["verify", "--config", str(cfg), "--json"], cli_env).stdout)
    assert doc["ok"] is False
    assert {(d["kind"], d["source"]) for d in doc["differences"]} == {
        ("changed_file", "inbox/bread.md"),
        ("missing_file", "inbox/chess.md"),
        ("unindexed_file", "inbox/new.md"),
    }
    assert read_store(store_path) is not None
