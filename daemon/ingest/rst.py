"""reStructuredText (.rst) -> one unit per section, the path by section depth (``# A > ## B``).

docutils parses the document (its heading levels follow the order in which adornment styles
first appear, which only a real parser gets right) with everything that reaches outside the
text turned off: no file inclusion (``.. include:: /etc/passwd``, ``csv-table :file:``), no
raw output, no configuration files, nothing printed, never an exception for a bad document.
Sphinx's common directives and roles, which plain docutils does not know, are registered so
their text is kept (``:ref:`Title <target>``` reads "Title"; a ``versionadded`` note keeps its
words; a ``toctree`` is navigation and is dropped); a directive nobody knows keeps its source
text. A document docutils cannot parse at all is indexed as plain text, with a warning.

docutils is slow (about 0.15 MB/s) and some inputs make it quadratic, so this runs only in the
sandboxed worker, under its time and memory limits. Standalone (see ``units``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any, cast

from docutils import nodes
from docutils.core import publish_doctree
from docutils.parsers.rst import Directive, directives, roles

from .sections import SectionBuilder, one_line
from .text import decode
from .units import Parsed, TextUnit

# Keys of docutils' settings; a fresh warning stream is added per document.
SETTINGS: dict[str, Any] = {
    "file_insertion_enabled": False,
    "raw_enabled": False,
    "_disable_config": True,
    "report_level": 5,
    "halt_level": 5,
    "input_encoding": "unicode",
    "doctitle_xform": False,  # a lone top section stays a section (it is the first path element)
    "sectsubtitle_xform": False,
    "syntax_highlight": "none",
    # docutils replaces a whole document holding one line longer than this with an error; the
    # worker's time limit, not this, is what bounds the cost of long lines.
    "line_length_limit": 200_000,
}

# Sphinx directives whose text is navigation, configuration or another file: dropped.
_DROPPED = (
    "toctree", "index", "highlight", "currentmodule", "module", "tabularcolumns", "literalinclude",
    "automodule", "autoclass", "autofunction", "automethod", "autoattribute", "autodata",
    "autoexception", "autosummary", "only", "codeauthor", "sectionauthor", "moduleauthor",
    "default-role", "default-domain", "py:module", "py:currentmodule", "c:namespace", "cpp:namespace",
)  # fmt: skip
# Sphinx directives whose arguments and body are text.
_KEPT = (
    "versionadded", "versionchanged", "deprecated", "versionremoved", "seealso", "glossary",
    "centered", "hlist", "productionlist", "describe", "object", "function", "class", "method",
    "attribute", "data", "exception", "decorator", "envvar", "option", "program", "cmdoption",
    "confval", "py:function", "py:class", "py:method", "py:attribute", "py:data", "py:exception",
    "py:decorator", "c:function", "c:macro", "c:type", "c:member", "cpp:function", "cpp:class",
    "js:function", "command", "variable", "signature", "tab", "tabs", "todo",
)  # fmt: skip
# Sphinx roles: their text is what a reader sees (the title of a link, the name of a function).
_ROLES = (
    "ref", "doc", "term", "any", "numref", "keyword", "option", "envvar", "token", "download",
    "func", "class", "meth", "attr", "mod", "data", "exc", "obj", "const", "type", "member",
    "macro", "var", "enum", "enumerator", "struct", "union", "expr", "file", "samp", "kbd",
    "guilabel", "menuselection", "program", "command", "makevar", "mimetype", "dfn", "regexp",
    "manpage", "pep", "rfc", "abbr", "prop", "cmake:command", "cmake:variable", "cmake:prop_tgt",
    "cmake:module", "cmake:policy", "cmake:genex", "cmake:manual", "cmake:guide",
    "py:func", "py:class", "py:meth", "py:attr", "py:mod", "py:data", "py:exc", "py:obj", "py:const",
    "c:func", "c:macro", "c:type", "c:member", "c:data", "cpp:func", "cpp:class", "cpp:type",
    "js:func", "js:class", "std:ref", "std:doc", "std:term", "std:option", "std:envvar",
)  # fmt: skip
_ROLE_MARKUP = re.compile(r":[\w.:+-]+:`(.*)`$|`(.*)`:[\w.:+-]+:$", re.DOTALL)


def _shown(text: str) -> str:
    """What a role shows: ``Title <target>`` -> ``Title``; ``~a.b.c`` -> ``a.b.c``."""
    text = text.strip()
    if text.endswith(">") and "<" in text:
        title = text[: text.rindex("<")].strip()
        text = title or text[text.rindex("<") + 1 : -1]
    return text.lstrip("~!")


def _role(  # noqa: PLR0917 - docutils calls a role with these seven arguments, by position
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: dict[str, Any] | None = None,
    content: Sequence[str] | None = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    return [nodes.literal(rawtext, _shown(text))], []


class _AnyOption(dict[str, Any]):
    """An option spec that accepts every option (Sphinx directives have many)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        return directives.unchanged


class _Dropped(Directive):
    has_content = True
    optional_arguments = 100
    final_argument_whitespace = True
    option_spec = _AnyOption()

    def run(self) -> list[nodes.Node]:
        return []


