"""How the JSON store behaves at scale: file size, save, load, one-file edit, memory.

Builds a store of ``--n`` chunks (default 100,000: random unit vectors, ~500-character texts,
``--per-file`` chunks per source) and measures each phase in a fresh child process, so
every peak RSS belongs to that phase alone:

- build: fill an empty store in memory and do the first (full) save;
- warm open: open with the sidecar cache, then one-file edits (replace one source's chunks
  with new ones and save), timed until the new file is durable and until save() returns;
- cold open: the same with the sidecar cache deleted, so the whole JSON is parsed;
- read-only open: what ``embedd search``/``status`` pay, then until a search without the daemon
  has its hits (snapshot, the keyword sidecar's check, ten entries; the model's load left out);
- with ``--before DIR`` (a checkout of main, e.g. /work/main), the open and edit phases run a
  second time with that tree's ``daemon`` package on the same store, so the table shows
  before and after side by side; after the edits the store is reopened (the journal replayed)
  and folded (the full rewrite the journal defers). Each tree first opens the store once,
  untimed, so that its warm open reads a cache of its own format.

The keyword sidecar is left out (``keyword=False``): it is measured by bench/retrieval.py, and
its cost is the same before and after. Bytes written per edit count what reaches the disk:
serialised and spliced JSON bytes (a splice is a copy, not a reflink, on ext4), the sidecar
cache, or the journal record.

Prints the machine (bench/machine.py) and a markdown table. The page cache is warm
throughout (the file was just written); nothing here drops caches on a shared machine.

    python bench/store_scale.py            # 100,000 chunks in a temp folder
    python bench/store_scale.py --n 5000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

# A child run for --before imports that tree's daemon package instead of ours.
_CODE = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--code=")), "")
sys.path.insert(0, _CODE or str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402 - after the path is set

from daemon.store.cache import cache_path  # noqa: E402
from daemon.store.format import content_hash  # noqa: E402
from daemon.store.store import FileState, Fingerprint, NewEntry, Store  # noqa: E402

DIMS = 384
MODEL = "all-MiniLM-L6-v2"
FINGERPRINT = Fingerprint("0" * 64, "mean", True, 500, 50)
_WORDS = " ".join(
    [
        "the store keeps every chunk of text with its vector so a restart finds unchanged files",
        "without reading them again while edits rewrite only what moved embedding daemon watch",
    ]
).split(" ")


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _entries(rng: np.random.Generator, source: str, count: int, now: int) -> list[NewEntry]:
    vectors = rng.standard_normal((count, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for i in range(count):
        text = f"{source} #{i}: " + " ".join(random.choices(_WORDS, k=90))
        text = text[:500]
        out.append(NewEntry(text, i // 4 + 1, i, content_hash(text), vectors[i], now))
    return out


def _open(path: Path) -> Store:
    # Without the keyword sidecar (store/keyword.py, measured by bench/retrieval.py): its FTS5
    # inserts would dominate the fill and its repair the opens, the same before and after.
    return Store.open(path, model=MODEL, dimensions=DIMS, fingerprint=FINGERPRINT, keyword=False)


def phase_build(path: Path, n: int, per_file: int) -> dict[str, float]:
    """Fill an empty store and save it once (every entry serialised)."""
    rng = np.random.default_rng(7)
    random.seed(7)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    store = _open(path)
    files = (n + per_file - 1) // per_file
    for f in range(files):
        count = min(per_file, n - f * per_file)
        store.replace_source(
            f"inbox/doc{f:06d}.pdf", _entries(rng, f"doc{f}", count, now), FileState(1, 1, f)
        )
    built = time.perf_counter() - t0
    stats = store.save()
    store.close()
    os.sync()  # the opens measured next should not compete with this write's writeback
    return {
        "fill_s": built,
        "full_save_durable_s": stats.durable_seconds,
        "full_save_s": stats.seconds,
        "size_mb": path.stat().st_size / 1e6,
        "peak_rss_mb": _peak_rss_mb(),
    }


def phase_open_edit(path: Path, edits: int, per_file: int) -> dict[str, float]:
    """Open (cache or cold parse, whichever the folder allows), time one-file edits until durable,
    then (where the store has them) reopen with the journal and fold it."""
    rng = np.random.default_rng(11)
    t0 = time.perf_counter()
    store = _open(path)
    load = time.perf_counter() - t0
    via = store.loaded_via
    sources = sorted(store.sources())
    cache = cache_path(path)
    durable, total, disk_kb = [], [], []
    journalled = False
    for k in range(edits):
        source = sources[(k * 7919) % len(sources)]
        t1 = time.perf_counter()
        store.replace_source(source, _entries(rng, f"edit{k}", per_file, k), FileState(2, 2, k))
        stats = store.save()
        durable.append(time.perf_counter() - t1 - (stats.seconds - stats.durable_seconds))
        total.append(time.perf_counter() - t1)
        journalled = bool(getattr(stats, "journalled", False))
        cache_bytes = 0 if journalled or not cache.exists() else cache.stat().st_size
        disk_kb.append((stats.bytes_written + stats.bytes_reused + cache_bytes) / 1e3)
    store.close()
    del store  # its memory must not be held while the reopen allocates the same again
    out: dict[str, float] = {
        "via": via,  # type: ignore[dict-item]
        "load_s": load,
        "edit_durable_s": statistics.median(durable),
        "edit_durable_max_s": max(durable),
        "edit_save_s": statistics.median(total),
        "edit_disk_kb": statistics.median(disk_kb),
        "journalled": journalled,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if journalled:
        t0 = time.perf_counter()
        store = _open(path)  # replays the edits' records
        out["reopen_journal_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = store.fold()
        out["fold_durable_s"] = stats.durable_seconds
        out["fold_s"] = time.perf_counter() - t0
        store.close()
    return out


def phase_readonly(path: Path) -> dict[str, float]:
    """Open read-only, as search does, and touch the matrix; then what ``embedd search`` without
    the daemon does next: a snapshot, the keyword sidecar's check (each source's signature) and
    the ten best rows' entries."""
    t0 = time.perf_counter()
    store = Store.open_readonly(path)
    load = time.perf_counter() - t0
    snap = store.snapshot()
    signed = _signatures(snap.by_source or {})
    q = snap.matrix[0]
    t1 = time.perf_counter()
    scores = snap.matrix @ q
    top = np.argpartition(-scores, 10)[:10]
    hits = [snap.entry(int(i)).content for i in top]
    ready = time.perf_counter() - t0
    return {
        "via": store.loaded_via,  # type: ignore[dict-item]
        "load_s": load,
        "search_ready_s": ready,
        "scan_s": time.perf_counter() - t1,
        "signed": len(signed) + 0 * len(hits),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _signatures(by_source: Any) -> dict[str, str]:
    """The keyword sidecar check's signatures, with whichever code this tree has."""
    try:
        from daemon.store.signature import signatures
    except ImportError:  # a tree from before the signatures could come from the cache
        from daemon.store.keyword import signature

        return {s: signature(rows) for s, rows in by_source.items() if rows}
    return signatures(by_source)


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout.strip()
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    """Run every phase in a child process and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="chunks in the store")
    parser.add_argument("--per-file", type=int, default=10, help="chunks per source file")
    parser.add_argument("--edits", type=int, default=5, help="one-file edits timed per open")
    parser.add_argument("--dir", type=Path, help="folder for the store (default: a temp folder)")
    parser.add_argument("--before", type=Path, help="a checkout of main to measure beside this tree")
    parser.add_argument("--phase", choices=["build", "prime", "open", "readonly"], help=argparse.SUPPRESS)
    parser.add_argument("--code", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        path = args.dir / "embeddings.json"
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
        if args.phase == "build":
            result = phase_build(path, args.n, args.per_file)
        elif args.phase == "prime":
            _open(path).close()  # writes this tree's cache when the one there is another format
            os.sync()  # so that the next phase does not read beside the cache's writeback
            result = {}
        elif args.phase == "open":
            result = phase_open_edit(path, args.edits, args.per_file)
        else:
            result = phase_readonly(path)
        print(json.dumps(result))
        return

    print(describe())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        store = folder / "embeddings.json"
        common = ["--dir", str(folder), "--n", str(args.n), "--per-file", str(args.per_file)]
        common += ["--edits", str(args.edits)]
        build = _child(["--phase", "build", *common])
        cache_mb = cache_path(store).stat().st_size / 1e6
        before = None
        if args.before is not None:
            # Main first: its edits rewrite the JSON file, which stays the same size and format.
            code = f"--code={args.before.resolve()}"
            _child(["--phase", "prime", *common, code])
            before = {
                "open": _child(["--phase", "open", *common, code]),
                "ro": _child(["--phase", "readonly", *common, code]),
            }
        if before is not None:
            _child(["--phase", "prime", *common])  # the two trees' caches may differ in format
        warm = _child(["--phase", "open", *common])
        ro = _child(["--phase", "readonly", *common])
        cache_path(store).unlink()
        cold = _child(["--phase", "open", *common])
        change_kb = build["size_mb"] * 1e3 / args.n * args.per_file  # the edited file's entries, as JSON

        def both(key: str, fmt: str, phase: str = "open") -> tuple[str, str]:
            after = (warm if phase == "open" else ro).get(key)
            old = None if before is None else before[phase].get(key)
            return (
                fmt.format(old) if old is not None else "",
                fmt.format(after) if after is not None else "",
            )

        rows = [
            ("chunks", "", f"{args.n:,}", ""),
            ("JSON file / sidecar cache", "", f"{build['size_mb']:.0f} MB / {cache_mb:.0f} MB", ""),
            (
                "fill in memory",
                "",
                f"{build['fill_s']:.2f} s",
                f"{args.n // args.per_file:,} replace_source calls",
            ),
            (
                "full save (durable) / incl. cache",
                "",
                f"{build['full_save_durable_s']:.2f} s / {build['full_save_s']:.2f} s",
                "every entry serialised",
            ),
            ("open, cache valid", *both("load_s", "{:.2f} s"), f"via {warm['via']}"),
            (
                "one-file edit -> durable",
                *both("edit_durable_s", "{:.3f} s"),
                f"median of {args.edits}; max {warm['edit_durable_max_s']:.3f} s after",
            ),
            ("one-file edit, save() returns", *both("edit_save_s", "{:.3f} s"), "incl. the cache before"),
            (
                "bytes written per one-file edit",
                *both("edit_disk_kb", "{:,.0f} kB"),
                f"the change is {change_kb:.0f} kB of JSON ({args.per_file} chunks)",
            ),
            (
                "reopen with the edits in the journal",
                "",
                f"{warm.get('reopen_journal_s', 0):.2f} s",
                "replayed",
            ),
            (
                "fold (durable) / incl. cache",
                "",
                f"{warm.get('fold_durable_s', 0):.2f} s / {warm.get('fold_s', 0):.2f} s",
                "the deferred rewrite",
            ),
            ("peak RSS (open + edits)", *both("peak_rss_mb", "{:.0f} MB"), ""),
            ("open, cache missing (cold parse)", "", f"{cold['load_s']:.2f} s", f"via {cold['via']}"),
            ("read-only open", *both("load_s", "{:.2f} s", "ro"), f"via {ro['via']}"),
            (
                "read-only search ready",
                *both("search_ready_s", "{:.2f} s", "ro"),
                "open, snapshot, keyword signatures, 10 hits (no model)",
            ),
            ("peak RSS (read-only open)", *both("peak_rss_mb", "{:.0f} MB", "ro"), ""),
        ]
        print(f"| measure | before ({args.before or '-'}) | after | notes |")
        print("| --- | ---: | ---: | --- |")
        for name, old, new, note in rows:
            print(f"| {name} | {old} | {new} | {note} |")


if __name__ == "__main__":
    main()
