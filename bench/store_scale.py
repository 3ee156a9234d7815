"""How the JSON store behaves at scale: file size, save, load, one-file edit, memory.

Builds a store of ``--n`` chunks (default 100,000: random unit vectors, ~500-character texts,
``--per-file`` chunks per source) and measures each phase in a fresh child process, so
every peak RSS belongs to that phase alone:

- build: fill an empty store in memory and do the first (full) save;
- warm open: open with the sidecar cache, then one-file edits (replace one source's chunks
  with new ones and save), timed until the new file is durable and until save() returns;
- cold open: the same with the sidecar cache deleted, so the whole JSON is parsed;
- read-only open: what ``embedd search``/``status`` pay.

Prints a markdown table. The page cache is warm throughout (the file was just written);
nothing here drops caches on a shared machine.

    python bench/store_scale.py            # 100,000 chunks in a temp folder
    python bench/store_scale.py --n 5000   # quick
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.store.cache import cache_path
from daemon.store.format import content_hash
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

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
    return Store.open(path, model=MODEL, dimensions=DIMS, fingerprint=FINGERPRINT)


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
    return {
        "fill_s": built,
        "full_save_durable_s": stats.durable_seconds,
        "full_save_s": stats.seconds,
        "size_mb": path.stat().st_size / 1e6,
        "peak_rss_mb": _peak_rss_mb(),
    }


def phase_open_edit(path: Path, edits: int, per_file: int) -> dict[str, float]:
    """Open (cache or cold parse, whichever the folder allows) and time one-file edits."""
    rng = np.random.default_rng(11)
    t0 = time.perf_counter()
    store = _open(path)
    load = time.perf_counter() - t0
    via = store.loaded_via
    sources = sorted(store.sources())
    durable, total, reused_mb, written_kb = [], [], [], []
    for k in range(edits):
        source = sources[(k * 7919) % len(sources)]
        t1 = time.perf_counter()
        store.replace_source(source, _entries(rng, f"edit{k}", per_file, k), FileState(2, 2, k))
        stats = store.save()
        durable.append(time.perf_counter() - t1 - (stats.seconds - stats.durable_seconds))
        total.append(time.perf_counter() - t1)
        reused_mb.append(stats.bytes_reused / 1e6)
        written_kb.append(stats.bytes_written / 1e3)
    store.close()
    return {
        "via": via,  # type: ignore[dict-item]
        "load_s": load,
        "edit_durable_s": statistics.median(durable),
        "edit_durable_max_s": max(durable),
        "edit_save_s": statistics.median(total),
        "edit_reused_mb": statistics.median(reused_mb),
        "edit_written_kb": statistics.median(written_kb),
        "peak_rss_mb": _peak_rss_mb(),
    }


def phase_readonly(path: Path) -> dict[str, float]:
    """Open read-only, as search does, and touch the matrix."""
    t0 = time.perf_counter()
    store = Store.open_readonly(path)
    load = time.perf_counter() - t0
    q = store.matrix()[0]
    t1 = time.perf_counter()
    scores = store.matrix() @ q
    int(np.argmax(scores))
    return {
        "via": store.loaded_via,  # type: ignore[dict-item]
        "load_s": load,
        "scan_s": time.perf_counter() - t1,
        "peak_rss_mb": _peak_rss_mb(),
    }


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
    parser.add_argument("--phase", choices=["build", "open", "readonly"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        path = args.dir / "embeddings.json"
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
        if args.phase == "build":
            result = phase_build(path, args.n, args.per_file)
        elif args.phase == "open":
            result = phase_open_edit(path, args.edits, args.per_file)
        else:
            result = phase_readonly(path)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        common = ["--dir", str(folder), "--n", str(args.n), "--per-file", str(args.per_file)]
        common += ["--edits", str(args.edits)]
        build = _child(["--phase", "build", *common])
        warm = _child(["--phase", "open", *common])
        ro = _child(["--phase", "readonly", *common])
        cache_path(folder / "embeddings.json").unlink()
        cold = _child(["--phase", "open", *common])
        rows = [
            ("chunks", f"{args.n:,}", ""),
            ("JSON file size", f"{build['size_mb']:.0f} MB", ""),
            (
                "sidecar cache size",
                f"{cache_path(folder / 'embeddings.json').stat().st_size / 1e6:.0f} MB",
                "",
            ),
            (
                "fill in memory",
                f"{build['fill_s']:.2f} s",
                f"{args.n // args.per_file:,} replace_source calls",
            ),
            ("full save (durable)", f"{build['full_save_durable_s']:.2f} s", "every entry serialised"),
            (
                "full save incl. cache",
                f"{build['full_save_s']:.2f} s",
                f"peak RSS {build['peak_rss_mb']:.0f} MB",
            ),
            ("open, cache valid", f"{warm['load_s']:.2f} s", f"via {warm['via']}"),
            (
                "one-file edit -> durable",
                f"{warm['edit_durable_s']:.2f} s",
                f"median of {args.edits}, max {warm['edit_durable_max_s']:.2f} s; "
                f"{warm['edit_written_kb']:.0f} kB serialised, {warm['edit_reused_mb']:.0f} MB spliced",
            ),
            ("one-file edit, save() incl. cache", f"{warm['edit_save_s']:.2f} s", ""),
            ("peak RSS (open + edits)", f"{warm['peak_rss_mb']:.0f} MB", ""),
            ("open, cache missing (cold parse)", f"{cold['load_s']:.2f} s", f"via {cold['via']}"),
            ("one-file edit -> durable after cold open", f"{cold['edit_durable_s']:.2f} s", ""),
            ("peak RSS (cold open + edits)", f"{cold['peak_rss_mb']:.0f} MB", ""),
            (
                "read-only open",
                f"{ro['load_s']:.2f} s",
                f"via {ro['via']}; brute-force scan {ro['scan_s']:.3f} s",
            ),
            ("peak RSS (read-only open)", f"{ro['peak_rss_mb']:.0f} MB", ""),
        ]
        print("| measure | value | notes |")
        print("| --- | --- | --- |")
        for name, value, note in rows:
            print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
