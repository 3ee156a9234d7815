"""Crash safety, end to end: SIGKILL at random instants, failing disks, damaged stores, bad models.

Everything runs through the real ``embedd`` CLI in a subprocess with the real default model.
Write failures use real file systems, which we can mount as root in the sandbox: a small tmpfs
for ENOSPC, a read-only remount for EROFS, and an ext4 image on a loop device whose size limit
is cut below its free blocks for EIO (the kernel then fails every new data block with "attempt
to access beyond end of device"). Those tests skip, saying why, where mounting is not allowed.

The kill test logs its seed; rerun it with ``EMBEDD_CRASH_SEED=<seed>``. ``EMBEDD_CRASH_KILLS``
changes the number of kills (default 200) and ``EMBEDD_CRASH_REPORT=<file>`` writes the
summary as JSON.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from support import Daemon, read_store, wait_for

from daemon.errors import StoreError
from daemon.service.saver import SAVE_RETRY_S
from daemon.store.format import content_hash, entry_id
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

STORE = Path("data") / "embeddings.json"
CHUNK_SIZE = 200
# Every word has at most 7 letters and a paragraph at most 20 of them, so a paragraph (at most
# 12 + 20 * 8 characters) is never split: each chunk holds one or more whole paragraphs.
WORDS = """
river bread tax bicycle opera tea glacier chess harbour lantern orchard meadow copper
violin granite falcon canyon saddle pepper ledger rocket marble walnut thunder basket ferry
cactus tunnel quartz beacon pillow velvet anchor meteor turnip parrot island kettle signal
cobalt maple oyster candle pebble comet willow spruce mango cedar lemon barley otter heron
badger
""".split()  # noqa: SIM905 - a word list reads best as prose


def write_crash_config(root: Path, model: Path, *, chunk_size: int = CHUNK_SIZE) -> Path:
    """A config watching ``root/inbox`` into ``root/data``, with JSON logs and a short debounce."""
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(
        f"""
[model]
path = "{model}"

[store]
path = "{STORE.as_posix()}"

[[watch]]
path = "inbox"

