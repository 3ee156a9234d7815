"""Ignore rules as git has them, through the daemon's path rules (``scan.walk``, ``scan.locate``)
on real folders, and a .gitignore changed under the real daemon with real watchdog observers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import Daemon, read_store, wait_for, write_config

from daemon.config import WATCH_DEFAULTS, WatchConfig
from daemon.watch import scan


def _watch(root: Path, *, respect: bool = True, exclude: tuple[str, ...] | None = None) -> WatchConfig:
    return WatchConfig(
        path=root,
        name="w",
        include=("*.txt", "*.log", "*.py"),
        exclude=exclude if exclude is not None else tuple(WATCH_DEFAULTS["exclude"]),  # type: ignore[arg-type]
        recursive=True,
        respect_gitignore=respect,
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _walked(watch: WatchConfig) -> set[str]:
    return {found.source.removeprefix("w/") for found in scan.walk([watch], watch, watch.path)}


def _located(watch: WatchConfig, rel: str) -> bool:
    return scan.locate([watch], watch.path / rel) is not None


def test_nested_gitignore_applies_relative_to_its_folder(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            ".gitignore": "*.log\n/top.txt\n",
            "top.txt": "x",
            "a/top.txt": "x",  # "/top.txt" is anchored to the root's folder
            "a/.gitignore": "secret.txt\n",
            "a/secret.txt": "x",
            "secret.txt": "x",  # the nested rule does not reach up
            "a/b/secret.txt": "x",  # but it reaches down
            "a/b/run.log": "x",
            "keep.txt": "x",
        },
    )
    watch = _watch(tmp_path)
    assert _walked(watch) == {"a/top.txt", "secret.txt", "keep.txt"}
    for rel in ("top.txt", "a/secret.txt", "a/b/secret.txt", "a/b/run.log"):
        assert not _located(watch, rel), rel
    assert _located(watch, "a/top.txt") and _located(watch, "secret.txt")


def test_negation_and_deeper_files_win(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            ".gitignore": "*.log\n!keep.log\n",
            "debug.log": "x",
            "keep.log": "x",
            "sub/.gitignore": "!important.log\n",
            "sub/important.log": "x",
            "sub/other.log": "x",
        },
    )
    watch = _watch(tmp_path)
    assert _walked(watch) == {"keep.log", "sub/important.log"}
    assert _located(watch, "keep.log") and not _located(watch, "debug.log")


def test_directory_patterns_are_never_entered(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            ".gitignore": "build/\nnode_modules/\n",
            "build/out.txt": "x",
            "src/build/deep.txt": "x",  # an unanchored folder pattern matches at any depth
            "node_modules/pkg/index.txt": "x",
            "build.txt": "x",  # a folder pattern does not take a file of that name
            "src/main.py": "x",
        },
    )
    # A negation cannot re-include a file inside an ignored folder (git never looks inside).
    _write(tmp_path, {".gitignore": "build/\nnode_modules/\n!build/out.txt\n"})
    watch = _watch(tmp_path)
    entered: list[Path] = []
    real_scandir = scan.os.scandir

    def spy(path: Path) -> object:
        entered.append(Path(path))
        return real_scandir(path)

    scan.os.scandir = spy  # type: ignore[assignment]
    try:
        assert _walked(watch) == {"build.txt", "src/main.py"}
    finally:
        scan.os.scandir = real_scandir
    assert not any(p.name in ("build", "node_modules") for p in entered), entered
    assert not _located(watch, "build/out.txt") and not _located(watch, "node_modules/pkg/index.txt")


def test_info_exclude_and_git_folder(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".git" / "info").mkdir(exist_ok=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("local.txt\n")
    _write(tmp_path, {"local.txt": "x", "shared.txt": "x", ".git/notes.txt": "x"})
    watch = _watch(tmp_path)
    assert _walked(watch) == {"shared.txt"}
    # .git/ is never indexed, even by a watch that indexes hidden files and ignores no rules.
    bare = _watch(tmp_path, respect=False, exclude=())
    assert _walked(bare) == {"shared.txt", "local.txt"}
    assert not _located(bare, ".git/notes.txt")


def test_a_watch_inside_a_work_tree_follows_the_work_tree_s_rules(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _write(tmp_path, {".gitignore": "docs/draft.txt\n", "docs/draft.txt": "x", "docs/final.txt": "x"})
    assert _walked(_watch(tmp_path / "docs")) == {"final.txt"}


def test_respect_gitignore_false_indexes_everything(tmp_path: Path) -> None:
    _write(tmp_path, {".gitignore": "*.log\n", "a.log": "x"})
    assert _walked(_watch(tmp_path, respect=False)) == {"a.log"}


def test_an_ignore_file_is_read_again_after_a_change(tmp_path: Path) -> None:
    _write(tmp_path, {".gitignore": "a.txt\n", "a.txt": "x", "b.txt": "x"})
    watch = _watch(tmp_path)
    assert _located(watch, "b.txt") and not _located(watch, "a.txt")
    (tmp_path / ".gitignore").write_text("b.txt\n")
    assert scan.ignore_rules_changed([watch], tmp_path / ".gitignore") == tmp_path
    assert _located(watch, "a.txt") and not _located(watch, "b.txt")


def test_dot_ignore_overrides_gitignore(tmp_path: Path) -> None:
    _write(tmp_path, {".gitignore": "*.log\n", ".ignore": "!keep.log\n", "keep.log": "x", "x.log": "x"})
    assert _walked(_watch(tmp_path)) == {"keep.log"}


def _sources(store_path: Path) -> set[str] | None:
    store = read_store(store_path)
    return None if store is None else {e["metadata"]["source"] for e in store["embeddings"]}


@pytest.mark.parametrize("edit", ["rewrite", "delete"])
def test_gitignore_changed_while_the_daemon_runs(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str], edit: str
) -> None:
    cfg = write_config(tmp_path, default_model)
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    _write(
        inbox,
        {
            ".gitignore": "drafts/\n",
            "kept.txt": "The harbour survey starts in May.",
            "drafts/plan.txt": "A draft plan for the lighthouse repairs.",
        },
    )
    daemon = Daemon(cfg, cli_env).ready()
    try:
        wait_for(lambda: _sources(store_path) == {"inbox/kept.txt"}, what="kept.txt indexed alone")
        if edit == "rewrite":
            (inbox / ".gitignore").write_text("kept.txt\n")
            expected = {"inbox/drafts/plan.txt"}
        else:
            (inbox / ".gitignore").unlink()
            expected = {"inbox/kept.txt", "inbox/drafts/plan.txt"}
        wait_for(lambda: _sources(store_path) == expected, what=f"the store to hold {expected}")
        if edit == "rewrite":
            daemon.wait_event("file_removed", source="inbox/kept.txt")
    finally:
        assert daemon.stop() == 0


def test_a_watched_folder_its_work_tree_ignores_keeps_only_its_own_rules(tmp_path: Path) -> None:
    # embedd's own checkout ignores inbox/, the folder `make run` watches; a notes folder inside
    # a dotfiles repository is the same case. The user chose the folder: it is indexed.
    _write(
        tmp_path,
        {
            ".gitignore": "inbox/\n*.log\n",
            "inbox/a.txt": "x",
            "inbox/x.log": "x",
            "inbox/.gitignore": "secret.txt\n",
            "inbox/secret.txt": "x",
            "docs/b.txt": "x",
            "docs/y.log": "x",
        },
    )
    (tmp_path / ".git").mkdir()
    inbox = _watch(tmp_path / "inbox")
    assert _walked(inbox) == {"a.txt", "x.log"}
    assert _located(inbox, "a.txt") and not _located(inbox, "secret.txt")
    # A folder the work tree does not ignore keeps the work tree's rules.
    docs = _watch(tmp_path / "docs")
    assert _walked(docs) == {"b.txt"}
