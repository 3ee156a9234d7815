"""Source code -> units along its syntax tree (tree-sitter), each with its enclosing symbols.

A definition (function, method, class, struct, impl, interface ...) that fits the chunk size is
one unit, with the comments right above it; one that does not is split at its children's
boundaries, recursively (a body into its statements, a long ``if`` into its branches), and
neighbouring pieces under the same symbol are merged back up to the chunk size, so a long
function becomes a few chunks cut between statements. The units are consecutive slices of the
file that cover it whole: nothing is dropped, and a single token longer than the chunk size
(a huge string) is left to the chunker, which splits without truncating. Each unit's section is
the path of symbols it sits in, in the language's own words: ``class Store > def save``.

Standalone (see ``units``): it runs in the sandboxed worker, since tree-sitter and its grammars
are C code parsing whatever the folder holds; a crash there costs one file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Imported with the module, before the worker lowers its memory limit (as pypdf is).
from tree_sitter_language_pack import get_parser

from .sections import MAX_TITLE_CHARS, SEPARATOR
from .text import decode
from .units import UNSUPPORTED, Parsed, Refused, TextUnit

# Node type -> the word a section shows for it, per grammar (tree-sitter-language-pack names).
_JS: Mapping[str, str] = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "class_declaration": "class",
    "abstract_class_declaration": "class",
    "method_definition": "method",
    "interface_declaration": "interface",
    "enum_declaration": "enum",
    "type_alias_declaration": "type",
    "internal_module": "namespace",
    "module": "module",
}
_C: Mapping[str, str] = {
    "function_definition": "function",
    "struct_specifier": "struct",
    "union_specifier": "union",
    "enum_specifier": "enum",
}
SYMBOLS: Mapping[str, Mapping[str, str]] = {
    "python": {"class_definition": "class", "function_definition": "def"},
    "javascript": _JS,
    "typescript": _JS,
    "tsx": _JS,
    "go": {
        "function_declaration": "func",
        "method_declaration": "func",
        "type_declaration": "type",
    },
    "rust": {
        "function_item": "fn",
        "impl_item": "impl",
        "struct_item": "struct",
        "enum_item": "enum",
        "trait_item": "trait",
        "mod_item": "mod",
        "macro_definition": "macro_rules!",
    },
    "java": {
        "class_declaration": "class",
        "interface_declaration": "interface",
        "enum_declaration": "enum",
        "record_declaration": "record",
        "method_declaration": "method",
        "constructor_declaration": "constructor",
    },
    "c": _C,
    "cpp": {
        **_C,
        "class_specifier": "class",
        "namespace_definition": "namespace",
    },
    "csharp": {
        "class_declaration": "class",
        "interface_declaration": "interface",
        "struct_declaration": "struct",
        "enum_declaration": "enum",
        "record_declaration": "record",
        "namespace_declaration": "namespace",
        "method_declaration": "method",
        "constructor_declaration": "constructor",
        "property_declaration": "property",
    },
    "ruby": {"class": "class", "module": "module", "method": "def", "singleton_method": "def"},
    "php": {
        "class_declaration": "class",
        "interface_declaration": "interface",
        "trait_declaration": "trait",
        "function_definition": "function",
        "method_declaration": "function",
    },
    "kotlin": {
        "class_declaration": "class",
        "object_declaration": "object",
        "function_declaration": "fun",
    },
    "swift": {
        "class_declaration": "class",
        "protocol_declaration": "protocol",
        "function_declaration": "func",
        "init_declaration": "init",
    },
    "bash": {"function_definition": "function"},
    "sql": {},  # statements only: each one whole when it fits
}
"""Which languages are split by their syntax, and the definitions a section names."""

# Nodes that only wrap a definition: the definition inside names them (``export function f``).
_WRAPPERS = frozenset(
    {"export_statement", "decorated_definition", "template_declaration", "ambient_declaration"}
)
_COMMENTS = frozenset({"comment", "line_comment", "block_comment", "multiline_comment"})
_NAME_TYPES = frozenset(
    {
        *("identifier", "type_identifier", "field_identifier", "property_identifier"),
        *("simple_identifier", "constant", "name", "word", "qualified_identifier"),
    }
)


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    section: tuple[str, ...]


def _text(source: bytes, node: Any) -> str:
    return source[node.start_byte : node.end_byte].decode("utf-8", "replace")


def _name(source: bytes, node: Any) -> str:
    """The name a definition declares: its ``name`` field, a C declarator's identifier, a Go
    type's spec, a Rust impl's type, or else its first identifier."""
    for field in ("name", "declarator", "type"):
        found = node.child_by_field_name(field)
        while found is not None and field == "declarator" and found.child_by_field_name("declarator"):
            found = found.child_by_field_name("declarator")
        if found is not None:
            return _text(source, found)
    for child in node.named_children:
        if child.type in _NAME_TYPES:
            return _text(source, child)
        if child.type == "type_spec":  # Go: type Foo struct {...}
            return _name(source, child)
    return ""


def _label(source: bytes, node: Any, symbols: Mapping[str, str]) -> str | None:
    """``def save`` for a definition (looking through wrappers like ``export``), else None."""
    if node.type in _WRAPPERS:
        inner = [c for c in node.named_children if c.type in symbols]
        node = inner[0] if len(inner) == 1 else node
    word = symbols.get(node.type)
    if word is None:
        return None
    name = " ".join(_name(source, node).split())
    label = f"{word} {name}" if name else word
    return label if len(label) <= MAX_TITLE_CHARS else label[: MAX_TITLE_CHARS - 1] + "…"


class _Splitter:
    def __init__(self, source: bytes, symbols: Mapping[str, str], size: int) -> None:
        self.source = source
        self.symbols = symbols
        self.size = size

    def pieces(self, node: Any, start: int, end: int, path: tuple[str, ...]) -> Iterator[_Piece]:
        """Pieces covering bytes ``start:end``, the extent of ``node`` plus what leads into it."""
        label = _label(self.source, node, self.symbols)
        inner = (*path, label) if label is not None else path
        if end - start <= self.size or not node.children:
            yield _Piece(start, end, inner)
            return
        if node.start_byte > start:
            # What leads into it, apart: the comments above a definition are about it (its
            # section); blank lines and indentation go with what came before.
            lead = self.source[start : node.start_byte]
            yield _Piece(start, node.start_byte, inner if lead.strip() else path)
            start = node.start_byte
        if node.end_byte - start <= self.size:
            # Whole, without what trails it (the file's last newline).
            yield _Piece(start, node.end_byte, inner)
            yield _Piece(node.end_byte, end, path)
            return
        children = list(node.children)
        cursor = start
        i = 0
        while i < len(children):
            # A run of comments right above a definition belongs with it.
            j = i
            while j < len(children) - 1 and children[j].type in _COMMENTS:
                j += 1
            if j > i and _label(self.source, children[j], self.symbols) is None:
                j = i
            child = children[j]
            child_end = child.end_byte if j < len(children) - 1 else end
            # A wrapper's definition names itself: ``export function f`` is not ``f > f``.
            yield from self.pieces(child, cursor, child_end, path if node.type in _WRAPPERS else inner)
            cursor = child_end
            i = j + 1
        if cursor < end:
            yield _Piece(cursor, end, inner)


def _merge(source: bytes, pieces: Iterator[_Piece], size: int) -> list[_Piece]:
    """Neighbouring pieces under the same symbols joined while they fit ``size`` bytes; blank
    space between two symbols goes with the one before when it fits (a blank unit is dropped)."""
    merged: list[_Piece] = []
    for piece in pieces:
        if piece.start == piece.end:
            continue
        last = merged[-1] if merged else None
        blank = not source[piece.start : piece.end].strip()
        if last is not None and (last.section == piece.section or blank) and piece.end - last.start <= size:
            merged[-1] = _Piece(last.start, piece.end, last.section)
        else:
            merged.append(piece)
    return merged


_parsers: dict[str, Any] = {}


def _parser(language: str) -> Any:
    parser = _parsers.get(language)
    if parser is None:
        # A grammar's shared object is loaded on first use, one per language.
        parser = _parsers[language] = get_parser(language)  # type: ignore[arg-type]
    return parser


def parse(data: bytes, language: str, size: int) -> Parsed:
    """A source file in ``language`` as units of at most ``size`` characters where its syntax allows.

    Raises ``Refused`` for a binary file (NUL bytes) and for a language not in ``SYMBOLS``.
    """
    if language not in SYMBOLS:
        raise Refused(UNSUPPORTED, f"no syntax-aware splitting for {language!r}")
    text, warnings = decode(data)
    if not text.strip():
        return Parsed((), warnings=warnings)
    source = text.encode("utf-8")
    tree = _parser(language).parse(source)
    root = tree.root_node
    # Sizes are compared in bytes of UTF-8 (a bound on characters): a unit never exceeds ``size``
    # characters because of the grouping here, only a single oversized token can.
    pieces = _merge(source, _Splitter(source, SYMBOLS[language], size).pieces(root, 0, len(source), ()), size)
    units = tuple(
        TextUnit(source[p.start : p.end].decode("utf-8", "replace"), None, SEPARATOR.join(p.section) or None)
        for p in pieces
    )
    if root.has_error:
        warnings = (*warnings, "the parser found syntax errors; those parts were split by size")
    return Parsed(units, warnings=warnings)
