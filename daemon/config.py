"""Configuration: TOML -> frozen dataclasses.

The flow is defaults -> parse -> validate: the user's tables are laid over ``DEFAULTS``
(each default is written there once; the dataclasses take theirs from it), every value is
type- and range-checked as it is read (``daemon.tables``), and the cross-field rules (overlap
below size, watched folders that would double-index, a store inside a watched folder) run
last on the finished ``Config``. Every problem raises ``ConfigError`` naming the dotted key
(``model.threads``, ``watch[1].include[0]``), the value and what is allowed.

Nothing here touches the disk beyond reading the config file and looking up symlinks
to compare folders: whether the model, folders and store exist is checked by the code that
uses them.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import TypeVar

from daemon.errors import ConfigError
from daemon.tables import Table, absolute, reject_unknown
from daemon.webnames import canonical_host, canonical_origin

_MIB = 1024 * 1024
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")  # as daemon.log.LEVELS

DEFAULTS: Mapping[str, Mapping[str, object]] = MappingProxyType(
    {
        "model": MappingProxyType(
            {
                "path": "models/all-MiniLM-L6-v2.gguf",
                "threads": 0,
                "normalize": True,
                "query_prefix": "",
                "batch_tokens": 512,
                "gpu_layers": 0,
            }
        ),
        "chunking": MappingProxyType({"size": 500, "overlap": 50, "context_prefix": False}),
        "store": MappingProxyType({"path": "data/embeddings.json"}),
        "daemon": MappingProxyType(
            {
                "debounce_ms": 500,
                "rescan_interval_s": 300,
                "log_format": "auto",
                "log_level": "info",
                "max_file_mb": 100,
                "extract_timeout_s": 60,
                "extract_memory_mb": 1024,
                "max_html_mb": 20,
                "name": "",
                "nice": 10,
            }
        ),
        "serve": MappingProxyType(
            {
                "socket": None,  # None: <store name without extension>.sock beside the store; "": off
                "tcp": "",
                "token_file": "",
                "allow_remote": False,
                "max_body_bytes": 1_048_576,
                "max_connections": 512,
                "allowed_hosts": None,  # None: none besides the listener's own names; a list of names
                "allowed_origins": None,  # None: no web page; a list of origins
            }
        ),
    }
)
"""Every key of every plain table with its default; a key not listed here is rejected."""

ALIASES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        # Before documents other than PDFs were parsed in the sandboxed worker, its limits had PDF names.
        "daemon": MappingProxyType(
            {"pdf_timeout_s": "extract_timeout_s", "pdf_memory_mb": "extract_memory_mb"}
        ),
    }
)
"""Old names still accepted for a key, per table; errors name the key as the user wrote it."""

WATCH_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {
        "path": None,  # required
        "include": (
            *("*.txt", "*.md", "*.pdf", "*.html", "*.htm"),
            *("*.docx", "*.pptx", "*.epub", "*.odt", "*.rst"),
        ),
        "exclude": (".*", "*~", "*.tmp", "*.part"),
        "recursive": True,
        "respect_gitignore": True,
        "preset": "",
    }
)
"""Every key of a ``[[watch]]`` table with its default; ``path`` has none and is required."""

CODE_INCLUDE: tuple[str, ...] = (
    *("*.py", "*.pyi", "*.js", "*.mjs", "*.cjs", "*.jsx", "*.ts", "*.mts", "*.cts", "*.tsx"),
    *("*.go", "*.rs", "*.java", "*.c", "*.h", "*.cc", "*.cpp", "*.cxx", "*.hpp", "*.hh", "*.cs"),
    *("*.rb", "*.php", "*.kt", "*.kts", "*.swift", "*.sh", "*.bash", "*.sql"),
    *("*.md", "*.rst", "*.txt", "*.toml", "*.json", "*.yaml", "*.yml"),
)
PRESETS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        # Source code and the docs beside it; lock files, minified and binary files are skipped
        # at extraction with a reason; generated folders are the .gitignore's business, these
        # two are excluded even without one.
        "code": MappingProxyType({"include": CODE_INCLUDE, "exclude": ("node_modules", "__pycache__")}),
    }
)
"""``[[watch]] preset``: patterns added to the watch's ``include`` (which it replaces when not
given) and ``exclude``."""

SINK_TYPES = ("milvus", "qdrant", "chroma", "lancedb")
SINK_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {
        "type": None,  # required
        "uri": None,  # required
        "name": "",  # default: the collection name
        "collection": "embedd",
        "token": "",
        "api_key_file": None,  # optional: a file holding the key, read when the daemon starts
        "timeout_s": 5.0,
    }
)
"""Every key of a ``[[sink]]`` table with its default; ``type`` and ``uri`` are required."""


_T = TypeVar("_T")


def _default(table: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    """A default of the file's tables, as a dataclass field's default: each is written once."""
    value = table[key]
    if not isinstance(value, kind):
        raise TypeError(f"the default of {key} is {value!r}, not {kind.__name__}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    """The GGUF embedding model and how llama.cpp runs it."""

    path: Path
    threads: int  # 0: adapt between 1 and the physical cores, following the load
    normalize: bool
    query_prefix: str
    batch_tokens: int
    gpu_layers: int  # layers offloaded to a GPU; -1: all


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunk size and overlap, in characters; whether the embedded text gets a context prefix."""

    size: int
    overlap: int
    context_prefix: bool