class _Kept(Directive):
    has_content = True
    optional_arguments = 100
    final_argument_whitespace = True
    option_spec = _AnyOption()

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        if self.arguments:
            container += nodes.paragraph(text=" ".join(self.arguments))
        if self.content:
            self.state.nested_parse(self.content, self.content_offset, container)
        return [container]


for _name in _DROPPED:
    directives.register_directive(_name, _Dropped)
for _name in _KEPT:
    directives.register_directive(_name, _Kept)
for _name in _ROLES:
    # The stubs want roles to return reference nodes; docutils takes any inline node.
    roles.register_local_role(_name, cast(Any, _role))


def _unknown_directive(message: nodes.system_message) -> str:
    """The source text of a directive docutils did not know (what the author wrote)."""
    if message.get("type") != "ERROR" or not message.astext().startswith("Unknown directive type"):
        return ""
    block = message.next_node(nodes.literal_block)
    return block.astext() if block is not None else ""


def _inline(node: nodes.Element) -> str:
    """The text of a paragraph-like node; an unknown role shows its text, not its markup."""
    parts: list[str] = []
    for child in node.children:
        if isinstance(child, nodes.system_message):
            continue
        if isinstance(child, nodes.problematic):
            raw = child.astext()
            match = _ROLE_MARKUP.match(raw)
            parts.append(_shown(match.group(1) or match.group(2) or "") if match else raw)
        elif isinstance(child, nodes.image):
            alt = child.get("alt")
            if alt:
                parts.append(f" [image: {one_line(alt)}] ")
        elif isinstance(child, nodes.footnote_reference | nodes.citation_reference):
            parts.append(f"[{child.astext()}]")
        elif isinstance(child, nodes.Text):
            parts.append(child.astext())
        elif isinstance(child, nodes.Element):
            parts.append(_inline(child))
    return "".join(parts)


_SKIPPED = (nodes.comment, nodes.substitution_definition, nodes.target, nodes.raw, nodes.title)
_INLINE = (
    nodes.paragraph, nodes.rubric, nodes.line, nodes.term, nodes.caption, nodes.attribution,
    nodes.field_name, nodes.subtitle,
)  # fmt: skip


def _block(node: nodes.Node) -> str:
    """The text of one body element (lists, admonitions, footnotes ... recursively)."""
    if isinstance(node, nodes.system_message):
        return _unknown_directive(node)
    if isinstance(node, _SKIPPED) or not isinstance(node, nodes.Element):
        return node.astext() if isinstance(node, nodes.Text) else ""
    if isinstance(node, nodes.table):
        rows = [
            " | ".join(one_line(entry.astext()) for entry in row.children) for row in node.findall(nodes.row)
        ]
        title = node.next_node(nodes.title)
        return "\n".join(([one_line(title.astext())] if title is not None else []) + rows)
    if isinstance(node, nodes.image):
        alt = node.get("alt")
        return f"[image: {one_line(alt)}]" if alt else ""
    if isinstance(node, nodes.literal_block | nodes.doctest_block | nodes.math_block):
        return node.astext()
    if isinstance(node, _INLINE):
        return _inline(node)
    if isinstance(node, nodes.footnote | nodes.citation):
        label = node.next_node(nodes.label)
        body = "\n\n".join(p for p in (_block(c) for c in node.children if c is not label) if p.strip())
        return f"[{label.astext()}] {body}" if label is not None else body
    parts = (_block(child) for child in node.children)
    separator = (
        "\n" if isinstance(node, nodes.bullet_list | nodes.enumerated_list | nodes.line_block) else "\n\n"
    )
    return separator.join(p for p in parts if p.strip())


def _walk(section: nodes.Element, depth: int, builder: SectionBuilder) -> None:
    for child in section.children:
        if isinstance(child, nodes.section):
            title = child.next_node(nodes.title)
            builder.heading(depth + 1, _inline(title) if title is not None else "")
            _walk(child, depth + 1, builder)
        else:
            builder.block(_block(child))


def units_of(text: str, source: str = "<rst>") -> tuple[list[TextUnit], str | None, list[str]]:
    """Units, document title (``.. title::``) and warnings of reST ``text``."""
    settings = dict(SETTINGS, warning_stream=io.StringIO())
    document = publish_doctree(text, source_path=source, settings_overrides=settings)
    parsed = [c for c in document.children if not isinstance(c, nodes.system_message)]
    if text.strip() and not parsed:
        problems = "; ".join(one_line(m.astext()) for m in document.findall(nodes.system_message))
        warning = f"reStructuredText could not be parsed ({problems[:200]}); indexed as plain text"
        return [TextUnit(text)], None, [warning]
    builder = SectionBuilder()
    _walk(document, 0, builder)
    title = document.get("title")
    return builder.units(), one_line(title) if isinstance(title, str) and title.strip() else None, []


def parse(data: bytes) -> Parsed:
    """A .rst file: decoded like any text file, then one unit per section."""
    text, warnings = decode(data)
    units, title, more = units_of(text)
    return Parsed(tuple(units), title=title, warnings=warnings + tuple(more))
