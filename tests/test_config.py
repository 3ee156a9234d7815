"""Tests of daemon.config: parsing, defaults, path resolution, errors and file matching."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from daemon.config import (
    DEFAULTS,
    WATCH_DEFAULTS,
    Config,
    WatchConfig,
    load_config,
    parse_config,
)
from daemon.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid config (one watched folder), with ``sections`` laid over it."""
    data: dict[str, Any] = {"watch": [{"path": "inbox"}]}
    data.update(sections)
    return data


def error_of(data: dict[str, Any], base: Path = Path("/srv/embedd")) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base)
    return caught.value


def watch(**overrides: Any) -> WatchConfig:
    values: dict[str, Any] = {
        "path": Path("/w"),
        "name": "w",
        "include": ("*.txt", "*.md", "*.pdf"),
        "exclude": (".*", "*~", "*.tmp", "*.part"),
        "recursive": True,
    }
    values.update(overrides)
    return WatchConfig(**values)


# --- defaults and the example file ---------------------------------------------------


def as_defaults(table: dict[str, Any]) -> dict[str, Any]:
    """A TOML table in the shape of ``DEFAULTS`` (arrays as tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}


# The one value the example sets apart from the defaults: `make run` serves the web page on
# loopback TCP, so a new user can open it.
EXAMPLE_NOT_DEFAULT = {"serve": {"tcp": "127.0.0.1:8765"}}


def test_example_file_shows_every_key_with_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    (example_watch,) = data.pop("watch")
    for section, values in EXAMPLE_NOT_DEFAULT.items():
        for key, value in values.items():
            assert data[section][key] == value
            data[section][key] = DEFAULTS[section][key]
    # A key whose default is computed (None: serve.socket, beside the store) is shown commented out.
    assert {name: as_defaults(table) for name, table in data.items()} == {
        name: {k: v for k, v in table.items() if v is not None} for name, table in DEFAULTS.items()
    }
    assert as_defaults(example_watch) == {**WATCH_DEFAULTS, "path": "inbox"}


def test_example_file_loads_and_equals_the_defaults() -> None:
    loaded = load_config(EXAMPLE)
    defaults = parse_config(minimal(**EXAMPLE_NOT_DEFAULT), EXAMPLE.parent)
    assert loaded.source_path == EXAMPLE
    assert loaded.serve.tcp == ("127.0.0.1", 8765)
    assert replace(loaded, source_path=None) == defaults


def test_defaults_are_converted_to_units() -> None:
    cfg = parse_config(minimal(), Path("/srv/embedd"))
    assert cfg.daemon.max_file_bytes == 100 * 1024 * 1024
    assert cfg.daemon.extract_memory_bytes == 1024 * 1024 * 1024
    assert cfg.daemon.rescan_interval_s == 300.0
    assert cfg.model.threads == 0
    assert cfg.model.gpu_layers == 0
    assert cfg.model.path == Path("/srv/embedd/models/all-MiniLM-L6-v2.gguf")
    assert cfg.daemon.nice == 10
    assert cfg.chunking.size == 500
    assert cfg.chunking.overlap == 50
    assert cfg.source_path is None


def test_values_override_defaults() -> None:
    cfg = parse_config(
        minimal(
            model={"threads": 2, "normalize": False, "query_prefix": "q: "},
            daemon={"log_level": "DEBUG", "log_format": "json", "max_file_mb": 0.5},
        ),
        Path("/srv"),
    )
    assert cfg.model.threads == 2
    assert cfg.model.normalize is False
    assert cfg.model.query_prefix == "q: "
    assert cfg.daemon.log_level == "debug"
    assert cfg.daemon.log_format == "json"
    assert cfg.daemon.max_file_bytes == 512 * 1024


def test_cpu_and_gpu_settings() -> None:
    cfg = parse_config(minimal(model={"gpu_layers": -1}, daemon={"nice": 0}), Path("/srv"))
    assert cfg.model.gpu_layers == -1 and cfg.daemon.nice == 0
    cfg = parse_config(minimal(model={"gpu_layers": 12}, daemon={"nice": 19}), Path("/srv"))
    assert cfg.model.gpu_layers == 12 and cfg.daemon.nice == 19
    assert "from 0 to 19" in error_of(minimal(daemon={"nice": 20})).reason


# --- paths ---------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (conf_dir / "embedd.toml").write_text(
        '[model]\npath = "../models/m.gguf"\n'
        '[store]\npath = "data/store.json"\n'
        '[[watch]]\npath = "./notes/"\n'
        f'[[watch]]\npath = "{tmp_path / "abs"}"\n',
        encoding="utf-8",
    )
    cfg = load_config(Path("../etc/embedd.toml"))
    assert cfg.source_path == conf_dir / "embedd.toml"
    assert cfg.model.path == tmp_path / "models" / "m.gguf"
    assert cfg.store.path == conf_dir / "data" / "store.json"
    assert [w.path for w in cfg.watches] == [conf_dir / "notes", tmp_path / "abs"]
    # The name keeps the path as written (normalised), since the store names sources by it.
    assert [w.name for w in cfg.watches] == ["notes", (tmp_path / "abs").as_posix()]


def test_home_is_expanded_but_the_name_keeps_the_tilde(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ada")
    cfg = parse_config({"watch": [{"path": "~/papers"}]}, Path("/srv"))
    assert cfg.watches[0].path == Path("/home/ada/papers")
    assert cfg.watches[0].name == "~/papers"


# --- errors name the key -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"modle": {}, "watch": [{"path": "a"}]}, "modle"),
        (minimal(model={"thread": 1}), "model.thread"),
        (minimal(daemon={"debounce": 1}), "daemon.debounce"),
        ({"watch": [{"path": "a", "recursve": False}]}, "watch[0].recursve"),
        (minimal(model=3), "model"),
        (minimal(model={"threads": True}), "model.threads"),
        (minimal(model={"threads": "4"}), "model.threads"),
        (minimal(model={"threads": 1.5}), "model.threads"),
        (minimal(model={"threads": -1}), "model.threads"),
        (minimal(model={"batch_tokens": 0}), "model.batch_tokens"),
        (minimal(model={"gpu_layers": -2}), "model.gpu_layers"),
        (minimal(model={"gpu_layers": True}), "model.gpu_layers"),
        (minimal(daemon={"nice": 20}), "daemon.nice"),
        (minimal(daemon={"nice": -5}), "daemon.nice"),
        (minimal(daemon={"nice": 5.5}), "daemon.nice"),
        (minimal(model={"normalize": 1}), "model.normalize"),
        (minimal(model={"query_prefix": 5}), "model.query_prefix"),
        (minimal(model={"path": ""}), "model.path"),
        (minimal(model={"path": 5}), "model.path"),
        (minimal(chunking={"size": 0}), "chunking.size"),
        (minimal(chunking={"overlap": -1}), "chunking.overlap"),
        (minimal(chunking={"size": 100, "overlap": 100}), "chunking.overlap"),
        (minimal(chunking={"size": 50}), "chunking.overlap"),  # against the default 50
        (minimal(daemon={"debounce_ms": 0}), "daemon.debounce_ms"),
        (minimal(daemon={"rescan_interval_s": 0}), "daemon.rescan_interval_s"),
        (minimal(daemon={"pdf_timeout_s": float("inf")}), "daemon.pdf_timeout_s"),
        (minimal(daemon={"pdf_timeout_s": False}), "daemon.pdf_timeout_s"),
        (minimal(daemon={"max_file_mb": -5}), "daemon.max_file_mb"),
        (minimal(daemon={"pdf_memory_mb": "1G"}), "daemon.pdf_memory_mb"),
        (minimal(daemon={"log_format": "text"}), "daemon.log_format"),
        (minimal(daemon={"log_level": "verbose"}), "daemon.log_level"),
        ({}, "watch"),
        ({"watch": []}, "watch"),
        ({"watch": {"path": "a"}}, "watch"),
        ({"watch": ["a"]}, "watch[0]"),
        ({"watch": [{"include": ["*.md"]}]}, "watch[0].path"),
        ({"watch": [{"path": "a"}, {"path": "b", "include": []}]}, "watch[1].include"),
        ({"watch": [{"path": "a", "include": "*.md"}]}, "watch[0].include"),
        ({"watch": [{"path": "a", "exclude": ["*~", ""]}]}, "watch[0].exclude[1]"),
        ({"watch": [{"path": "a", "exclude": [3]}]}, "watch[0].exclude[0]"),
        ({"watch": [{"path": "a", "include": ["docs/*.md"]}]}, "watch[0].include[0]"),
        ({"watch": [{"path": "a", "recursive": "yes"}]}, "watch[0].recursive"),
    ],
)
def test_every_error_names_its_key(data: dict[str, Any], field: str) -> None:
    error = error_of(data)
    assert error.field == field
    assert field in str(error)


def test_error_says_what_is_allowed() -> None:
    error = error_of(minimal(model={"threads": True}))
    assert error.value is True
    assert "integer" in error.reason and "bool" in error.reason

    error = error_of(minimal(model={"thread": 1}))
    assert "threads" in error.reason  # lists the keys that are allowed

    error = error_of(minimal(daemon={"log_format": "text"}))
    assert "auto, json, console" in error.reason


@pytest.mark.parametrize(
    ("watches", "field"),
    [
        (["a", "a"], "watch[1].path"),
        (["a", "./a/"], "watch[1].path"),
        (["a", "/srv/embedd/a"], "watch[1].path"),
        (["a", "a/sub"], "watch[1].path"),
        (["a/sub", "a"], "watch[0].path"),
    ],
)
def test_watched_folders_that_would_double_index_are_rejected(watches: list[str], field: str) -> None:
    error = error_of({"watch": [{"path": path} for path in watches]})
    assert error.field == field


def test_nested_folders_are_fine_when_the_parent_does_not_reach_them() -> None:
    base = Path("/srv")
    flat = {"watch": [{"path": "a", "recursive": False}, {"path": "a/sub"}]}
    excluded = {"watch": [{"path": "a", "exclude": ["sub"]}, {"path": "a/sub"}]}
    siblings = {"watch": [{"path": "a"}, {"path": "ab"}]}
    for data in (flat, excluded, siblings):
        assert len(parse_config(data, base).watches) == 2


def test_a_symlinked_duplicate_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    error = error_of({"watch": [{"path": "real"}, {"path": "link"}]}, tmp_path)
    assert error.field == "watch[1].path"


@pytest.mark.parametrize("store", ["inbox/embeddings.json", "inbox/deep/store.json"])
def test_store_inside_a_watched_folder_is_rejected(store: str) -> None:
    error = error_of(minimal(store={"path": store}))
    assert error.field == "store.path"
    assert error.value == store
    assert "watch[0]" in error.reason


def test_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert caught.value.field == "<file>"

    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npath = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert caught.value.field == "<file>"
    assert "invalid TOML" in caught.value.reason

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)  # a directory
    assert caught.value.field == "<file>"


def test_config_is_frozen() -> None:
    cfg = parse_config(minimal(), Path("/srv"))
    assert isinstance(cfg, Config)
    with pytest.raises(AttributeError):
        cfg.model.threads = 3  # type: ignore[misc]


# --- matches() -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("notes.md", True),
        ("a/b/c/report.pdf", True),
        ("SCAN.PDF", True),
        ("readme.txt", True),
        ("image.png", False),
        ("notes.md.tmp", False),
        ("notes.md~", False),
        (".notes.md", False),
        (".#notes.md", False),  # emacs lock file
        ("#notes.md#", False),  # emacs autosave
        (".notes.md.swp", False),  # vim swap
        ("notes.md.swp", False),
        ("4913", False),  # vim's write test file
        ("paper.pdf.part", False),  # unfinished download
        (".git/description.md", False),  # hidden folders are excluded at any depth
        ("a/.obsidian/b/notes.md", False),
        ("./notes.md", True),
    ],
)
def test_matches_uses_include_on_names_and_exclude_on_every_component(relpath: str, expected: bool) -> None:
    assert watch().matches(relpath) is expected


def test_matches_without_recursion_takes_only_top_level_files() -> None:
    flat = watch(recursive=False)
    assert flat.matches("notes.md")
    assert not flat.matches("sub/notes.md")


def test_matches_with_custom_patterns() -> None:
    custom = watch(include=("*",), exclude=("drafts", "*.log"))
    assert custom.matches("anything")
    assert custom.matches(".hidden")  # nothing excludes it any more
    assert not custom.matches("drafts/x.md")
    assert not custom.matches("a/drafts/x.md")
    assert not custom.matches("server.LOG")
    assert not custom.matches("")


def test_daemon_name_defaults_to_the_host_name() -> None:
    import socket

    assert parse_config(minimal(), Path("/srv/embedd")).daemon.name == socket.gethostname()
    named = parse_config(minimal(daemon={"name": "fileserver-2"}), Path("/srv/embedd"))
    assert named.daemon.name == "fileserver-2"


def test_sinks_parse_with_defaults_and_resolve_lite_files() -> None:
    cfg = parse_config(
        minimal(
            sink=[
                {"type": "milvus", "uri": "data/milvus.db"},
                {"type": "milvus", "uri": "http://milvus:19530", "collection": "docs", "token": "t"},
            ]
        ),
        Path("/srv/embedd"),
    )
    lite, server = cfg.sinks
    assert (lite.name, lite.uri, lite.collection) == ("embedd", "/srv/embedd/data/milvus.db", "embedd")
    assert (server.name, server.uri, server.token) == ("docs", "http://milvus:19530", "t")
    assert (lite.timeout_s, lite.api_key_file) == (5.0, None)
    assert "'t'" not in repr(server)  # a secret stays out of logs and tracebacks
    assert parse_config(minimal(), Path("/srv")).sinks == ()


def test_every_engine_parses_and_local_paths_and_key_files_resolve() -> None:
    cfg = parse_config(
        minimal(
            sink=[
                {"type": "qdrant", "uri": "http://qdrant:6333", "api_key_file": "keys/qdrant.key"},
                {"type": "chroma", "uri": "data/chroma", "name": "notes"},
                {"type": "LanceDB", "uri": "~/lance", "collection": "docs", "timeout_s": 30},
            ]
        ),
        Path("/srv/embedd"),
    )
    qdrant, chroma, lance = cfg.sinks
    assert (qdrant.type, qdrant.uri, qdrant.api_key_file) == (
        "qdrant",
        "http://qdrant:6333",
        Path("/srv/embedd/keys/qdrant.key"),
    )
    assert (chroma.type, chroma.uri, chroma.name) == ("chroma", "/srv/embedd/data/chroma", "notes")
    assert (lance.type, lance.uri, lance.timeout_s) == ("lancedb", str(Path("~/lance").expanduser()), 30.0)


@pytest.mark.parametrize(
    ("sink", "field"),
    [
        ({"uri": "x.db"}, "sink[0].type"),
        ({"type": "pinecone", "uri": "x.db"}, "sink[0].type"),
        ({"type": "qdrant", "uri": "x", "timeout_s": 0}, "sink[0].timeout_s"),
        ({"type": "qdrant", "uri": "x", "api_key_file": ""}, "sink[0].api_key_file"),
        ({"type": "milvus"}, "sink[0].uri"),
        ({"type": "milvus", "uri": "  "}, "sink[0].uri"),
        ({"type": "milvus", "uri": "x.db", "collection": "9bad"}, "sink[0].collection"),
        ({"type": "milvus", "uri": "x.db", "collection": "has-dash"}, "sink[0].collection"),
        ({"type": "milvus", "uri": "x.db", "colection": "typo"}, "sink[0].colection"),
    ],
)
def test_sink_errors_name_the_key(sink: dict[str, Any], field: str) -> None:
    assert error_of(minimal(sink=[sink])).field == field


def test_sink_names_must_be_unique() -> None:
    same = {"type": "milvus", "uri": "x.db"}
    assert error_of(minimal(sink=[same, same])).field == "sink[1].name"
    assert error_of(minimal(sink={"type": "milvus"})).field == "sink"


# --- [serve] ---------------------------------------------------------------------------


def test_serve_defaults_to_a_socket_beside_the_store_and_no_tcp() -> None:
    cfg = parse_config(minimal(store={"path": "/var/lib/embedd/embeddings.json"}), Path("/srv/embedd"))
    assert cfg.serve.socket == Path("/var/lib/embedd/embeddings.sock")
    assert cfg.serve.tcp is None and cfg.serve.token_file is None and not cfg.serve.allow_remote
    assert cfg.serve.max_body_bytes == 1024 * 1024 and cfg.serve.enabled


def test_serve_socket_and_tcp_are_parsed_relative_and_can_be_turned_off() -> None:
    cfg = parse_config(
        minimal(serve={"socket": "run/e.sock", "tcp": "127.0.0.1:8765", "token_file": "token"}),
        Path("/srv/embedd"),
    )
    assert cfg.serve.socket == Path("/srv/embedd/run/e.sock")
    assert cfg.serve.tcp == ("127.0.0.1", 8765) and cfg.serve.token_file == Path("/srv/embedd/token")
    assert parse_config(minimal(serve={"tcp": "[::1]:0"}), Path("/s")).serve.tcp == ("::1", 0)
    assert parse_config(minimal(serve={"tcp": "localhost:80"}), Path("/s")).serve.tcp == ("127.0.0.1", 80)
    off = parse_config(minimal(serve={"socket": ""}), Path("/s")).serve
    assert off.socket is None and not off.enabled


@pytest.mark.parametrize(
    ("serve", "field", "reason"),
    [
        ({"tcp": "8765"}, "serve.tcp", "host:port"),
        ({"tcp": "example.org:80"}, "serve.tcp", "IP address"),
        ({"tcp": "127.0.0.1:99999"}, "serve.tcp", "host:port"),
        ({"tcp": "0.0.0.0:8765"}, "serve.tcp", "allow_remote"),
        ({"tcp": "0.0.0.0:8765", "allow_remote": True}, "serve.allow_remote", "token_file"),
        ({"socket": "/" + "s" * 120}, "serve.socket", "107 bytes"),
        ({"max_body_bytes": 10}, "serve.max_body_bytes", ">= 1024"),
        ({"port": 1}, "serve.port", "unknown key"),
        ({"allowed_hosts": "myhost"}, "serve.allowed_hosts", "array of strings"),
        ({"allowed_hosts": ["ok", 3]}, "serve.allowed_hosts[1]", "must be a string"),
        ({"allowed_hosts": ["http://myhost"]}, "serve.allowed_hosts[0]", "without a scheme"),
        ({"allowed_hosts": ["myhost/x"]}, "serve.allowed_hosts[0]", "host name"),
        ({"allowed_hosts": ["me@myhost"]}, "serve.allowed_hosts[0]", "user"),
        ({"allowed_hosts": ["myhost:0"]}, "serve.allowed_hosts[0]", "1 to 65535"),
        ({"allowed_hosts": ["myhost:http"]}, "serve.allowed_hosts[0]", "1 to 65535"),
        ({"allowed_hosts": ["::1"]}, "serve.allowed_hosts[0]", "1 to 65535"),
        ({"allowed_hosts": ["[::g]"]}, "serve.allowed_hosts[0]", "not an IPv6 address"),
        ({"allowed_hosts": [""]}, "serve.allowed_hosts[0]", "host name"),
        ({"allowed_hosts": ["bücher.lan"]}, "serve.allowed_hosts[0]", "punycode"),
        ({"allowed_origins": ["*"]}, "serve.allowed_origins[0]", "any page"),
        ({"allowed_origins": ["null"]}, "serve.allowed_origins[0]", "any page"),
        ({"allowed_origins": ["localhost:3000"]}, "serve.allowed_origins[0]", "scheme://host[:port]"),
        ({"allowed_origins": ["http://app.example/"]}, "serve.allowed_origins[0]", "no path"),
        ({"allowed_origins": ["http://"]}, "serve.allowed_origins[0]", "no path"),
        ({"allowed_origins": ["ok", "http://a:99999"]}, "serve.allowed_origins[0]", "scheme://"),
    ],
)
def test_serve_errors_name_the_key(serve: dict[str, Any], field: str, reason: str) -> None:
    err = error_of(minimal(serve=serve))
    assert err.field == field and reason in err.reason


def test_a_default_socket_path_too_long_says_what_to_set() -> None:
    err = error_of(minimal(store={"path": "/" + "d" * 110 + "/embeddings.json"}))
    assert err.field == "serve.socket" and "set serve.socket" in err.reason


def test_remote_tcp_with_a_token_is_allowed() -> None:
    cfg = parse_config(
        minimal(serve={"tcp": "0.0.0.0:8765", "allow_remote": True, "token_file": "/etc/embedd/token"}),
        Path("/s"),
    )
    assert cfg.serve.tcp == ("0.0.0.0", 8765) and cfg.serve.allow_remote


def test_allowed_hosts_and_origins_are_kept_as_a_browser_writes_them() -> None:
    serve = parse_config(
        minimal(
            serve={
                "allowed_hosts": ["Embedd.LAN", "box.internal:9000", "[0:0::1]:8765", "10.0.0.2"],
                "allowed_origins": ["HTTP://App.Example:3000", "https://search.example:443", "http://x:80"],
            }
        ),
        Path("/s"),
    ).serve
    assert serve.allowed_hosts == ("embedd.lan", "box.internal:9000", "[::1]:8765", "10.0.0.2")
    assert serve.allowed_origins == ("http://app.example:3000", "https://search.example", "http://x")
    assert parse_config(minimal(), Path("/s")).serve.allowed_hosts == ()


# --- document extraction -----------------------------------------------------------------


def test_extract_limits_and_their_old_pdf_names() -> None:
    cfg = parse_config(minimal(), Path("/srv"))
    assert (cfg.daemon.extract_timeout_s, cfg.daemon.extract_memory_bytes) == (60.0, 1024 * 1024 * 1024)
    assert cfg.daemon.max_html_bytes == 20 * 1024 * 1024
    new = parse_config(minimal(daemon={"extract_timeout_s": 9, "extract_memory_mb": 256}), Path("/srv"))
    old = parse_config(minimal(daemon={"pdf_timeout_s": 9, "pdf_memory_mb": 256}), Path("/srv"))
    assert new == old
    assert (old.daemon.extract_timeout_s, old.daemon.extract_memory_bytes) == (9.0, 256 * 1024 * 1024)
    for both in (
        {"pdf_timeout_s": 9, "extract_timeout_s": 10},
        {"extract_timeout_s": 10, "pdf_timeout_s": 9},
    ):
        error = error_of(minimal(daemon=both))
        assert (error.field, error.value) == ("daemon.pdf_timeout_s", 9)
        assert error.reason.startswith("the old name of extract_timeout_s, which is set too; keep only")
    assert error_of(minimal(daemon={"extract_memory_mb": 32})).field == "daemon.extract_memory_mb"
    assert error_of(minimal(daemon={"max_html_mb": 0})).field == "daemon.max_html_mb"


def test_default_include_takes_every_document_format() -> None:
    inbox = parse_config(minimal(), Path("/srv")).watches[0]
    for name in ("a.txt", "b.md", "c.PDF", "d.html", "e.htm", "f.docx", "g.pptx", "h.epub", "i.odt", "j.rst"):
        assert inbox.matches(name), name
    assert not inbox.matches("k.xlsx") and not inbox.matches("l.doc")
