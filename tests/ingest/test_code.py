"""Source code split along its syntax (daemon/ingest/code.py), through the real extraction path
(the sandboxed worker) on real public code: the CPython standard library's own sources and
rxjs's Subscription.ts (tests/data/code/rxjs, Apache-2.0); generated files refused with a reason."""

from __future__ import annotations

import asyncio.locks
import json.decoder
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.errors import ExtractError
from daemon.ingest import code
from daemon.ingest.chunker import chunk_units
from daemon.ingest.extract import ExtractLimits, extract, format_of

SIZE = 500
LIMITS = ExtractLimits(max_bytes=100 << 20, timeout_s=60, memory_bytes=1 << 30, chunk_chars=SIZE)
RXJS = Path(__file__).resolve().parent.parent / "data" / "code" / "rxjs" / "Subscription.ts"


def _definitions(source: bytes, language: str) -> list[tuple[int, int]]:
    """Byte ranges of every definition the grammar reports (found independently of the splitter)."""
    symbols, found = code.SYMBOLS[language], []
    stack = [code._parser(language).parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type in symbols:
            found.append((node.start_byte, node.end_byte))
        stack.extend(node.children)
    return found


def _chunks(path: Path) -> list[str]:
    return [c.text for c in chunk_units(extract(path, LIMITS).units, size=SIZE, overlap=50)]


@pytest.mark.parametrize(
    ("path", "language"),
    [(Path(asyncio.locks.__file__), "python"), (Path(json.decoder.__file__), "python"), (RXJS, "typescript")],
)
def test_no_short_definition_is_cut_and_nothing_is_lost(path: Path, language: str) -> None:
    source = path.read_bytes()
    units = extract(path, LIMITS).units
    # The units are the file, in order, in consecutive slices (blank space between two
    # symbols may be left out when it fits neither).
    joined = "".join(u.text for u in units)
    assert "".join(joined.split()) == "".join(source.decode("utf-8").split())
    assert len(joined) > 0.99 * len(source)
    chunks = _chunks(path)
    short = [source[a:b].decode() for a, b in _definitions(source, language) if b - a <= SIZE]
    assert len(short) >= 3, "the file has short definitions to test"
    cut = [d for d in short if not any(d in chunk for chunk in chunks)]
    assert cut == []
    assert all(len(chunk) <= SIZE for chunk in chunks)


def test_a_section_names_the_class_and_the_function() -> None:
    units = extract(Path(asyncio.locks.__file__), LIMITS).units
    locked = [u for u in units if "def locked(self):" in u.text]
    assert [u.section for u in locked][:1] == ["class Lock > def locked"]
    ts = extract(RXJS, LIMITS).units
    assert any(u.section == "class Subscription > method add" and "add(teardown" in u.text for u in ts)
    # The symbol's name is in every chunk's section, also in the later pieces of a long method.
    unsubscribe = [u for u in ts if u.section == "class Subscription > method unsubscribe"]
    assert len(unsubscribe) >= 2 and "unsubscribe()" not in unsubscribe[-1].text


def test_a_long_function_is_split_between_statements() -> None:
    source = RXJS.read_text()
    units = extract(RXJS, LIMITS).units
    pieces = [u for u in units if u.section == "class Subscription > method unsubscribe"]
    assert len(pieces) >= 2
    offset = 0
    for unit in units:
        offset = source.index(unit.text, offset)
        if unit in pieces[1:]:
            # Each cut falls between lines of statements: blank before it on its line, or a
            # line break before the next piece's first character.
            line_start = source.rfind("\n", 0, offset) + 1
            lead = unit.text[: len(unit.text) - len(unit.text.lstrip())]
            assert source[line_start:offset].strip() == "" or "\n" in lead, unit.text[:60]
            assert unit.text.lstrip()[:1] not in (")", ",", ".", "]")
        offset += len(unit.text)
    body = "".join(u.text for u in pieces)
    start = source.index("  unsubscribe(): void {")
    method = source[start : source.index("\n  }\n", start) + 4]
    assert len(method) > 2 * SIZE and "".join(method.split()) in "".join(body.split())


def test_every_language_of_the_issue_is_split_by_its_syntax(tmp_path: Path) -> None:
    samples = {
        "a.go": ("package main\n\nfunc Save(x int) int {\n\treturn x\n}\n", "func Save"),
        "a.rs": ("struct S;\nimpl S {\n    fn save(&self) {}\n}\n", "impl S"),
        "A.java": ("class Store {\n  void save() {}\n}\n", "class Store"),
        "a.c": ("int save_store(int x) {\n  return x;\n}\n", "function save_store"),
        "a.cpp": ("namespace n {\nclass Store { void save(); };\n}\n", "namespace n"),
        "a.cs": ("class Store {\n  void Save() {}\n}\n", "class Store"),
        "a.rb": ("class Store\n  def save\n  end\nend\n", "class Store"),
        "a.php": ("<?php\nfunction save_store() { return 1; }\n", "function save_store"),
        "a.kt": ("class Store {\n  fun save() {}\n}\n", "class Store"),
        "a.swift": ("class Store {\n  func save() {}\n}\n", "class Store"),
        "a.sh": ("save_store() {\n  echo hi\n}\nother() {\n  :\n}\n", "function save_store"),
        "a.js": ("export function saveStore() { return 1 }\n", "function saveStore"),
        "a.tsx": ("export const x = 1;\nclass Store {}\n", "class Store"),
        "a.sql": ("CREATE TABLE t (a int);\nSELECT 1;\n", None),
    }
    # A file that fits the chunk size is one unit; a small size makes these split.
    small = replace(LIMITS, chunk_chars=30)
    for name, (text, section) in samples.items():
        path = tmp_path / name
        path.write_text(text)
        assert format_of(path).language is not None, name
        units = extract(path, small).units
        assert "".join(u.text for u in units) == text, name
        if section is not None:
            assert any((u.section or "").startswith(section) for u in units), (name, units)


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("jquery.min.js", b"var a=1;", "minified"),
        ("package-lock.json", b'{"lockfileVersion": 3}\n', "lock file"),
        ("yarn.lock", b"# yarn lockfile v1\n", "lock file"),
        ("Cargo.lock", b"version = 3\n", "lock file"),
        ("poetry.lock", b"[[package]]\n", "lock file"),
        ("uv.lock", b"version = 1\n", "lock file"),
        ("dump.json", b'{"rows": [' + b'{"a": 1}, ' * 500_000 + b"{}]}", "a line of"),
        ("bundle.js", b"function a(){return 1};" * 1000, "a line of"),
        ("blob.py", b"import os\n\x00\x01\x02", "binary"),
    ],
)
def test_generated_and_binary_files_are_refused_with_a_reason(
    tmp_path: Path, name: str, data: bytes, why: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ExtractError) as raised:
        extract(path, LIMITS)
    assert why in raised.value.reason and name in str(raised.value)


def test_long_lines_in_prose_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "novel.txt"
    path.write_text("word " * 5000)
    assert extract(path, LIMITS).units