[chunking]
size = {chunk_size}
overlap = {chunk_size // 10}

[daemon]
debounce_ms = 100
log_format = "json"
"""
    )
    return cfg


# ----- the corpus: files of distinct short paragraphs, with every version ever written -----


class Corpus:
    """Text files in ``inbox`` made of distinct paragraphs; remembers every version of each."""

    def __init__(self, inbox: Path, rng: random.Random, *, max_paragraphs: int) -> None:
        self.inbox = inbox
        self.rng = rng
        self.max_paragraphs = max_paragraphs
        self.current: dict[str, list[str]] = {}  # file name -> its paragraphs
        self.history: dict[str, list[str]] = {}  # source -> every text it ever had
        self._paragraphs = 0
        self._names = 0

    def paragraph(self) -> str:
        n = self._paragraphs
        self._paragraphs += 1
        words = " ".join(self.rng.choices(WORDS, k=self.rng.randint(12, 20)))
        return f"Note {n}: {words.capitalize()}."

    def total(self) -> int:
        return sum(len(p) for p in self.current.values())

    def _write(self, name: str) -> None:
        text = "\n\n".join(self.current[name]) + "\n"
        (self.inbox / name).write_text(text)
        self.history.setdefault(f"inbox/{name}", []).append(text)

    def add(self, paragraphs: int) -> str:
        name = f"doc{self._names:04d}.txt"
        self._names += 1
        self.current[name] = [self.paragraph() for _ in range(paragraphs)]
        self._write(name)
        return f"add {name} ({paragraphs})"

    def edit(self) -> str:
        name = self.rng.choice(sorted(self.current))
        paras = self.current[name]
        for _ in range(self.rng.randint(1, 3)):
            paras[self.rng.randrange(len(paras))] = self.paragraph()
        if self.rng.random() < 0.3:
            paras.extend(self.paragraph() for _ in range(self.rng.randint(1, 4)))
        self._write(name)
        return f"edit {name}"

    def rename(self) -> str:
        old = self.rng.choice(sorted(self.current))
        new = f"doc{self._names:04d}.txt"
        self._names += 1
        (self.inbox / old).rename(self.inbox / new)
        self.current[new] = self.current.pop(old)
        self.history.setdefault(f"inbox/{new}", []).append((self.inbox / new).read_text())
        return f"rename {old} -> {new}"

    def delete(self) -> str:
        name = self.rng.choice(sorted(self.current))
        (self.inbox / name).unlink()
        del self.current[name]
        return f"delete {name}"

    def mutate(self) -> list[str]:
        """One round of changes made while the daemon is down (so every start has work)."""
        done = []
        if self.rng.random() < 0.6 or len(self.current) < 5:
            done.append(self.add(self.rng.randint(8, 24)))
        for _ in range(self.rng.choice((1, 1, 2))):
            done.append(self.edit())
        if self.rng.random() < 0.1:
            done.append(self.rename())
        while self.total() > self.max_paragraphs:
            done.append(self.delete())
        return done

    def sources(self) -> dict[str, str]:
        """Current source name -> current text."""
        return {f"inbox/{name}": self.history[f"inbox/{name}"][-1] for name in self.current}


# ----- checking a store file -----


def check_store(doc: dict[str, Any], corpus: Corpus, *, current: bool = False) -> list[str]:
    """What is wrong with ``doc``: format, every entry, and that each file is one whole version.

    Each source must hold exactly one version the test wrote: its recorded size is that
    version's, its chunks lie inside it and cover every paragraph of it. With ``current``
    the store must match the folder as it is now, stat signatures included.
    """
    problems: list[str] = []
    head = {k: doc.get(k) for k in ("version", "model", "dimensions")}
    if head != {"version": "1.0", "model": "all-MiniLM-L6-v2", "dimensions": 384}:
        problems.append(f"header: {head}")
    fp = doc.get("fingerprint") or {}
    if fp.get("chunk_size") != CHUNK_SIZE or fp.get("pooling") != "mean":
        problems.append(f"fingerprint: {fp}")
    entries = doc.get("embeddings")
    files = doc.get("files")
    if not isinstance(entries, list) or not isinstance(files, dict):
        return [*problems, "embeddings or files missing"]
    if doc.get("count") != len(entries):
        problems.append(f"count {doc.get('count')} != {len(entries)} entries")
    ids = [e.get("id") for e in entries]
    if len(set(ids)) != len(ids):
        problems.append(f"{len(ids) - len(set(ids))} duplicate ids")
    if entries:
        try:
            vectors = np.asarray([e["embedding"] for e in entries], dtype=np.float64)
        except (KeyError, ValueError) as exc:
            return [*problems, f"embeddings are not a matrix: {exc}"]
        if vectors.shape != (len(entries), 384) or not np.isfinite(vectors).all():
            problems.append(f"vectors: shape {vectors.shape} or not finite")
        elif not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
            problems.append("vectors are not unit length")
    by_source: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        meta = e.get("metadata", {})
        if set(e) != {"id", "content", "metadata", "embedding", "timestamp"} or not isinstance(
            e.get("timestamp"), int
        ):
            problems.append(f"entry {e.get('id')}: keys {sorted(e)}")
            continue
        if meta.get("hash") != hashlib.sha256(e["content"].encode()).hexdigest():
            problems.append(f"entry {e['id']}: hash is not sha256(content)")
        if e["id"] != entry_id(meta.get("source", ""), meta.get("chunk", -1)):
            problems.append(f"entry {e['id']}: id does not match source and chunk")
        by_source.setdefault(meta.get("source", ""), []).append(e)
    if set(files) != set(by_source):
        problems.append(f"files map {sorted(set(files) ^ set(by_source))[:5]} disagrees with the entries")
    for source, chunks in by_source.items():
        chunks.sort(key=lambda e: e["metadata"]["chunk"])
        if [e["metadata"]["chunk"] for e in chunks] != list(range(len(chunks))):
            problems.append(f"{source}: chunk positions are not 0..{len(chunks) - 1}")
        versions = corpus.history.get(source, [])
        if current:
            versions = versions[-1:] if f"{source[len('inbox/') :]}" in corpus.current else []
        size = (files.get(source) or {}).get("size")
        if not any(_is_version(text, size, chunks) for text in versions):
            problems.append(f"{source}: holds no whole version of the file ({len(versions)} known)")
    if current:
        wanted = corpus.sources()
        if set(files) != set(wanted):
            problems.append(f"sources {sorted(set(files) ^ set(wanted))[:5]} differ from the folder")
        for source in set(files) & set(wanted):
            st = (corpus.inbox / source[len("inbox/") :]).stat()
            if files[source] != {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}:
                problems.append(f"{source}: files entry {files[source]} is not the file's stat")
    return problems


def _is_version(text: str, size: object, chunks: list[dict[str, Any]]) -> bool:
    if size != len(text.encode()):
        return False
    contents = [e["content"] for e in chunks]
    if not all(c in text for c in contents):
        return False
    joined = "\n\n".join(contents)
    return all(p in joined for p in text.strip().split("\n\n"))


# ----- the kill test -----


@dataclass
class Kill:
    """One SIGKILL and what it left behind."""

    n: int
    mode: str
    after_s: float
    phase: str
    temp_left: bool
    cache_temp_left: bool
    rewritten: bool
    survived: bool
    # A temp an earlier kill left: removed with store_stale_temp_removed by this run, if it got
    # as far as opening the store (None: no temp at its start, or it never opened the store).
    stale_temp_removed: bool | None = None
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


def _logged(daemon: Daemon, event: str) -> bool:
    return f'"event":"{event}"'.encode() in daemon.log_path.read_bytes()


def _saved(daemon: Daemon) -> bool:
    return _logged(daemon, "store_saved")


def _phase(daemon: Daemon, temp_left: bool, rewritten: bool) -> str:
    """What the daemon was doing when it died, from its log and the files it left."""
    names = {e["event"] for e in daemon.events()}
    if "model_loaded" not in names:
        return "startup: imports, loading the model"
    if "store_opened" not in names:
        return "startup: opening the store"
    if "daemon_ready" not in names:
        return "startup: scanning the folder"
    if temp_left:
        return "saving: writing the temp file"
    if "store_saved" not in names:
        return "saving: renamed, not yet logged" if rewritten else "indexing"
    return "after a save (cache or idle)"


def _kill_when(daemon: Daemon, fast: Callable[[], bool], slow: Callable[[], bool], limit_s: float) -> None:
    """SIGKILL once ``fast()`` (polled every ms) or ``slow()`` (every 25 ms) holds, or at ``limit_s``."""
    end = time.monotonic() + limit_s
    polls = 0
    while daemon.proc.poll() is None and time.monotonic() < end:
        if fast() or (polls % 25 == 0 and slow()):
            break
        polls += 1
        time.sleep(0.001)
    if daemon.proc.poll() is None:
        os.kill(daemon.proc.pid, signal.SIGKILL)


def _kill_at_random(daemon: Daemon, mode: str, rng: random.Random, horizon: float) -> None:
    """Kill ``daemon`` at an instant drawn for ``mode``.

    anytime: uniform over [0, horizon) after the spawn, horizon being a little more than a
    run usually takes to finish its work, so kills land in startup, indexing and saving alike.
    saving / cache: the moment the JSON's (or the cache's) temp file shows up, once the run
    has opened the store (a temp seen before that is an earlier kill's, about to be removed).
    settled: up to 0.3 s after the run logged a save (cache writes, idle).
    A run that finished its work without being caught is killed once it logs the save.
    """
    path = daemon.config.parent / STORE
    tmp = path.with_name(path.name + ".tmp")
    cache_tmp = path.with_name(path.name + ".idx.tmp")
    t0 = time.monotonic()
    if mode == "anytime":
        delay = rng.uniform(0.0, horizon)
        _kill_when(daemon, lambda: time.monotonic() - t0 >= delay, lambda: False, horizon + 1)
    elif mode in ("saving", "cache"):
        temp = tmp if mode == "saving" else cache_tmp
        opened = False

        def opened_or_saved() -> bool:
            nonlocal opened
            opened = opened or _logged(daemon, "store_opened")
            return _saved(daemon)

        _kill_when(daemon, lambda: opened and temp.exists(), opened_or_saved, 120)
    else:
        wait_for(lambda: _saved(daemon) or daemon.proc.poll() is not None, what="a save")
        time.sleep(rng.uniform(0.0, 0.3))
        if daemon.proc.poll() is None:
            os.kill(daemon.proc.pid, signal.SIGKILL)


def _first_save_s(daemon: Daemon, spawned: float) -> float | None:
    """Seconds from the spawn to the run's first logged save, if it logged one."""
    saves = daemon.events("store_saved")
    if not saves:
        return None
    return datetime.fromisoformat(saves[0]["timestamp"]).timestamp() - spawned


def _verify_after_kill(path: Path, before: bytes | None, corpus: Corpus) -> tuple[bool, list[str]]:
    """(rewritten, problems) of the store a kill left behind."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False, [] if before is None else ["the store file is gone"]
    if raw == before:
        return False, []
    problems: list[str] = []
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        return True, [f"json.loads fails: {exc}"]
    problems += check_store(doc, corpus)
    if before is not None and doc.get("updated", "") <= json.loads(before).get("updated", ""):
        problems.append("the file changed but its updated time did not advance")
    try:
        with capture_logs():  # its info lines would drown the test's output
            reader = Store.open_readonly(path)  # the daemon's own loader
        if reader.count != len(doc["embeddings"]):
            problems.append(f"the loader sees {reader.count} entries, json.loads {len(doc['embeddings'])}")
    except StoreError as exc:
        problems.append(f"the daemon's loader refuses it: {exc}")
    return True, problems


def wait_converged(
    path: Path,
    corpus: Corpus,
    daemon: Daemon,
    timeout: float = 300.0,
    read: Callable[[Path], dict[str, Any] | None] = read_store,
) -> dict[str, Any]:
    """The store once ``read`` (the JSON file alone, by default) shows the folder as it is."""
    deadline = time.monotonic() + timeout
    problems: list[str] = ["no store yet"]
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {daemon.proc.returncode}:\n{daemon.log_path.read_text()}"
            )
        with contextlib.suppress(ValueError):  # caught mid-read of a log line: retry
            doc = read(path)
            if doc is not None:
                problems = check_store(doc, corpus, current=True)
                if not problems:
                    return doc
        time.sleep(0.5)
    raise AssertionError(f"the store never converged to the folder: {problems[:10]}")


@pytest.mark.slow
def test_sigkill_at_random_instants_never_damages_the_store(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    seed = int(os.environ.get("EMBEDD_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    kills = int(os.environ.get("EMBEDD_CRASH_KILLS") or 200)
    # Every save rewrites the JSON file here, whatever its size (it grows past the journal's
    # threshold): this test kills full saves; test_crash_journal.py kills the journal and folds.
    cli_env = {**cli_env, "EMBEDD_JOURNAL_ABOVE_BYTES": str(1 << 50)}
    print(f"\ncrash test seed {seed} (rerun with EMBEDD_CRASH_SEED={seed}), {kills} kills")
    rng = random.Random(seed)
    cfg = write_crash_config(tmp_path, default_model)
    path = tmp_path / STORE
    tmp = path.with_name(path.name + ".tmp")
    cache_tmp = path.with_name(path.name + ".idx.tmp")
    corpus = Corpus(tmp_path / "inbox", rng, max_paragraphs=3000)
    started = time.monotonic()
    for _ in range(45):
        corpus.add(rng.randint(20, 40))

    # A clean first build, so every kill hits a store of a few thousand chunks.
    daemon = Daemon(cfg, cli_env)
    try:
        daemon.ready()
        wait_converged(path, corpus, daemon)
    finally:
        code = daemon.stop()
    assert code == 0
    build_s = time.monotonic() - started

    done: list[Kill] = []
    logs: list[Daemon] = []
    finish_times: list[float] = [6.0]
    for n in range(kills):
        changes = corpus.mutate()
        before = path.read_bytes() if path.exists() else None
        stale_temp = tmp.exists()
        mode = rng.choices(("anytime", "saving", "cache", "settled"), weights=(65, 20, 8, 7))[0]
        horizon = 1.2 * statistics.median(finish_times[-9:])
        spawned = time.time()
        daemon = Daemon(cfg, cli_env)
        logs.append(daemon)
        try:
            _kill_at_random(daemon, mode, rng, horizon)
            after = time.time() - spawned
            exited_alone = daemon.proc.wait(timeout=60) != -signal.SIGKILL
        finally:
            daemon.kill()
        finished = _first_save_s(daemon, spawned)
        if finished is not None:
            finish_times.append(finished)
        rewritten, problems = _verify_after_kill(path, before, corpus)
        if exited_alone:
            problems.append(f"the daemon exited by itself:\n{daemon.log_path.read_text()[-2000:]}")
        # A temp from an earlier kill survives until a run gets as far as opening the store.
        opened = bool(daemon.events("store_opened"))
        temp_left = tmp.exists() and (not stale_temp or opened)
        removed = bool(daemon.events("store_stale_temp_removed")) if stale_temp and opened else None
        done.append(
            Kill(
                n,
                mode,
                round(after, 3),
                _phase(daemon, temp_left, rewritten),
                temp_left,
                cache_tmp.exists(),
                rewritten,
                not problems,
                removed,
                problems[:5],
                changes,
            )
        )
        if problems:
            print(f"kill {n} ({mode}, {after:.2f}s): {problems[:5]}")

    kills_s = time.monotonic() - started - build_s
    summary: dict[str, Any] = {
        "seed": seed,
        "kills_made": len(done),
        "kills_survived": sum(k.survived for k in done),
        "store_rewritten_before_kill": sum(k.rewritten for k in done),
        "temp_left_by_kill": sum(k.temp_left for k in done),
        "cache_temp_left_by_kill": sum(k.cache_temp_left for k in done),
        "phases": dict(Counter(k.phase for k in done).most_common()),
        "modes": dict(Counter(k.mode for k in done).most_common()),
        "build_s": round(build_s, 1),
        "kills_s": round(kills_s, 1),
    }
    report = os.environ.get("EMBEDD_CRASH_REPORT")

    def write_report() -> None:
        print("crash summary:", json.dumps(summary, indent=1))
        if report:
            Path(report).write_text(json.dumps({**summary, "kills": [asdict(k) for k in done]}, indent=1))

    write_report()

    # A final clean run: it catches up with the folder and leaves no temp behind.
    daemon = Daemon(cfg, cli_env)
    logs.append(daemon)
    try:
        daemon.ready()
        final = wait_converged(path, corpus, daemon)
    finally:
        code = daemon.stop()
    assert code == 0
    leftovers = sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp"))
    corrupt_events = [e for d in logs for e in d.events("store_corrupt")]
    aside = sorted(p.name for p in path.parent.iterdir() if ".corrupt-" in p.name or ".bak-" in p.name)
    summary |= {
        "final_entries": len(final["embeddings"]),
        "final_files": len(final["files"]),
        "store_corrupt_events": len(corrupt_events),
        "moved_aside": aside,
        "temps_after_clean_stop": leftovers,
        "stale_temps_not_removed": [k.n for k in done if k.stale_temp_removed is False],
        "total_s": round(time.monotonic() - started, 1),
    }
    write_report()
    failed = [k for k in done if not k.survived]
    assert not failed, (
        f"seed {seed}: {len(failed)} kills left a bad store or a dead daemon, first: {failed[0]}"
    )
    assert not corrupt_events and not aside, f"seed {seed}: a store was moved aside: {corrupt_events}"
    assert not leftovers, f"seed {seed}: temps left after a clean stop: {leftovers}"
    assert not summary["stale_temps_not_removed"], f"seed {seed}: a run kept a stale temp: {summary}"
    assert summary["final_entries"] >= 1000


# ----- write failures on real file systems -----


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _must(*cmd: str) -> str:
    proc = _sh(*cmd)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()}"
    return proc.stdout.strip()


_LOOP_GET_STATUS64 = 0x4C05
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_INFO64_SIZE = 232
_LOOP_SIZELIMIT_AT = 32  # after lo_device, lo_inode, lo_rdevice, lo_offset (u64 each)


class Mounted:
    """A real file system mounted on the store folder, with one way to make writes fail."""

    reason = ""  # what the daemon's error must say

    def __init__(self, where: Path) -> None:
        self.where = where

    def inject(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.heal()
        if _sh("umount", str(self.where)).returncode != 0:
            _sh("umount", "-l", str(self.where))


class Tmpfs(Mounted):
    """A 32 MiB tmpfs mounted on the store's folder (skips the test where mounting is refused)."""

    def __init__(self, where: Path) -> None:
        super().__init__(where)
        proc = _sh("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where))
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


class FullTmpfs(Tmpfs):
    """ENOSPC: a tmpfs whose size is cut to what it already holds, plus a little."""

    reason = "No space left on device"

    def inject(self) -> None:
        st = os.statvfs(self.where)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        _must("mount", "-o", f"remount,size={used + 4096}", str(self.where))

    def heal(self) -> None:
        _must("mount", "-o", "remount,size=32m", str(self.where))


class ReadOnly(Tmpfs):
    """EROFS: the store's tmpfs remounted read-only while the daemon runs."""

    reason = "Read-only file system"

    def inject(self) -> None:
        # EBUSY while a file there is open for writing (the daemon mid-save): try again.
        wait_for(
            lambda: _sh("mount", "-o", "remount,ro", str(self.where)).returncode == 0,
            what="a read-only remount of the store folder",
        )

    def heal(self) -> None:
        _must("mount", "-o", "remount,rw", str(self.where))


class FailingDisk(Mounted):
    """EIO: ext4 (no journal, errors=continue) on a loop device cut short below its free blocks."""

    reason = "Input/output error"

    def __init__(self, where: Path) -> None:
        super().__init__(where)
        self.image = where.parent / "disk.img"
        self.device = ""
        for tool in ("losetup", "mkfs.ext4", "dumpe2fs"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed")
        with open(self.image, "wb") as f:
            f.truncate(64 << 20)
        _must("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0", str(self.image))
        layout = _must("dumpe2fs", str(self.image))
        block = int(re.search(r"^Block size:\s+(\d+)", layout, re.M).group(1))  # type: ignore[union-attr]
        group0 = layout[layout.index("Group 0:") :]
        first_free = int(re.search(r"Free blocks: (\d+)", group0).group(1))  # type: ignore[union-attr]
        # Every block written from now on lies at or past the first free one; metadata lies below.
        self.limit = first_free * block
        proc = _sh("losetup", "-f", "--show", str(self.image))
        if proc.returncode != 0:
            pytest.skip(f"cannot set up a loop device here: {proc.stderr.strip()}")
        self.device = proc.stdout.strip()
        proc = _sh("mount", "-t", "ext4", "-o", "errors=continue", self.device, str(where))
        if proc.returncode != 0:
            _sh("losetup", "-d", self.device)
            pytest.skip(f"cannot mount ext4 on a loop device here: {proc.stderr.strip()}")

    def _set_limit(self, limit: int) -> None:
        fd = os.open(self.device, os.O_RDONLY)
        try:
            info = bytearray(_LOOP_INFO64_SIZE)
            fcntl.ioctl(fd, _LOOP_GET_STATUS64, info)
            struct.pack_into("<Q", info, _LOOP_SIZELIMIT_AT, limit)
            fcntl.ioctl(fd, _LOOP_SET_STATUS64, bytes(info))
        finally:
            os.close(fd)

    def inject(self) -> None:
        os.sync()  # nothing of the good state may be waiting for writeback
        self._set_limit(self.limit)

    def heal(self) -> None:
        self._set_limit(0)

    def close(self) -> None:
        super().close()
        if self.device:
            _sh("losetup", "-d", self.device)


@pytest.fixture(params=[FullTmpfs, ReadOnly, FailingDisk], ids=["ENOSPC", "read-only", "EIO"])
def failing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    if os.geteuid() != 0:
        pytest.skip("mounting file systems needs root")
    where = tmp_path / STORE.parent
    where.mkdir(parents=True)
    mounted: Mounted = request.param(where)
    try:
        yield mounted
    finally:
        mounted.close()


def test_write_failure_keeps_the_old_store_and_is_retried(
    failing_store: Mounted, tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_crash_config(tmp_path, default_model)
    path = tmp_path / STORE
    inbox = tmp_path / "inbox"
    for i in range(3):
        # A few chunks each, so the store is far bigger than the free space of a full disk.
        (inbox / f"doc{i}.txt").write_text(
            "\n\n".join(f"Document {i}, part {k}, is about harbours and lanterns." for k in range(12))
        )
    daemon = Daemon(cfg, cli_env).ready()
    try:
        wait_for(lambda: (s := read_store(path)) is not None and len(s["files"]) == 3, what="the first save")
        old = path.read_bytes()

        failing_store.inject()
        (inbox / "late.txt").write_text("A late file about volcanoes, written while the disk fails.\n")
        failures = daemon.wait_event("store_save_failed", count=2, timeout=180)
        assert all(failing_store.reason in e["reason"] for e in failures), failures
        assert all("intact" in e["hint"] for e in failures)
        assert [e["retry_in_s"] for e in failures[:2]] == list(SAVE_RETRY_S[:2])
        assert daemon.proc.poll() is None, "the daemon keeps running"
        assert path.read_bytes() == old
        assert not path.with_name(path.name + ".tmp").exists()

        failing_store.heal()
        healed = time.monotonic()
        saved = wait_for(
            lambda: (s := read_store(path)) is not None and "inbox/late.txt" in s["files"] and s,
            timeout=240,
            what="the retry to write the store once the fault is gone",
        )
        caught_up = time.monotonic() - healed
        assert len(saved["files"]) == 4 and saved["count"] == len(saved["embeddings"])
        assert daemon.proc.poll() is None
    finally:
        code = daemon.stop()
    assert code == 0
    delays = [e["retry_in_s"] for e in daemon.events("store_save_failed")]
    print(
        f"\n{failing_store.reason}: {len(delays)} failed saves (retry_in_s {delays}),"
        f" store written {caught_up:.1f} s after the fault was removed"
    )
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_old_store_does_not_block_later_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save splices unchanged entries from the old file; if reading it fails with EIO (a bad
    block under it), the retry writes every entry from memory instead of failing forever.

    No mount can make only the old file unreadable, so this one injects the fault in-process.
    """
    path = tmp_path / STORE
    fp = Fingerprint("ab" * 32, "mean", True, 500, 50)
    rng = np.random.default_rng(5)

    def entries(source: str, n: int) -> list[NewEntry]:
        texts = [f"{source} chunk {i}" for i in range(n)]
        vecs = rng.standard_normal((n, 8)).astype(np.float32)
        return [
            NewEntry(t, None, i, content_hash(t), vecs[i], 1_764_100_000_000 + i) for i, t in enumerate(texts)
        ]

    store = Store.open(path, model="m", dimensions=8, fingerprint=fp)
    try:
        for k in range(3):
            store.replace_source(f"inbox/f{k}.txt", entries(f"inbox/f{k}.txt", 4), FileState(10 + k, k, k))
        store.save()
        old = path.read_bytes()
        store.replace_source("inbox/new.txt", entries("inbox/new.txt", 2), FileState(99, 9, 9))

        def bad_block(*args: object) -> int:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "copy_file_range", bad_block)
        with pytest.raises(StoreError, match="Input/output error"):
            store.save()
        assert path.read_bytes() == old and store.dirty
        stats = store.save()  # the old file is still unreadable
        assert stats.saved and stats.entries_reused == 0 and stats.entries_written == 14
    finally:
        store.close()
    monkeypatch.undo()
    assert Store.open_readonly(path).sources() == {f"inbox/f{k}.txt" for k in range(3)} | {"inbox/new.txt"}


# ----- a damaged store at start -----

INBOX_FILES = {
    f"note{i}.md": f"# Note {i}\n\nThis note is about {topic}, and only about {topic}.\n"
    for i, topic in enumerate(["rivers", "bread", "chess", "opera", "glaciers"])
}


def _write_inbox(root: Path) -> None:
    for name, text in INBOX_FILES.items():
        (root / "inbox" / name).write_text(text)


@pytest.fixture(scope="module")
def valid_store(
    tmp_path_factory: pytest.TempPathFactory, default_model: Path, cli_env: dict[str, str]
) -> bytes:
    """The bytes of a store the daemon wrote for ``INBOX_FILES``."""
    root = tmp_path_factory.mktemp("valid")
    cfg = write_crash_config(root, default_model)
    _write_inbox(root)
    daemon = Daemon(cfg, cli_env).ready()
    try:
        store = wait_for(
            lambda: (s := read_store(root / STORE)) is not None and len(s["files"]) == len(INBOX_FILES) and s,
            what="the store of the inbox",
        )
    finally:
        code = daemon.stop()
    assert code == 0
    assert store["count"] >= len(INBOX_FILES)
    return (root / STORE).read_bytes()


def _vector_cut_short(raw: bytes) -> bytes:
    doc = json.loads(raw)
    doc["embeddings"][1]["embedding"] = doc["embeddings"][1]["embedding"][:383]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: b"",
        lambda raw: raw[: len(raw) // 2],
        lambda raw: bytes(random.Random(7).randrange(256) for _ in range(4096)),
        lambda raw: b'{"hello": "not a store"}',
        _vector_cut_short,
    ],
    ids=["empty", "truncated", "garbage", "json-not-a-store", "wrong-dimensions"],
)
def test_corrupt_store_is_moved_aside_and_rebuilt(
    damage: Callable[[bytes], bytes],
    valid_store: bytes,
    tmp_path: Path,
    default_model: Path,
    cli_env: dict[str, str],
) -> None:
    cfg = write_crash_config(tmp_path, default_model)
    _write_inbox(tmp_path)
    path = tmp_path / STORE
    path.parent.mkdir()
    bad = damage(valid_store)
    path.write_bytes(bad)
    daemon = Daemon(cfg, cli_env)
    try:
        (event,) = daemon.wait_event("store_corrupt")
        assert event["level"] == "warning" and event["path"] == str(path) and event["reason"]
        moved = Path(event["moved_to"])
        assert moved.parent == path.parent and moved.name.startswith("embeddings.json.corrupt-")
        assert moved.read_bytes() == bad, "the damaged file is kept, not overwritten"
        store = wait_for(
            lambda: (s := read_store(path)) is not None and len(s["files"]) == len(INBOX_FILES) and s,
            what="the store rebuilt from the watched folder",
        )
        assert {f"inbox/{n}" for n in INBOX_FILES} == set(store["files"])
        assert store["count"] == len(store["embeddings"]) >= len(INBOX_FILES)
    finally:
        code = daemon.stop()
    assert code == 0
    print(f"\nstore_corrupt: {event['reason']}")


def test_store_of_another_width_is_refused_and_left_alone(
    valid_store: bytes, tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    """A consistent store of 768-wide vectors is another model's, not damage: exit 5, untouched."""
    cfg = write_crash_config(tmp_path, default_model)
    _write_inbox(tmp_path)
    doc = json.loads(valid_store)
    doc["dimensions"] = 768
    for e in doc["embeddings"]:
        e["embedding"] = e["embedding"] * 2
    path = tmp_path / STORE
    path.parent.mkdir()
    path.write_bytes(json.dumps(doc).encode())
    before = path.read_bytes()
    daemon = Daemon(cfg, cli_env)
    code = daemon.proc.wait(timeout=120)
    daemon.stop()
    assert code == 5
    (event,) = daemon.events("fingerprint_mismatch")
    assert "dimensions: 768 -> 384" in event["error"] and "--reembed" in event["error"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["embeddings.json", "embeddings.json.lock"]


# ----- a bad model file -----


def _half_of(model: Path) -> bytes:
    with open(model, "rb") as f:
        return f.read(model.stat().st_size // 2)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "file not found"),
        (lambda m: b"", "not a GGUF file"),
        (_half_of, "truncated"),
        (lambda m: b"PK\x03\x04 this is a zip, not a model\n" * 100, "not a GGUF file"),
    ],
    ids=["missing", "empty", "truncated", "not-gguf"],
)
def test_bad_model_exits_3_before_writing_anything(
    content: Callable[[Path], bytes] | None,
    says: str,
    tmp_path: Path,
    default_model: Path,
    cli_env: dict[str, str],
) -> None:
    model = tmp_path / "models" / "all-MiniLM-L6-v2.f32.gguf"
    model.parent.mkdir()
    if content is not None:
        model.write_bytes(content(default_model))
    cfg = write_crash_config(tmp_path, model)
    _write_inbox(tmp_path)
    daemon = Daemon(cfg, cli_env)
    code = daemon.proc.wait(timeout=120)
    daemon.stop()
    assert code == 3
    (event,) = daemon.events("model_error")
    assert str(model) in event["error"] and says in event["error"], event
    assert not (tmp_path / STORE.parent).exists(), "the store folder is not even created"
    print(f"\nmodel_error: {event['error']}")
