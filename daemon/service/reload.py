"""What a configuration reload (SIGHUP) may change while the daemon runs."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from daemon.config import Config
from daemon.service.filestate import extract_limits
from daemon.watch import scan

if TYPE_CHECKING:
    from daemon.service.service import Service

log = structlog.get_logger("embedd")


def effective_config(old: Config, new: Config) -> Config:
    """``new`` with the model, chunking, store and sinks of ``old``, which need a restart (logged)."""
    pinned = [
        key
        for key, a, b in (
            ("model", old.model, new.model),
            ("chunking", old.chunking, new.chunking),
            ("store", old.store, new.store),
            ("sink", old.sinks, new.sinks),
        )
        if a != b
    ]
    if pinned:
        log.warning(
            "config_reload_partial",
            unchanged=pinned,
            hint="these take effect at the next start (with --reembed if the fingerprint changes)",
        )
    return replace(new, model=old.model, chunking=old.chunking, store=old.store, sinks=old.sinks)


def apply_config(service: Service, new: Config) -> None:
    """Apply a reloaded configuration: watched folders, patterns and daemon settings.

    The model, chunking and store stay as they are (changing them needs a restart, and the
    model is not reloaded when it did not change); a folder no longer watched leaves the
    store, a new one is scanned.
    """
    old = service.config
    effective = effective_config(old, new)
    before = {w.path: w for w in old.watches}
    after = {w.path: w for w in effective.watches}
    service.config = effective
    for path in before.keys() - after.keys():
        service.watcher.remove_root(path)
        service.outages.forget_below(path)
        for source in scan.sources_under(old.watches, service.store.sources(), path):
            service.remove(source, reason="folder no longer watched")
    for path, watch in after.items():
        if before.get(path) != watch:
            service.watcher.add_root(path, watch.recursive)
    service.debouncer.set_quiet(effective.daemon.debounce_ms / 1000.0)
    service.pipeline.limits = extract_limits(effective)
    queued = service.reconcile()
    log.info(
        "config_reloaded",
        added=sorted(str(p) for p in after.keys() - before.keys()),
        removed=sorted(str(p) for p in before.keys() - after.keys()),
        queued=queued,
    )