@dataclass(frozen=True)
class StoreConfig:
    """Where the JSON embedding store lives."""

    path: Path


@dataclass(frozen=True)
class WatchConfig:
    """One watched folder and the glob patterns that select its files."""

    path: Path
    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    recursive: bool
    # .gitignore, .ignore and .git/info/exclude (watch/ignore.py)
    respect_gitignore: bool = _default(WATCH_DEFAULTS, "respect_gitignore", bool)
    preset: str = _default(WATCH_DEFAULTS, "preset", str)

    def matches(self, relpath: str) -> bool:
        """Tell whether the file at ``relpath`` ('/'-separated, relative to ``path``) is indexed.

        Exclude patterns are tested against every component, so ``.*`` also drops files
        inside hidden folders; include patterns are tested against the file name only.
        Matching ignores case (``*.pdf`` takes ``SCAN.PDF``). Without ``recursive`` only
        files directly inside the folder match.
        """
        parts = [part for part in relpath.split("/") if part not in ("", ".")]
        if not parts or (not self.recursive and len(parts) > 1):
            return False
        if any(_matches_any(part, self.exclude) for part in parts):
            return False
        return _matches_any(parts[-1], self.include)

    def skips_dir(self, name: str) -> bool:
        """Tell whether a folder called ``name`` below ``path`` is excluded (never descended into)."""
        return not self.recursive or _matches_any(name, self.exclude)


@dataclass(frozen=True)
class DaemonConfig:
    """Service behaviour: timing, logging and the limits on one file.

    ``extract_timeout_s`` and ``extract_memory_bytes`` bound the sandboxed worker that parses
    every document but plain text and Markdown; an HTML page is read up to ``max_html_bytes``.
    """

    debounce_ms: int
    rescan_interval_s: float
    log_format: str
    log_level: str
    max_file_bytes: int
    extract_timeout_s: float
    extract_memory_bytes: int
    max_html_bytes: int
    name: str  # this daemon's name in shared sinks (the host name when the file sets none)
    nice: int  # niceness the daemon lowers itself to (with batch CPU and idle I/O); 0: as started


@dataclass(frozen=True)
class SinkConfig:
    """One vector database the store is mirrored into."""

    name: str
    type: str  # one of SINK_TYPES
    uri: str  # a server URI, or an absolute path to the engine's local file or folder
    collection: str
    token: str = field(default=_default(SINK_DEFAULTS, "token", str), repr=False)  # a secret: no repr
    api_key_file: Path | None = None
    timeout_s: float = _default(SINK_DEFAULTS, "timeout_s", float)  # the longest one request may take


# sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


