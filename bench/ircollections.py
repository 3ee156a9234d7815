"""Public IR test collections -> a BEIR-style layout under ``bench/data/<name>/``.

    python bench/ircollections.py            # converts every collection below that is fetched

Each collection is read from a public GitHub repository's snapshot that the search tool's
``fetch`` put under ``/work/.mirror/<owner>+<repo>/repo`` (a bare git directory; the files are read
with ``git show``), or from ``--mirror DIR``. Nothing fetched is committed: ``bench/data/`` is in
.gitignore, and docs/benchmarks.md names each repository, path and commit so a run can be repeated.

The layout (what ``bench/retrieval.py`` reads):

- ``corpus.jsonl``: ``{"_id", "title", "text"}`` per document;
- ``queries.jsonl``: ``{"_id", "text"}`` per query that has at least one relevant document;
- ``qrels.tsv``: ``query-id<TAB>corpus-id<TAB>score`` with a header line (BEIR's).

The classic collections (CISI, CACM) are in the SMART format: records start with ``.I <id>``,
fields with ``.T`` (title), ``.W`` (text), ``.A``, ``.B``, ``.N``, ``.X`` ...; their judgements
are binary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
MIRROR = Path("/work/.mirror")


@dataclass(frozen=True)
class Source:
    """Where one collection's three files are in a public repository."""

    name: str
    repo: str  # owner/name on GitHub
    commit: str
    docs: str
    queries: str
    qrels: str
    licence: str


SOURCES = (
    Source(
        "cisi",
        "Shakiba-Alipour/Information-Retrieval-on-CISI",
        "7a23c34602e8949d795bb1835004546e00d1d1ba",
        "CISI.ALL",
        "CISI.QRY",
        "CISI.REL",
        "University of Glasgow IR group test collection, distributed for research use",
    ),
    Source(
        "cacm",
        "atcherepanov/Stemming-Algorithm",
        "a92ce141e3cba95b0213569a42cb1668201963f7",
        "cacm.all",
        "query.text",
        "qrels.text",
        "SMART/Glasgow CACM test collection, distributed for research use",
    ),
)


def git_file(mirror: Path, source: Source, path: str) -> str:
    """One file of the fetched snapshot at the pinned commit."""
    gitdir = mirror / source.repo.replace("/", "+", 1) / "repo"
    out = subprocess.run(
        ["git", "--git-dir", str(gitdir), "show", f"{source.commit}:{path}"],
        capture_output=True,
        check=True,
    ).stdout
    return out.decode("latin-1")


def smart_records(text: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(id, {field letter: text})`` for each ``.I`` record of a SMART file."""
    rid: str | None = None
    fields: dict[str, list[str]] = {}
    field: str | None = None
    for line in text.splitlines():
        if line.startswith(".I "):
            if rid is not None:
                yield rid, {k: " ".join(" ".join(v).split()) for k, v in fields.items()}
            rid, fields, field = line[3:].strip(), {}, None
        elif len(line) >= 2 and line[0] == "." and line[1].isalpha() and not line[2:].strip():
            field = line[1]
            fields.setdefault(field, [])
        elif field is not None:
            fields[field].append(line)
    if rid is not None:
        yield rid, {k: " ".join(" ".join(v).split()) for k, v in fields.items()}


def convert(source: Source, mirror: Path, out: Path) -> dict[str, int]:
    """Writes the layout for ``source`` into ``out``; counts of what it wrote."""
    docs = [
        {"_id": rid, "title": f.get("T", ""), "text": f.get("W", "")}
        for rid, f in smart_records(git_file(mirror, source, source.docs))
    ]
    ids = {d["_id"] for d in docs}
    qrels: dict[str, dict[str, int]] = {}
    for line in git_file(mirror, source, source.qrels).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ids:
            qrels.setdefault(str(int(parts[0])), {})[parts[1]] = 1
    queries = [
        {"_id": rid, "text": f["W"]}
        for rid, f in smart_records(git_file(mirror, source, source.queries))
        if f.get("W") and rid in qrels
    ]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    with (out / "queries.jsonl").open("w") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    kept = {q["_id"] for q in queries}
    pairs = 0
    with (out / "qrels.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid in sorted(kept, key=int):
            for did, grade in sorted(qrels[qid].items(), key=lambda kv: int(kv[0])):
                f.write(f"{qid}\t{did}\t{grade}\n")
                pairs += 1
    return {"documents": len(docs), "queries": len(queries), "judgements": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", type=Path, default=MIRROR)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    for source in SOURCES:
        counts = convert(source, args.mirror, args.out / source.name)
        print(f"{source.name}: {counts} from github:{source.repo}@{source.commit[:12]}")


if __name__ == "__main__":
    main()
