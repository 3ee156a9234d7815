"""``embedd init``: write a commented starter configuration that ``load_config`` accepts.

Every value is rendered by tomli-w, one key at a time, so quoting and escaping are TOML's
own; the comments are interleaved around the rendered lines. The text is validated with the
real config parser before anything is written, and an existing file is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

import tomli_w

from daemon.config import DEFAULTS, WATCH_DEFAULTS, Config, parse_config
from daemon.errors import ConfigError, UsageError

DEFAULT_FOLDER = "inbox"

_INTRO = """\
# embedd configuration, written by `embedd init`. Every key shows its default; only the
# [[watch]] path is required. Relative paths resolve against the folder holding this file
# (not the working directory), and '~' expands to the home directory. Unknown keys are an
# error, so typos do not pass silently.
"""

# Each table's comment (key "") and each key's, in the order they are written.
COMMENTS: Mapping[str, Mapping[str, str]] = {
    "model": {
        "": "The GGUF embedding model. Changing the model or the chunking makes an existing store\n"
        "incompatible; the daemon then says so instead of mixing vectors.",
        "path": "Build the default model here with: embedd model build --config <this file>\n"
        "(a name without a type links to the faster of f32 and f16 on this CPU, timed at build).",
        "threads": "CPU threads for llama.cpp; 0 = adapt: start with one per physical core, use fewer\n"
        "while other programs keep cores busy, and more again once they stop. N = always N.",
        "normalize": "L2-normalise every vector, so cosine similarity is a plain dot product.",
        "query_prefix": "Text put before search queries only, never before documents.\n"
        'bge-small-en-v1.5 wants "Represent this sentence for searching relevant passages: ".',
        "batch_tokens": "Tokens per native llama.cpp batch; at least the model context used.",
        "gpu_layers": "Layers to offload to a GPU (-1 = all); needs a CUDA or Metal build of\n"
        "llama-cpp-python (see the README). 0 = CPU only.",
    },
    "chunking": {
        "": "How files are split before embedding.",
        "size": "Chunk length in characters.",
        "overlap": "Characters shared by neighbouring chunks; must be less than size.",
        "context_prefix": "Embed a chunk with its title and section path before it (changes the "
        "vectors: needs --reembed on an existing store).",
    },
    "store": {
        "": "The JSON embedding store, rewritten atomically.",
        "path": "Must be outside every watched folder, or the daemon would index its own output.",
    },
    "watch": {
        "": "One [[watch]] table per folder. A folder may be watched once, and not inside a\n"
        "recursive watch of a parent folder (its files would be indexed twice).",
        "path": 'The folder; as written it also names the sources in the store ("inbox/notes.md").',
        "include": "Glob patterns for the file names to index (case-insensitive). .md, .rst, .html,\n"
        ".docx, .odt and .epub are split at their headings, .pptx by slide, .pdf by page; any\n"
        "other suffix is read as UTF-8 or UTF-16 text.",
        "exclude": "Glob patterns tested on the file name and every folder name below path:\n"
        '".*" skips hidden files and folders, "*~" and "*.tmp" editor backups, "*.part" downloads.',
        "recursive": "Also watch subfolders.",
        "respect_gitignore": "Leave out what .gitignore, .ignore and .git/info/exclude ignore, as git\n"
        "does (negation, folder patterns, nested files); .git/ itself is never indexed.",
        "preset": '"code": add the source-code patterns to include (source split along its syntax;\n'
        'lock files, minified and binary files skipped); "" = none.',
    },
    "daemon": {
        "": "How the daemon runs.",
        "debounce_ms": "Quiet period after the last change to a file before it is indexed.",
        "rescan_interval_s": "Seconds between full rescans, which catch changes the file watcher missed.",
        "log_format": '"auto": console on a terminal, JSON lines otherwise; or "json", "console".',
        "log_level": '"debug", "info", "warning" or "error".',
        "max_file_mb": "Files larger than this (MiB) are skipped with a log line saying so.",
        "extract_timeout_s": "Wall-clock limit in seconds for extracting one document (PDF, Word,\n"
        "PowerPoint, EPUB, OpenDocument, HTML, reST) in a sandboxed child process.\n"
        "Old name: pdf_timeout_s.",
        "extract_memory_mb": "Memory limit (MiB) for that child process; at least 64.\n"
        "Old name: pdf_memory_mb.",
        "max_html_mb": "An HTML page larger than this (MiB) is indexed up to this size, with a warning.",
        "name": "This daemon's name in shared [[sink]] collections; empty means the host name.",
        "nice": "Run below interactive work: this nice value (0-19), the batch CPU policy and the\n"
        "idle I/O class, set at start. 0 = keep the priority the daemon was started with.",
    },
    "serve": {
        "": "The local API: search, OpenAI-compatible embeddings and status over HTTP (see the README).",
        "socket": 'Unix socket, mode 0660; by default beside the store, named after it. "" turns it off.\n'
        'Under systemd use "/run/embedd/embedd.sock".',
        "tcp": 'Also listen on TCP, e.g. "127.0.0.1:8765"; "" is off. Loopback only unless allow_remote.',
        "token_file": 'A file holding a token; TCP clients must then send "Authorization: Bearer <token>".',
        "allow_remote": "Accept TCP connections from other machines (needs token_file).",
        "max_body_bytes": "Largest request body in bytes; a bigger one is refused with 413.",
        "max_connections": "Most open connections per listener; beyond that new requests get 503.",
        "allowed_hosts": "More Host names TCP answers (behind a proxy); others get 421 (DNS rebinding).",
        "allowed_origins": "Web pages let in, with CORS; any other page gets 403.",
    },
}

_OUTRO = """\
# Optional: mirror every change of the store into a vector database. The JSON store stays the
# source of truth; a sink that is down never blocks indexing. Each engine's client is an extra:
# pip install 'embedd[lancedb]' (or [milvus], [qdrant], [chroma]; [sinks] for all four).
# [[sink]]
# type = "lancedb"                      # "milvus" | "qdrant" | "chroma" | "lancedb"
# uri = "data/lance"                    # a local folder (Milvus Lite: "data/milvus.db"), or a
#                                       # server URL such as "http://qdrant-host:6333"
# collection = "embedd"
# api_key_file = "/etc/embedd/sink.key" # optional: the server's API key, read at start
# timeout_s = 5                         # the longest one request to the server may take
"""


@dataclass(frozen=True)
class Starter:
    """A starter configuration: its text and what it sets up."""

    path: Path
    text: str
    config: Config


def written_path(path: Path | str, base: Path) -> str:
    """How to write ``path`` in a config file in ``base``: relative when below it, else absolute.

    A path starting with '~' is kept as written: the config loader expands it.
    """
    text = os.fspath(path)
    if text.startswith("~"):
        return Path(text).as_posix()
    absolute = Path(os.path.normpath(Path(text).absolute()))
    base = Path(os.path.normpath(base.absolute()))
    if absolute.is_relative_to(base):
        return absolute.relative_to(base).as_posix()
    return absolute.as_posix()


def render(
    folders: Sequence[str],
    *,
    model_path: str | None = None,
    store_path: str | None = None,
    code: bool = False,
) -> str:
    """The commented TOML text watching ``folders`` (as they should be written in the file)."""
    parts = [_INTRO]
    overrides = {"model": {"path": model_path}, "store": {"path": store_path}}
    for table in ("model", "chunking", "store"):
        values = dict(DEFAULTS[table])
        values.update({k: v for k, v in overrides.get(table, {}).items() if v is not None})
        parts.append(_table(f"[{table}]", table, values))
    for i, folder in enumerate(folders):
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in WATCH_DEFAULTS.items()}
        values["path"] = folder
        if code:
            # The preset brings its own include; the default one (documents) would only add noise.
            values.pop("include")
            values["preset"] = "code"
        parts.append(_table("[[watch]]", "watch", values, commented=i == 0))
    parts.append(_table("[daemon]", "daemon", dict(DEFAULTS["daemon"])))
    store = PurePosixPath(store_path or str(DEFAULTS["store"]["path"]))
    parts.append(
        _table(
            "[serve]",
            "serve",
            dict(DEFAULTS["serve"]),
            computed={
                "socket": str(store.with_name(store.stem + ".sock")),
                "allowed_hosts": ["embedd.lan"],
                "allowed_origins": ["http://localhost:3000"],
            },
        )
    )
    parts.append(_OUTRO)
    return "\n".join(parts)


def _table(
    heading: str,
    name: str,
    values: Mapping[str, object],
    *,
    commented: bool = True,
    computed: Mapping[str, object] | None = None,
) -> str:
    """A table; a key whose default is computed (None) is shown commented out with its value."""
    comments = COMMENTS[name]
    lines = _comment(comments[""]) if commented else []
    lines.append(heading)
    for key, value in values.items():
        if commented:
            # A key added to the config without a comment here still gets written, uncommented.
            lines += _comment(comments.get(key, ""))
        if value is None:
            lines.append(f"# {key} = {_value((computed or {}).get(key, ''))}")
            continue
        lines.append(f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    """``value`` as TOML, by tomli-w; a list of scalars stays on one line."""
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in text.splitlines()]


def build(
    config_path: Path,
    folders: Sequence[Path | str] = (),
    *,
    model_path: Path | str | None = None,
    store_path: Path | str | None = None,
    code: bool = False,
) -> Starter:
    """The starter for ``config_path``, validated by the real config parser (raises ConfigError)."""
    path = Path(os.path.normpath(config_path.absolute()))
    base = path.parent
    written = [written_path(f, base) for f in folders] or [DEFAULT_FOLDER]
    text = render(
        written,
        model_path=written_path(model_path, base) if model_path is not None else None,
        store_path=written_path(store_path, base) if store_path is not None else None,
        code=code,
    )
    config = parse_config(tomllib.loads(text), base, source_path=path)
    return Starter(path, text, config)


def write(starter: Starter) -> None:
    """Create the file; raises UsageError when it already exists (it is never overwritten)."""
    path = starter.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": the check and the creation are one step, so a file created meanwhile is kept too.
        with open(path, "x", encoding="utf-8") as fh:
            try:
                fh.write(starter.text)
                fh.flush()
                os.fsync(fh.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def refuse_existing(config_path: Path) -> None:
    """Raise UsageError when ``config_path`` exists, before any other check can fail."""
    if config_path.exists() or config_path.is_symlink():
        raise _exists(Path(os.path.normpath(config_path.absolute())))


def _exists(path: Path) -> UsageError:
    return UsageError(
        f"{path} already exists; embedd init never overwrites a configuration: "
        "edit it, move it away first, or pass --config with another path"
    )


def render_next_steps(starter: Starter, out: TextIO) -> None:
    """Tell the user what was written and what to do next."""
    config = starter.config
    out.write(f"wrote {starter.path}\n")
    for watch in config.watches:
        note = "" if watch.path.is_dir() else "  (does not exist yet: create it, or the daemon waits for it)"
        out.write(f"  watching {watch.path}{note}\n")
    model = config.model.path
    out.write(f"  model    {model}{'' if model.exists() else '  (not built yet)'}\n")
    out.write(f"  store    {config.store.path}\n")
    out.write("next:\n")
    if not model.exists():
        out.write(f"  embedd model build --config {starter.path}\n")
    out.write(f"  embedd run --config {starter.path}\n")


def init_command(
    config_path: Path,
    folders: Sequence[Path],
    *,
    model_path: Path | None,
    store_path: Path | None,
    out: TextIO,
    code: bool = False,
) -> None:
    """``embedd init``: write the starter and say what to do next; an existing file is refused first."""
    refuse_existing(config_path)
    try:
        built = build(config_path, folders, model_path=model_path, store_path=store_path, code=code)
    except ConfigError as exc:
        raise UsageError(
            f"the configuration would not load: {exc}; choose other folders, or other paths with "
            "--store and --model"
        ) from exc
    write(built)
    render_next_steps(built, out)
