"""Opening a sink by its ``type``: a missing client, a name the engine refuses, a key file."""

from __future__ import annotations

import importlib.util
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
from sink_support import DIMS, FP
from support import write_config

from daemon import cli
from daemon.config import SinkConfig
from daemon.errors import ConfigError, SinkError
from daemon.sinks.base import read_secret
from daemon.sinks.registry import ENGINES, check_sinks, open_sink

REAL_FIND_SPEC = importlib.util.find_spec


def without(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``module`` look not installed to the registry's look-up."""

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == module else REAL_FIND_SPEC(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_every_type_opens_its_own_engine(tmp_path: Path) -> None:
    for kind, engine in ENGINES.items():
        cfg = SinkConfig(name="s", type=kind, uri=str(tmp_path / f"{kind}.db"), collection="docs")
        sink = open_sink(cfg, daemon="alpha", dimensions=DIMS, fingerprint=FP)
        assert type(sink).__name__ == engine.cls
        assert sink.name == "s" and sink.daemon == "alpha" and not sink.connected


def test_a_missing_client_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    without("qdrant_client", monkeypatch)
    sinks = [
        SinkConfig(name="a", type="lancedb", uri=str(tmp_path / "lance"), collection="docs"),
        SinkConfig(name="b", type="qdrant", uri="http://qdrant:6333", collection="docs"),
    ]
    with pytest.raises(ConfigError) as info:
        check_sinks(sinks)
    assert info.value.field == "sink[1].type"
    assert "pip install 'embedd[qdrant]'" in info.value.reason


def test_milvus_lite_needs_its_own_package_but_a_server_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    without("milvus_lite", monkeypatch)
    check_sinks([SinkConfig(name="s", type="milvus", uri="http://milvus:19530", collection="docs")])
    with pytest.raises(ConfigError, match=r"embedd\[milvus\]"):
        check_sinks([SinkConfig(name="s", type="milvus", uri="/srv/milvus.db", collection="docs")])


@pytest.mark.parametrize("args", [["sink", "sync"], ["search", "--sink", "docs", "x"], []])
def test_the_cli_and_the_daemon_exit_2_before_loading_anything(
    args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    without("chromadb", monkeypatch)
    cfg = write_config(
        tmp_path,
        tmp_path / "no-model.gguf",  # were it loaded, the exit code would be 3
        extra='[[sink]]\ntype = "chroma"\nuri = "http://chroma:8000"\ncollection = "docs"\n',
    )
    assert cli.main([*args, "--config", str(cfg)]) == 2
    out = capsys.readouterr()
    assert "pip install 'embedd[chroma]'" in out.out + out.err


def test_sink_sync_refuses_while_the_daemon_holds_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running daemon mirrors from memory, ahead of the saved file; a sync from the file
    could roll its rows back, so `sink sync` waits for it to stop (exit 4, nothing written)."""
    from daemon.store.io import StoreLock
    from daemon.store.store import lock_path

    sink_folder = tmp_path / "lance"
    cfg = write_config(
        tmp_path,
        tmp_path / "no-model.gguf",
        extra=f'[[sink]]\ntype = "lancedb"\nuri = "{sink_folder}"\ncollection = "docs"\n',
    )
    store = tmp_path / "data" / "embeddings.json"
    store.parent.mkdir()
    lock = StoreLock.acquire(lock_path(store))
    try:
        assert cli.main(["sink", "sync", "--config", str(cfg)]) == 4
    finally:
        lock.release()
    out = capsys.readouterr()
    assert "keeps sink 'docs' in step itself" in out.out + out.err
    assert not sink_folder.exists()


def test_a_collection_name_the_engine_refuses_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        check_sinks([SinkConfig(name="s", type="chroma", uri=str(tmp_path / "c"), collection="kb")])
    assert info.value.field == "sink[0].collection"
    assert "3 to 512 characters" in info.value.reason
    check_sinks([SinkConfig(name="s", type="milvus", uri=str(tmp_path / "m.db"), collection="kb")])


def test_the_api_key_file_is_read_at_start_and_never_shown(tmp_path: Path) -> None:
    key = tmp_path / "qdrant.key"
    key.write_text("s3cret-key\n")
    cfg = SinkConfig(name="s", type="qdrant", uri="http://q:6333", collection="docs", api_key_file=key)
    assert read_secret(cfg) == "s3cret-key"
    check_sinks([cfg])
    key.write_text("\n")
    with pytest.raises(ConfigError, match="the key file is empty"):
        check_sinks([cfg])
    key.unlink()
    with pytest.raises(ConfigError) as info:
        check_sinks([cfg])
    assert info.value.field == "sink[0].api_key_file"
    assert "cannot read the key file" in info.value.reason
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(cfg)
    plain = SinkConfig(name="s", type="qdrant", uri="http://q:6333", collection="docs", token="tok")
    assert read_secret(plain) == "tok"


def test_each_engine_client_is_imported_by_its_own_module_only() -> None:
    daemon_dir = Path(cli.__file__).parent
    owners = {
        "pymilvus": "sinks/milvus.py",
        "milvus_lite": "sinks/milvus.py",
        "grpc": "sinks/milvus.py",
        "qdrant_client": "sinks/qdrant.py",
        "chromadb": "sinks/chroma.py",
        "lancedb": "sinks/lancedb.py",
        "pyarrow": "sinks/lancedb.py",
    }
    for path in sorted(daemon_dir.rglob("*.py")):
        rel = path.relative_to(daemon_dir).as_posix()
        for line in path.read_text().splitlines():
            words = line.strip().replace(",", " ").split()
            if len(words) < 2 or words[0] not in ("import", "from"):
                continue
            top = words[1].split(".")[0]
            if top in owners:
                assert rel == owners[top], f"{rel} imports {top}: only {owners[top]} may"


def test_a_qdrant_server_that_does_not_answer_is_a_sink_error() -> None:
    from daemon.errors import SinkError

    cfg = SinkConfig(name="q", type="qdrant", uri="http://127.0.0.1:1", collection="docs", timeout_s=1.0)
    sink = open_sink(cfg, daemon="alpha", dimensions=DIMS, fingerprint=FP)
    with pytest.raises(SinkError, match="sink q: ") as info:
        sink.connect()
    assert not sink.connected and info.value.reason


def test_a_chroma_folder_is_written_by_one_process_at_a_time(tmp_path: Path) -> None:
    """chromadb lets two processes write one folder, each missing the other's rows (found in
    review): embedd holds `<folder>.lock` while connected, so another process waits and
    retries. Sinks of one process share the folder (chromadb shares its engine there)."""
    import subprocess
    import sys

    pytest.importorskip("chromadb")
    folder = tmp_path / "chroma"
    cfg = SinkConfig(name="s", type="chroma", uri=str(folder), collection="docs")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(tmp_path / "chroma.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        sink = open_sink(cfg, daemon="alpha", dimensions=DIMS, fingerprint=FP)
        with pytest.raises(SinkError, match=r"open in another process .*chroma\.lock"):
            sink.connect()
        assert not sink.connected
    finally:
        holder.communicate("", timeout=30)
    first = open_sink(cfg, daemon="alpha", dimensions=DIMS, fingerprint=FP)
    second = open_sink(cfg, daemon="beta", dimensions=DIMS, fingerprint=FP)
    first.connect()
    second.connect()
    try:
        assert first.connected and second.connected and second.count() == 0
    finally:
        first.close()
        second.close()
