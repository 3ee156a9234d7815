"""Unreachable is not deleted, end to end: the real daemon in a subprocess, the real model, real
folders moved away, made unreadable and unmounted under it. Every wait polls with a deadline."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import NOBODY_PREFIX, Daemon, cli, read_store, wait_for, write_config

TEXT = "A note about {topic}, long enough that there is something worth embedding here.\n"


def stored_sources(store_path: Path) -> set[str]:
    store = read_store(store_path)
    return set() if store is None else set(store["files"])


def live(cfg: Path, env: dict[str, str]) -> dict[str, Any]:
    done = cli(["status", "--config", str(cfg), "--json"], env)
    assert done.returncode == 0, done.stderr
    daemon = json.loads(done.stdout)["daemon"]
    assert isinstance(daemon, dict)
    return daemon


def unavailable(cfg: Path, env: dict[str, str]) -> list[dict[str, str]]:
    folders = live(cfg, env).get("unavailable_folders", [])
    assert isinstance(folders, list)
    return folders


def stop_cleanly(daemon: Daemon) -> None:
    died = daemon.proc.poll()
    code = daemon.stop()
    assert died is None, f"the daemon died with {died}:\n{daemon.log_path.read_text()[-8000:]}"
    assert code == 0, daemon.log_path.read_text()[-8000:]


def fill(inbox: Path, names: list[str]) -> None:
    for name in names:
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_text(TEXT.format(topic=name))


NAMES = ["a.txt", "b.md", "sub/c.txt"]
SOURCES = {f"inbox/{n}" for n in NAMES}


def test_a_folder_moved_away_keeps_its_entries_and_costs_nothing_back(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, daemon="rescan_interval_s = 1")
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    fill(inbox, NAMES)
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        for name in NAMES:
            daemon.wait_event("file_indexed", source=f"inbox/{name}")
        wait_for(lambda: stored_sources(store_path) == SOURCES, what="the first save")
        away = tmp_path / "away"
        inbox.rename(away)
        daemon.wait_event("folder_unavailable", path=str(inbox), level="error")
        [shown] = wait_for(lambda: unavailable(cfg, cli_env), what="status to show the folder")
        assert shown["path"] == str(inbox) and "missing" in shown["reason"] and shown["since"]
        # Several rescans later: logged once, nothing removed, from memory or from the file.
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 3, what="three rescans")
        assert len(daemon.events("folder_unavailable")) == 1
        assert daemon.events("file_removed") == []
        assert live(cfg, cli_env)["in_memory"]["files"] == 3
        assert stored_sources(store_path) == SOURCES
        # Changed while away, then moved back: only that file is indexed again.
        (away / "a.txt").write_text(TEXT.format(topic="the harbour, changed while away"))
        indexed_before = len(daemon.events("file_indexed"))
        away.rename(inbox)
        daemon.wait_event("folder_back", path=str(inbox))
        daemon.wait_event("file_indexed", source="inbox/a.txt", count=2)
        wait_for(lambda: unavailable(cfg, cli_env) == [], what="status to clear the folder")
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 2, what="two rescans")
        again = daemon.events("file_indexed")[indexed_before:]
        assert [e["source"] for e in again] == ["inbox/a.txt"], again
        # The watcher follows the folder again: a live delete removes at once, as before.
        (inbox / "b.md").unlink()
        daemon.wait_event("file_removed", source="inbox/b.md")
        wait_for(lambda: stored_sources(store_path) == SOURCES - {"inbox/b.md"}, what="the delete saved")
        fill(inbox, ["new.txt"])
        daemon.wait_event("file_indexed", source="inbox/new.txt")
    finally:
        stop_cleanly(daemon)


def test_a_folder_missing_at_start_keeps_its_entries(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, daemon="rescan_interval_s = 1")
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    fill(inbox, NAMES)
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        wait_for(lambda: stored_sources(store_path) == SOURCES, what="the first save")
    finally:
        stop_cleanly(daemon)
    inbox.rename(tmp_path / "away")
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        daemon.wait_event("folder_unavailable", path=str(inbox))
        assert live(cfg, cli_env)["in_memory"]["files"] == 3
        assert unavailable(cfg, cli_env)[0]["path"] == str(inbox)
        (tmp_path / "away").rename(inbox)
        daemon.wait_event("folder_back", path=str(inbox))
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 2, what="two rescans")
        assert daemon.events("file_indexed") == [], "nothing is embedded again"
        assert daemon.events("file_removed") == []
        fill(inbox, ["later.txt"])
        daemon.wait_event("file_indexed", source="inbox/later.txt")
    finally:
        stop_cleanly(daemon)
    assert stored_sources(store_path) == SOURCES | {"inbox/later.txt"}


def test_a_folder_no_longer_configured_leaves_at_restart(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    fill(inbox, ["a.txt"])
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        wait_for(lambda: stored_sources(store_path) == {"inbox/a.txt"}, what="the first save")
    finally:
        stop_cleanly(daemon)
    cfg = write_config(tmp_path, default_model, watch="other")
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        daemon.wait_event("file_removed", source="inbox/a.txt", reason="folder no longer watched")
        wait_for(lambda: stored_sources(store_path) == set(), what="the removal saved")
    finally:
        stop_cleanly(daemon)


def test_forget_with_and_without_the_daemon(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, daemon="rescan_interval_s = 1")
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    names = ["old/a.txt", "old/b.txt", "older.txt", "keep.txt"]
    fill(inbox, names)
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        wait_for(lambda: len(stored_sources(store_path)) == 4, what="the first save")
        away = tmp_path / "away"
        inbox.rename(away)
        daemon.wait_event("folder_unavailable", path=str(inbox))
        # The folder is gone for good: forget it through the daemon, by its path.
        done = cli(["forget", "--config", str(cfg), str(inbox / "old")], cli_env)
        assert done.returncode == 0, done.stderr
        assert "forgot inbox/old/a.txt" in done.stdout and "forgot inbox/old/b.txt" in done.stdout
        assert "by the running daemon" in done.stdout
        wait_for(
            lambda: stored_sources(store_path) == {"inbox/older.txt", "inbox/keep.txt"},
            what="the forget saved",
        )
        assert {e["source"] for e in daemon.events("file_removed")} == {"inbox/old/a.txt", "inbox/old/b.txt"}
        nothing = cli(["forget", "--config", str(cfg), "inbox/nothing-here", "--json"], cli_env)
        assert nothing.returncode == 0 and json.loads(nothing.stdout)["removed"] == []
    finally:
        stop_cleanly(daemon)
    # Without a daemon: the store itself, under its lock.
    done = cli(["forget", "--config", str(cfg), "inbox/older.txt", "--json"], cli_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "prefix": "inbox/older.txt",
        "removed": ["inbox/older.txt"],
        "via": "store",
    }
    assert stored_sources(store_path) == {"inbox/keep.txt"}


def test_forget_is_refused_over_tcp(tmp_path: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    import http.client

    cfg = write_config(tmp_path, default_model, extra='[serve]\ntcp = "127.0.0.1:0"')
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        [listening] = daemon.wait_event("api_listening")
        address = next(x for x in listening["listeners"] if x.startswith("tcp "))
        host, port = address.split()[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(
            "POST", "/v1/forget", body=b'{"prefix": "inbox"}', headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 403, response.read()
        assert json.loads(response.read())["error"]["code"] == "socket_only"
        conn.close()
    finally:
        stop_cleanly(daemon)


# -- a real mount unmounted under the daemon --------------------------------------------------


def _sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@pytest.fixture
def bind_mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``inbox`` as a bind mount of ``disk`` (skips where mounting is not permitted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    disk, inbox = tmp_path / "disk", tmp_path / "inbox"
    disk.mkdir()
    inbox.mkdir()
    proc = _sh("mount", "--bind", str(disk), str(inbox))
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")
    try:
        yield disk, inbox
    finally:
        for _ in range(3):
            if _sh("mountpoint", "-q", str(inbox)).returncode != 0:
                break
            if _sh("umount", str(inbox)).returncode != 0:
                _sh("umount", "-l", str(inbox))


def test_a_disk_unmounted_under_the_daemon_keeps_its_entries(
    tmp_path: Path, bind_mounted: tuple[Path, Path], default_model: Path, cli_env: dict[str, str]
) -> None:
    disk, inbox = bind_mounted
    cfg = write_config(tmp_path, default_model, daemon="rescan_interval_s = 1")
    store_path = tmp_path / "data" / "embeddings.json"
    fill(inbox, NAMES)
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    try:
        wait_for(lambda: stored_sources(store_path) == SOURCES, what="the first save")
        assert _sh("umount", str(inbox)).returncode == 0
        [event] = daemon.wait_event("folder_unavailable", path=str(inbox))
        assert "empty" in event["reason"], event
        assert unavailable(cfg, cli_env)[0]["path"] == str(inbox)
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 2, what="two rescans")
        assert daemon.events("file_removed") == [] and stored_sources(store_path) == SOURCES
        (disk / "sub" / "c.txt").write_text(TEXT.format(topic="changed while the disk was away"))
        indexed_before = len(daemon.events("file_indexed"))
        assert _sh("mount", "--bind", str(disk), str(inbox)).returncode == 0
        daemon.wait_event("folder_back", path=str(inbox))
        daemon.wait_event("file_indexed", source="inbox/sub/c.txt", count=2)
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 2, what="two rescans")
        assert [e["source"] for e in daemon.events("file_indexed")[indexed_before:]] == ["inbox/sub/c.txt"]
        # Watched again on the mounted file system: a live change there is seen.
        fill(inbox, ["after.txt"])
        daemon.wait_event("file_indexed", source="inbox/after.txt")
    finally:
        stop_cleanly(daemon)


# -- unreadable folders, as an unprivileged user ------------------------------------------------


def test_unreadable_folders_keep_their_entries(nobody_root: Path, cli_env: dict[str, str]) -> None:
    root = nobody_root
    cfg = write_config(root, next(root.glob("*.gguf")), daemon="rescan_interval_s = 1")
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    fill(inbox, NAMES)
    for folder in (inbox, inbox / "sub"):
        folder.chmod(0o755)
    daemon = Daemon(cfg, cli_env, "--log-level", "debug", prefix=NOBODY_PREFIX).ready()
    try:
        wait_for(lambda: stored_sources(store_path) == SOURCES, what="the first save")
        # A subfolder the daemon's user may no longer list.
        (inbox / "sub").chmod(0o000)
        [event] = daemon.wait_event("folder_unavailable", path=str(inbox / "sub"), level="error")
        assert "Permission denied" in event["reason"] and event["kept_files"] == 1
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 2, what="two rescans")
        assert daemon.events("file_removed") == [] and len(daemon.events("folder_unavailable")) == 1
        (inbox / "sub").chmod(0o755)
        daemon.wait_event("folder_back", path=str(inbox / "sub"))
        # The whole watched folder.
        inbox.chmod(0o000)
        daemon.wait_event("folder_unavailable", path=str(inbox))
        assert [f["path"] for f in unavailable(cfg, cli_env)] == [str(inbox)]
        rescans = len(daemon.events("rescan_done"))
        wait_for(lambda: len(daemon.events("rescan_done")) >= rescans + 2, what="two rescans")
        inbox.chmod(0o755)
        daemon.wait_event("folder_back", path=str(inbox))
        fill(inbox, ["later.txt"])
        daemon.wait_event("file_indexed", source="inbox/later.txt")
        assert daemon.events("file_removed") == []
        assert [e["source"] for e in daemon.events("file_indexed")].count("inbox/a.txt") == 1
    finally:
        inbox.chmod(0o755)
        (inbox / "sub").chmod(0o755)
        stop_cleanly(daemon)
    assert stored_sources(store_path) == SOURCES | {"inbox/later.txt"}


def test_each_files_state_from_the_daemon_and_from_the_store(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    import httpx

    extra = '[[watch]]\npath = "usb"\n'
    cfg = write_config(tmp_path, default_model, daemon="rescan_interval_s = 1", extra=extra)
    inbox, usb = tmp_path / "inbox", tmp_path / "usb"
    usb.mkdir()
    fill(inbox, ["a.txt", "b.md"])
    (inbox / "binary.txt").write_bytes(b"binary\x00\x00data")
    fill(usb, ["photo-notes.txt"])
    daemon = Daemon(cfg, cli_env, "--log-level", "debug").ready()
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(tmp_path / "data" / "embeddings.sock")),
        base_url="http://embedd",
        timeout=60,
    )
    try:
        daemon.wait_event("file_indexed", source="usb/photo-notes.txt")
        daemon.wait_event("file_skipped", source="inbox/binary.txt")
        usb.rename(tmp_path / "usb-away")
        daemon.wait_event("folder_unavailable", path=str(usb))

        def files(**query: Any) -> dict[str, Any]:
            answer = client.get("/v1/files", params=query)
            assert answer.status_code == 200, answer.text
            doc = answer.json()
            assert isinstance(doc, dict)
            return doc

        doc = wait_for(lambda: next((d for d in [files()] if d["total"] == 4), None), what="four files")
        by_source = {f["source"]: f for f in doc["files"]}
        assert set(doc) == {"files", "total", "next_offset"} and doc["next_offset"] is None
        assert [f["source"] for f in doc["files"]] == sorted(by_source)
        for f in doc["files"]:
            assert set(f) == {"source", "state", "chunks", "indexed_at", "reason", "since"}
        assert by_source["inbox/a.txt"]["state"] == "indexed" and by_source["inbox/a.txt"]["chunks"] == 1
        assert by_source["inbox/a.txt"]["indexed_at"].endswith("Z")
        skipped = by_source["inbox/binary.txt"]
        assert skipped["state"] == "skipped" and "binary" in skipped["reason"] and skipped["since"]
        gone = by_source["usb/photo-notes.txt"]
        assert gone["state"] == "unavailable" and "missing" in gone["reason"] and gone["chunks"] == 1
        assert [f["source"] for f in files(state="skipped")["files"]] == ["inbox/binary.txt"]
        assert files(prefix="usb/")["total"] == 1
        first = files(limit=1)
        assert len(first["files"]) == 1 and first["next_offset"] == 1 and first["total"] == 4
        assert files(limit=2, offset=3)["next_offset"] is None
        for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"state": "weird"}, {"limit": "x"}):
            assert client.get("/v1/files", params=bad).status_code == 400, bad
        # The CLI asks the daemon.
        done = cli(["status", "--config", str(cfg), "--files", "--failed"], cli_env)
        assert done.returncode == 0, done.stderr
        assert "inbox/binary.txt" in done.stdout and "inbox/a.txt" not in done.stdout
    finally:
        client.close()
        stop_cleanly(daemon)
    # Without a daemon: the store's files, all indexed, and a note saying so.
    done = cli(["status", "--config", str(cfg), "--files", "--json"], cli_env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["from"] == "store" and "no daemon" in doc["note"]
    assert {f["source"]: f["state"] for f in doc["files"]} == {
        "inbox/a.txt": "indexed",
        "inbox/b.md": "indexed",
        "usb/photo-notes.txt": "indexed",
    }


def test_forget_exit_codes(tmp_path: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    cfg = write_config(tmp_path, default_model, extra='[serve]\nsocket = ""')
    nothing = cli(["forget", "--config", str(cfg), "inbox/a.txt"], cli_env)
    assert nothing.returncode == 1 and "no store" in nothing.stderr, nothing.stderr
    empty = cli(["forget", "--config", str(cfg), "/"], cli_env)
    assert empty.returncode == 2, empty.stderr
    fill(tmp_path / "inbox", ["a.txt"])
    daemon = Daemon(cfg, cli_env).ready()
    try:
        wait_for(lambda: stored_sources(tmp_path / "data" / "embeddings.json"), what="the first save")
        locked = cli(["forget", "--config", str(cfg), "inbox/a.txt"], cli_env)
        assert locked.returncode == 4, locked.stderr
        assert "Unix socket" in locked.stderr
    finally:
        stop_cleanly(daemon)
