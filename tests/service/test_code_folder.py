"""A source-code folder under the real daemon (`preset = "code"`): source split along its syntax
with the symbols in each chunk's section, lock files, minified and binary files skipped with a
reason in the log, node_modules and what the .gitignore ignores left out."""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from pathlib import Path

from support import Daemon, cli, read_store, wait_for, write_config


def test_a_code_folder(tmp_path: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    cfg = tmp_path / "config.toml"
    write_config(tmp_path, default_model, watch="src")
    cfg.write_text(cfg.read_text().replace('path = "src"\n', 'path = "src"\npreset = "code"\n'))
    src, store_path = tmp_path / "src", tmp_path / "data" / "embeddings.json"
    (src / "decoder.py").write_bytes(Path(json.decoder.__file__).read_bytes())
    (src / "README.md").write_text("# Decoder\n\nA copy of the standard library's JSON decoder.\n")
    (src / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    (src / "app.min.js").write_text("var a=1;")
    (src / "data.json").write_text('{"rows": [' + '{"a": 1}, ' * 2000 + "{}]}")
    (src / "blob.py").write_bytes(b"import os\n\x00\x01")
    (src / "node_modules" / "pkg").mkdir(parents=True)
    (src / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1;\n")
    (src / ".gitignore").write_text("build/\n")
    (src / "build").mkdir()
    (src / "build" / "gen.py").write_text("x = 1\n")
    daemon = Daemon(cfg, cli_env).ready()
    try:
        for name in ("package-lock.json", "app.min.js", "data.json", "blob.py"):
            (event,) = daemon.wait_event("file_skipped", source=f"src/{name}")
            assert "not indexed" in event["reason"] or "binary" in event["reason"], event

        def indexed() -> dict[str, list[dict[str, object]]] | None:
            store = read_store(store_path)
            if store is None:
                return None
            by_source: dict[str, list[dict[str, object]]] = {}
            for entry in store["embeddings"]:
                by_source.setdefault(entry["metadata"]["source"], []).append(entry["metadata"])
            return by_source if set(by_source) == {"src/decoder.py", "src/README.md"} else None

        sources = wait_for(indexed, what="decoder.py and README.md indexed, and nothing else")
        sections = {m.get("section") for m in sources["src/decoder.py"]}
        assert "class JSONDecoder > def raw_decode" in sections, sections
        files = read_store(store_path)["files"]  # type: ignore[index]
        assert files["src/decoder.py"]["language"] == "python"
        assert "language" not in files["src/README.md"]  # written only for source code
    finally:
        assert daemon.stop() == 0


def test_a_function_is_found_by_its_name_however_it_is_written(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = tmp_path / "config.toml"
    write_config(tmp_path, default_model, watch="src")
    cfg.write_text(cfg.read_text().replace('path = "src"\n', 'path = "src"\npreset = "code"\n'))
    src = tmp_path / "src"
    (src / "decoder.py").write_bytes(Path(json.decoder.__file__).read_bytes())
    (src / "scanner.py").write_bytes(Path(json.scanner.__file__).read_bytes())
    daemon = Daemon(cfg, cli_env).ready()
    try:
        daemon.wait_event("file_indexed", source="src/decoder.py")
        daemon.wait_event("file_indexed", source="src/scanner.py")
        for query in ("raw_decode", "rawDecode", "raw decode"):
            for mode in ("keyword", "hybrid"):
                args = ["search", "--config", str(cfg), "--json", "--mode", mode, "-k", "3", query]
                done = cli(args, cli_env)
                assert done.returncode == 0, done.stderr
                first = json.loads(done.stdout)["results"][0]
                # The chunk that defines it comes first, not one that only calls it.
                assert first["section"].endswith("def raw_decode"), (query, mode, first["section"])
                assert "def raw_decode(" in first["content"], (query, mode)
    finally:
        assert daemon.stop() == 0
