"""``embedd forget``: drop a folder's (or a file's) entries from the store and the sinks on purpose.

The daemon keeps the entries of a folder it cannot reach (an unmounted disk); this is how a
user says the folder is really gone. A running daemon does it over its Unix socket; without
one the store is changed under its lock.
"""

from __future__ import annotations

from typing import TextIO

from daemon.commands.output import print_json
from daemon.config import Config
from daemon.errors import DaemonUnavailable, StoreLockedError
from daemon.service.forget import forget_offline, source_prefix


def forget_command(config: Config, target: str, *, as_json: bool, out: TextIO) -> None:
    """Forget ``target`` (a path under a watched folder, or a source prefix) and confirm what went.

    Raises StoreLockedError when a daemon holds the store but cannot be asked (no socket), and
    DaemonRequestError when the daemon refuses (503 while it starts or stops).
    """
    from daemon.serve.client import DaemonClient

    prefix = source_prefix(config, target)
    removed: list[str] | None = None
    via = "store"
    client = DaemonClient.for_config(config)
    if client is not None and client.socket_path is not None:
        try:
            answer = client.forget(prefix)
            removed = [str(s) for s in answer.get("removed", [])]
            via = "daemon"
        except DaemonUnavailable:
            removed = None  # nobody answers: the store itself, under its lock
    if removed is None:
        try:
            removed = forget_offline(config, prefix)
        except StoreLockedError as exc:
            raise StoreLockedError(
                f"{exc}. The running daemon answers forget only on its Unix socket: set [serve] socket, "
                "or stop the daemon and run this again"
            ) from None
    if as_json:
        print_json({"prefix": prefix, "removed": removed, "via": via}, out)
        return
    if not removed:
        out.write(f"nothing stored under {prefix!r}; nothing removed\n")
        return
    for source in removed:
        out.write(f"forgot {source}\n")
    where = "by the running daemon" if via == "daemon" else "from the store (no daemon was running)"
    out.write(f"{len(removed)} files removed under {prefix!r} {where}; sinks follow\n")
