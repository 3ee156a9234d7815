"""What the watcher reports: one ``FileEvent`` per change (see ``daemon.watch.watcher`` for their meaning).

Kept apart from the watcher so the debouncer and the service handle events without importing watchdog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class EventKind(Enum):
    """What happened to a path."""

    CHANGED = "changed"
    DELETED = "deleted"
    MOVED = "moved"
    RESCAN = "rescan"


@dataclass(frozen=True)
class FileEvent:
    """One filesystem change; ``dest`` is set for ``MOVED`` and only for it.

    ``writer_open`` (``CHANGED`` only, a hint that takes no part in equality): True when the
    file was just written through a descriptor that may still be open, False when a writer
    just closed it, None when unknown. ``from_scan`` (also a hint): the event comes from a
    rescan comparing the disk with the store, not from the file system reporting a write.
    """

    kind: EventKind
    path: Path
    dest: Path | None = None
    writer_open: bool | None = field(default=None, compare=False)
    from_scan: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if (self.kind is EventKind.MOVED) != (self.dest is not None):
            raise ValueError(f"{self.kind.value} event for {self.path}: dest={self.dest!r}")


EventSink = Callable[[FileEvent], None]
