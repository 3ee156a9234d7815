"""Syntax-aware splitting of source code: tree-sitter (daemon/ingest/code.py) against
langchain-text-splitters' language separators, on real code, without the model.

For every function, method and class that fits the chunk size (found with tree-sitter), it
counts whether some chunk holds it whole; it also counts the chunks whose section names a
symbol, and the time each splitter takes (in-process; the daemon parses code in the sandboxed
worker, whose start costs extra per file: measured with --sandbox).

Usage: python bench/code_split.py [--size 500] [--sandbox N] FOLDER LANGUAGE SUFFIX
(for the CPython standard library, FOLDER is the folder of the installed Python's ``os.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

from bench.machine import describe
from daemon.ingest import code
from daemon.ingest.chunker import chunk_units
from daemon.ingest.extract import ExtractLimits, extract

LANGCHAIN = {
    "python": Language.PYTHON,
    "typescript": Language.TS,
    "javascript": Language.JS,
    "go": Language.GO,
}


def short_definitions(source: bytes, language: str, size: int) -> list[str]:
    """The text of every definition (function, method, class ...) of at most ``size`` bytes."""
    symbols = code.SYMBOLS[language]
    found: list[str] = []
    stack = [code._parser(language).parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type in symbols and node.end_byte - node.start_byte <= size:
            found.append(source[node.start_byte : node.end_byte].decode("utf-8", "replace").strip())
        stack.extend(node.children)
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("language")
    parser.add_argument("suffix")
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--overlap", type=int, default=50)
    parser.add_argument("--sandbox", type=int, default=0, help="also time N files through the worker")
    args = parser.parse_args()
    print(describe())
    files = sorted(
        p
        for p in args.folder.rglob(f"*{args.suffix}")
        if p.is_file() and "test" not in p.parts and "site-packages" not in p.parts
    )
    splitter = RecursiveCharacterTextSplitter.from_language(
        LANGCHAIN[args.language], chunk_size=args.size, chunk_overlap=args.overlap
    )
    totals = {"defs": 0, "ts_cut": 0, "lc_cut": 0, "ts_chunks": 0, "lc_chunks": 0, "named": 0, "bytes": 0}
    t_ts = t_lc = 0.0
    for path in files:
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        totals["bytes"] += len(data)
        start = time.perf_counter()
        parsed = code.parse(data, args.language, args.size)
        ts_chunks = [c.text for c in chunk_units(parsed.units, size=args.size, overlap=args.overlap)]
        t_ts += time.perf_counter() - start
        start = time.perf_counter()
        lc_chunks = [c for c in splitter.split_text(text) if c.strip()]
        t_lc += time.perf_counter() - start
        totals["named"] += sum(1 for u in parsed.units if u.section)
        totals["ts_chunks"] += len(ts_chunks)
        totals["lc_chunks"] += len(lc_chunks)
        for definition in short_definitions(text.encode("utf-8"), args.language, args.size):
            totals["defs"] += 1
            totals["ts_cut"] += not any(definition in c for c in ts_chunks)
            totals["lc_cut"] += not any(definition in c for c in lc_chunks)
    n, defs = len(files), max(1, totals["defs"])
    print(f"{n} {args.suffix} files, {totals['bytes'] / 1e6:.1f} MB, chunk size {args.size}")
    print(f"short definitions (<= {args.size} bytes): {totals['defs']}")
    print(
        f"tree-sitter: {totals['ts_chunks']} chunks, {totals['ts_cut']} short definitions cut "
        f"({100 * totals['ts_cut'] / defs:.1f}%), {totals['named']} units with a symbol path, "
        f"{n / t_ts:.0f} files/s ({t_ts:.1f} s)"
    )
    print(
        f"langchain:   {totals['lc_chunks']} chunks, {totals['lc_cut']} short definitions cut "
        f"({100 * totals['lc_cut'] / defs:.1f}%), no symbol names, {n / t_lc:.0f} files/s ({t_lc:.1f} s)"
    )
    if args.sandbox:
        limits = ExtractLimits(max_bytes=100 << 20, timeout_s=60, memory_bytes=1 << 30)
        sample = files[: args.sandbox]
        start = time.perf_counter()
        for path in sample:
            extract(path, limits)
        took = time.perf_counter() - start
        print(
            f"through the sandboxed worker: {len(sample) / took:.1f} files/s "
            f"({took / len(sample) * 1000:.0f} ms a file)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
