"""How commands print JSON for scripts: one indented object, one trailing newline."""

from __future__ import annotations

from typing import TextIO

import orjson


def print_json(doc: object, out: TextIO) -> None:
    """Write ``doc`` as indented JSON followed by a newline."""
    out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
