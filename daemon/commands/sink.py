"""``embedd sink sync``: make a sink hold exactly what the store holds for this daemon."""

from __future__ import annotations

from typing import TextIO

from daemon.config import Config


def sync_command(config: Config, name: str | None, *, rewrite: bool, out: TextIO) -> None:
    """Bring the named (or only) ``[[sink]]`` in line with the store and say what it took."""
    from daemon.sinks.mirror import sync_sink

    sink, report = sync_sink(config, name, rewrite=rewrite)
    out.write(
        f"sink {sink}: {report.sources} sources, {report.rows} rows written, {report.unchanged} unchanged, "
        f"{report.deleted} deleted in {report.seconds:.1f} s\n"
    )
