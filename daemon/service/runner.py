"""Running the daemon as a process: model and store lifecycle, signals, configuration reload.

SIGTERM and SIGINT ask for a clean stop (a second one kills at once); SIGHUP re-reads the
configuration file and applies what can change without reloading the model.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog

from daemon import log as logsetup
from daemon.config import Config, load_config
from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
from daemon.embed.scheduler import QueuedEmbedder, Scheduler
from daemon.errors import ConfigError
from daemon.service import priority
from daemon.service.notices import Notices
from daemon.service.progress import Stepped
from daemon.service.service import Service, fingerprint_for
from daemon.service.serving import Serving
from daemon.sinks.mirror import Mirror
from daemon.sinks.registry import check_sinks
from daemon.store.snapshot import Published
from daemon.store.store import Store

log = structlog.get_logger("embedd")


def install_signals(
    stop: threading.Event, wake: threading.Event, reload: threading.Event
) -> Callable[[], None]:
    """Handlers only set flags (the worker acts on them); returns a function restoring the old ones."""
    stopping = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in (*stopping, signal.SIGHUP)}

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log.info(
            "stop_requested",
            signal=signal.Signals(signum).name,
            hint="finishing the current batch and writing the store; send again to kill",
        )
        stop.set()
        wake.set()
        for sig in stopping:
            signal.signal(sig, signal.SIG_DFL)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload.set()
        wake.set()

    for sig in stopping:
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def config_reloader(
    config: Config, *, log_format: str | None = None, log_level: str | None = None
) -> Callable[[], Config | None]:
    """A function that re-reads ``config``'s file; None (and a logged reason) when it is invalid.

    Log settings given on the command line keep winning over the file's.
    """

    def reload() -> Config | None:
        if config.source_path is None:
            log.warning("config_reload_skipped", reason="the configuration did not come from a file")
            return None
        try:
            new = load_config(config.source_path)
        except ConfigError as exc:
            log.error(
                "config_reload_failed",
                path=str(config.source_path),
                field=exc.field,
                value=exc.value,
                reason=exc.reason,
                hint="the running configuration stays in force",
            )
            return None
        logsetup.configure(log_format or new.daemon.log_format, log_level or new.daemon.log_level)
        return new

    return reload


def embedder_settings(config: Config) -> EmbedderSettings:
    """The llama.cpp context the configuration asks for."""
    return EmbedderSettings(
        threads=config.model.threads,
        normalize=config.model.normalize,
        batch_tokens=config.model.batch_tokens,
        gpu_layers=config.model.gpu_layers,
    )


def lower_priority(config: Config, *, whole_process: bool) -> None:
    """Run below interactive work (``[daemon] nice``); the threads created afterwards inherit it.

    ``whole_process`` (the daemon's own main thread) also lowers threads that already exist;
    otherwise (the service run from a thread, as tests do) only the calling thread and its
    future threads are lowered, never the host process's other threads.
    """
    lowered = priority.lower_priority(config.daemon.nice, all_threads=whole_process)
    if lowered is None:
        return
    now = lowered.priority
    log.info(
        "priority_lowered",
        nice=now.nice,
        cpu_policy=now.cpu_policy,
        io_class=now.io_class,
        threads_lowered=lowered.threads,
    )
    if lowered.problems:
        log.warning(
            "priority_not_lowered",
            problems=list(lowered.problems),
            hint="embedding then competes with interactive work at full priority; "
            "the systemd unit sets Nice=, CPUSchedulingPolicy= and IOSchedulingClass= itself",
        )


def run_service(
    config: Config,
    *,
    reembed: bool = False,
    stop: threading.Event | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
) -> None:
    """Load the model, open (lock) the store and run until SIGTERM/SIGINT or ``stop`` is set."""
    stop = stop or threading.Event()
    wake = threading.Event()
    reload = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    restore = install_signals(stop, wake, reload) if on_main else None
    try:
        # A sink whose client is not installed is a configuration error: say so before
        # spending seconds on the model.
        check_sinks(config.sinks)
        # Before the model loads and any thread starts, so every later thread inherits it.
        lower_priority(config, whole_process=on_main)
        started = time.monotonic()
        embedder = LlamaEmbedder(config.model.path, embedder_settings(config))
        log.info(
            "model_loaded",
            path=str(config.model.path),
            model=embedder.name,
            dimensions=embedder.dimension,
            pooling=embedder.pooling,
            threads=embedder.threads,
            adaptive_threads=embedder.adaptive,
            gpu_layers=config.model.gpu_layers,
            context=embedder.max_tokens,
            seconds=round(time.monotonic() - started, 2),
        )
        if config.model.gpu_layers and not embedder.gpu_offload:
            log.warning(
                "gpu_unavailable",
                gpu_layers=config.model.gpu_layers,
                hint="this llama-cpp-python was built without GPU support, so every layer runs on "
                "the CPU; see the README for a CUDA or Metal build",
            )
        # Every llama.cpp call from here on is made by the scheduler's one embedder thread.
        scheduler = Scheduler(embedder)
        scheduler.start()
        try:
            store = Store.open(
                config.store.path,
                model=embedder.name,
                dimensions=embedder.dimension,
                fingerprint=fingerprint_for(config, embedder),
                rebuild=reembed,
                keyword_progress=Stepped("keyword index", unit="files"),
            )
            try:
                log.info(
                    "store_opened",
                    path=str(config.store.path),
                    files=len(store.sources()),
                    chunks=store.count,
                )
                lock = threading.RLock()
                with lock:
                    published = Published(store)
                mirror = Mirror(config.sinks, daemon=config.daemon.name, store=store, store_lock=lock)
                mirror.start()
                serving = Serving(config, scheduler, published, stop)
                serving.watch_sinks(mirror.status)
                notices = Notices()
                notices.listen(serving.events)
                notices.listen(serving.metrics.hear)
                try:
                    serving.start()
                    service = Service(
                        config,
                        QueuedEmbedder(scheduler),
                        store,
                        mirror=mirror,
                        store_lock=lock,
                        published=published,
                        on_ready=serving.ready,
                        notices=notices,
                    )
                    serving.watch_activity(service.activity)
                    serving.backend.watch_forget(service.forgets.submit)
                    serving.backend.watch_files(service.files)
                    service.run(
                        stop,
                        wake,
                        reload=reload,
                        reloader=serving.reloading(
                            config_reloader(config, log_format=log_format, log_level=log_level)
                        ),
                    )
                finally:
                    serving.stop()
                    mirror.stop()
            finally:
                store.close()
        finally:
            scheduler.close()
            embedder.close()
        log.info("daemon_stopped")
    finally:
        if restore is not None:
            restore()