@dataclass(frozen=True)
class ServeConfig:
    """The local API: a Unix socket (on by default), loopback TCP (off by default), limits.

    The defaults are the file's (``DEFAULTS["serve"]``) in parsed form, but for ``socket``:
    built without one, a ``ServeConfig`` has no socket (the file's default is one beside the store).
    """

    socket: Path | None = None  # None: off
    tcp: tuple[str, int] | None = None  # (host, port); port 0 picks a free one; None: off
    token_file: Path | None = None  # when set, TCP requests need "Authorization: Bearer <token>"
    allow_remote: bool = _default(DEFAULTS["serve"], "allow_remote", bool)
    max_body_bytes: int = _default(DEFAULTS["serve"], "max_body_bytes", int)
    max_connections: int = _default(DEFAULTS["serve"], "max_connections", int)
    allowed_hosts: tuple[str, ...] = ()  # more Host names TCP answers ("name" or "name:port")
    allowed_origins: tuple[str, ...] = ()  # web pages let in ("scheme://host[:port]"), with CORS

    @property
    def enabled(self) -> bool:
        """True when the daemon listens anywhere."""
        return self.socket is not None or self.tcp is not None


def default_socket(store: Path) -> Path:
    """Where the socket goes when ``serve.socket`` is not set: beside the store, named after it."""
    return store.with_name(store.stem + ".sock")


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source_path`` is the file it came from, if any."""

    model: ModelConfig
    chunking: ChunkingConfig
    store: StoreConfig
    watches: tuple[WatchConfig, ...]
    daemon: DaemonConfig
    source_path: Path | None = None
    sinks: tuple[SinkConfig, ...] = ()
    serve: ServeConfig = ServeConfig()


def load_config(path: Path) -> Config:
    """Read and validate the TOML file at ``path``; relative paths in it resolve against its folder.

    Raises ``ConfigError`` for every problem, with field ``"<file>"`` when the file cannot be
    read or is not valid TOML.
    """
    source = absolute(path)
    try:
        with source.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError("<file>", str(path), "no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("<file>", str(path), f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", str(path), f"invalid TOML: {exc}") from exc
    return parse_config(data, source.parent, source_path=source)


def parse_config(data: Mapping[str, object], base_dir: Path, *, source_path: Path | None = None) -> Config:
    """Build a validated ``Config`` from parsed TOML; relative paths resolve against ``base_dir``."""
    base = absolute(base_dir)
    reject_unknown(data, "", (*DEFAULTS, "watch", "sink"))
    model, chunking, store, daemon = (
        _section(data, name, base) for name in ("model", "chunking", "store", "daemon")
    )
    store_written, store_path = store.path("path")
    config = Config(
        model=ModelConfig(
            path=model.path("path")[1],
            threads=model.integer("threads", minimum=0),
            normalize=model.boolean("normalize"),
            query_prefix=model.string("query_prefix"),
            batch_tokens=model.integer("batch_tokens", minimum=1),
            gpu_layers=model.integer("gpu_layers", minimum=-1),
        ),
        chunking=ChunkingConfig(
            size=chunking.integer("size", minimum=1),
            overlap=chunking.integer("overlap", minimum=0),
            context_prefix=chunking.boolean("context_prefix"),
        ),
        store=StoreConfig(path=store_path),
        watches=_parse_watches(data.get("watch"), base),
        daemon=DaemonConfig(
            debounce_ms=daemon.integer("debounce_ms", minimum=1),
            rescan_interval_s=daemon.number("rescan_interval_s"),
            log_format=daemon.choice("log_format", LOG_FORMATS),
            log_level=daemon.choice("log_level", LOG_LEVELS),
            max_file_bytes=int(daemon.number("max_file_mb") * _MIB),
            extract_timeout_s=daemon.number("extract_timeout_s"),
            # Python and pypdf alone take about 45 MB of address space in the worker.
            extract_memory_bytes=int(daemon.number("extract_memory_mb", minimum=64) * _MIB),
            max_html_bytes=int(daemon.number("max_html_mb") * _MIB),
            name=daemon.string("name").strip() or socket.gethostname(),
            nice=daemon.integer("nice", minimum=0, maximum=19),
        ),
        source_path=source_path,
        sinks=_parse_sinks(data.get("sink"), base),
        serve=_parse_serve(data.get("serve", {}), base, store_path),
    )
    _validate(config, store_written)
    return config


def _parse_watches(raw: object, base: Path) -> tuple[WatchConfig, ...]:
    if raw is None or raw == []:
        raise ConfigError("watch", raw, "at least one [[watch]] table is required")
    if not isinstance(raw, list):
        raise ConfigError("watch", raw, "must be an array of tables: write [[watch]]")
    watches = []
    for index, item in enumerate(raw):
        field = f"watch[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(field, item, "must be a table: write [[watch]] with path = ...")
        table = Table(item, field, WATCH_DEFAULTS, base)
        written, path = table.path("path")
        include = table.patterns("include", allow_empty=False)
        exclude = table.patterns("exclude", allow_empty=True)
        preset = table.string("preset").strip().lower()
        if preset:
            if preset not in PRESETS:
                raise ConfigError(f"{field}.preset", preset, f"must be one of: {', '.join(PRESETS)}")
            given = include if "include" in item else ()
            include = tuple(dict.fromkeys((*PRESETS[preset]["include"], *given)))
            exclude = tuple(dict.fromkeys((*exclude, *PRESETS[preset]["exclude"])))
        watches.append(
            WatchConfig(
                path=path,
                name=PurePath(written).as_posix(),
                include=include,
                exclude=exclude,
                recursive=table.boolean("recursive"),
                respect_gitignore=table.boolean("respect_gitignore"),
                preset=preset,
            )
        )
    return tuple(watches)


def _parse_sinks(raw: object, base: Path) -> tuple[SinkConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("sink", raw, "must be an array of tables: write [[sink]]")
    sinks: list[SinkConfig] = []
    for index, item in enumerate(raw):
        field = f"sink[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(field, item, "must be a table: write [[sink]] with type and uri")
        table = Table(item, field, SINK_DEFAULTS, base)
        if item.get("type") is None:
            raise ConfigError(f"{field}.type", None, f"required; one of: {', '.join(SINK_TYPES)}")
        kind = table.choice("type", SINK_TYPES)
        if item.get("uri") is None:
            raise ConfigError(
                f"{field}.uri", None, "required: a server URL (http://host:port) or a local path"
            )
        uri = table.string("uri").strip()
        if not uri:
            raise ConfigError(f"{field}.uri", uri, "must not be empty")
        if "://" not in uri:
            # The engine's local file or folder: relative to the config file like every other path.
            uri = str(table.path("uri")[1])
        collection = table.string("collection").strip()
        if not collection or not collection.replace("_", "a").isalnum() or collection[0].isdigit():
            raise ConfigError(
                f"{field}.collection",
                collection,
                "must be letters, digits and '_', not starting with a digit",
            )
        name = table.string("name").strip() or collection
        if any(s.name == name for s in sinks):
            raise ConfigError(f"{field}.name", name, "another [[sink]] has this name; names must be unique")
        key_file = table.path("api_key_file")[1] if item.get("api_key_file") is not None else None
        sinks.append(
            SinkConfig(
                name=name,
                type=kind,
                uri=uri,
                collection=collection,
                token=table.string("token"),
                api_key_file=key_file,
                timeout_s=table.number("timeout_s"),
            )
        )
    return tuple(sinks)


def _parse_serve(raw: object, base: Path, store: Path) -> ServeConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("serve", raw, "must be a table: write [serve]")
    table = Table(raw, "serve", DEFAULTS["serve"], base)
    sock: Path | None
    if raw.get("socket") is None:
        sock = default_socket(store)
        if len(os.fsencode(sock)) > MAX_SOCKET_PATH_BYTES:
            raise ConfigError(
                "serve.socket",
                None,
                f"the default socket path {sock} is longer than {MAX_SOCKET_PATH_BYTES} bytes, the most a "
                'Unix socket path may have; set serve.socket to a shorter path, or "" to turn the socket off',
            )
    elif not table.string("socket").strip():
        sock = None
    else:
        sock = table.path("socket")[1]
        if len(os.fsencode(sock)) > MAX_SOCKET_PATH_BYTES:
            raise ConfigError(
                "serve.socket",
                raw["socket"],
                f"{sock} is longer than {MAX_SOCKET_PATH_BYTES} bytes, the most a Unix socket path may have",
            )
    token_file = table.path("token_file")[1] if table.string("token_file").strip() else None
    allow_remote = table.boolean("allow_remote")
    tcp = _parse_tcp(table.string("tcp").strip())
    if tcp is not None and not _is_loopback(tcp[0]) and not allow_remote:
        raise ConfigError(
            "serve.tcp",
            raw.get("tcp"),
            "binds a non-loopback address; set serve.allow_remote = true (and serve.token_file) to "
            "accept connections from other machines, or use 127.0.0.1",
        )
    if allow_remote and token_file is None:
        raise ConfigError(
            "serve.allow_remote", True, "needs serve.token_file: remote clients must present a token"
        )
    return ServeConfig(
        socket=sock,
        tcp=tcp,
        token_file=token_file,
        allow_remote=allow_remote,
        max_body_bytes=table.integer("max_body_bytes", minimum=1024),
        max_connections=table.integer("max_connections", minimum=1),
        allowed_hosts=table.strings("allowed_hosts", canonical_host),
        allowed_origins=table.strings("allowed_origins", canonical_origin),
    )


def _parse_tcp(text: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); "" is off."""
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("serve.tcp", text, 'must be "host:port", e.g. "127.0.0.1:8765" ("" turns TCP off)')
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("serve.tcp", text, "the host must be an IP address or localhost") from None
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _validate(config: Config, store_written: str) -> None:
    """Cross-field rules, run once every single value is known to be well-formed."""
    if config.chunking.overlap >= config.chunking.size:
        raise ConfigError(
            "chunking.overlap",
            config.chunking.overlap,
            f"must be less than chunking.size ({config.chunking.size})",
        )
    # Resolve symlinks only for comparing, so a folder reached two ways is still caught
    # while the Config keeps the paths as the user wrote them.
    real = [watch.path.resolve() for watch in config.watches]
    written = [watch.name for watch in config.watches]
    for j, inner in enumerate(real):
        for i, outer in enumerate(real):
            if i < j and inner == outer:
                raise ConfigError(
                    f"watch[{j}].path",
                    written[j],
                    f"same folder as watch[{i}].path ({written[i]!r}); watch each folder once",
                )
            if (
                inner != outer
                and inner.is_relative_to(outer)
                and _covers(config.watches[i], inner.relative_to(outer))
            ):
                raise ConfigError(
                    f"watch[{j}].path",
                    written[j],
                    f"inside watch[{i}].path ({written[i]!r}), which is recursive, so its "
                    f"files would be indexed twice; drop one, or exclude the subfolder "
                    f"in watch[{i}].exclude",
                )
    store_real = config.store.path.resolve()
    for i, folder in enumerate(real):
        if store_real.is_relative_to(folder):
            raise ConfigError(
                "store.path",
                store_written,
                f"inside watch[{i}].path ({written[i]!r}), so the daemon would index its "
                f"own output; put the store outside every watched folder",
            )


def _covers(outer: WatchConfig, inner_rel: PurePath) -> bool:
    """Tell whether ``outer`` already indexes files of a folder at ``inner_rel`` below it."""
    return outer.recursive and not any(_matches_any(part, outer.exclude) for part in inner_rel.parts)


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    folded = name.casefold()
    return any(fnmatchcase(folded, pattern.casefold()) for pattern in patterns)


def _section(data: Mapping[str, object], name: str, base: Path) -> Table:
    raw = data.get(name, {})
    if not isinstance(raw, Mapping):
        raise ConfigError(name, raw, f"must be a table: write [{name}]")
    return Table(raw, name, DEFAULTS[name], base, ALIASES.get(name, {}))
