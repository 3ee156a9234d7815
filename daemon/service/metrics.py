"""Prometheus metrics of one daemon, in a registry of its own (``GET /metrics``).

Counters and the save histogram are fed by the worker's notices (``Metrics.hear`` is a notices
listener: it only bumps numbers); the API's handlers report each search and embeddings request
(``searched``, ``embedded``); gauges are read when Prometheus scrapes, from the parts that know
them (``watch``): the worker's queue and bulk index, each sink's queue, the scheduler, the
published snapshot. A registry per daemon, never the global one, so two daemons (or tests) in one
process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.embed.scheduler import SchedulerStats
from daemon.sinks.sync import SinkStatus
from daemon.store.snapshot import Published

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Free-text reasons become label values; past this many distinct ones the rest count as "other"
# so a stream of odd errors cannot grow the metrics without bound.
MAX_REASONS = 32
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SAVE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The daemon's metrics; ``exposition()`` is the text ``/metrics`` answers with."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.files_indexed = Counter("embedd_files_indexed", "Files (re)indexed into the store.", registry=r)
        self.files_removed = Counter(
            "embedd_files_removed", "Files removed from the store, by reason.", ["reason"], registry=r
        )
        self.files_renamed = Counter(
            "embedd_files_renamed", "Files renamed or moved (vectors kept).", registry=r
        )
        self.files_failed = Counter(
            "embedd_files_failed", "Files that could not be indexed, by reason.", ["reason"], registry=r
        )
        self.files_skipped = Counter(
            "embedd_files_skipped",
            "Files not indexed (what was stored stays), by reason.",
            ["reason"],
            registry=r,
        )
        self.chunks_embedded = Counter("embedd_chunks_embedded", "Chunks embedded by the model.", registry=r)
        self.chunks_reused = Counter(
            "embedd_chunks_reused", "Chunks whose vector was already in the store (not embedded).", registry=r
        )
        self.tokens = Counter(
            "embedd_tokens_embedded", "Tokens of the chunks embedded while indexing.", registry=r
        )
        self.index_seconds = Counter(
            "embedd_index_seconds", "Seconds spent indexing files (extract, chunk, embed).", registry=r
        )
        self.saves = Counter("embedd_store_saves", "Store saves written.", registry=r)
        self.save_seconds = Histogram(
            "embedd_store_save_seconds", "Duration of a durable store save.", buckets=SAVE_BUCKETS, registry=r
        )
        self.save_failures = Counter(
            "embedd_store_save_failures", "Store saves that failed (retried).", registry=r
        )
        self.bytes_written = Counter(
            "embedd_store_written_bytes", "Bytes written by store saves and folds.", registry=r
        )
        self.folds = Counter(
            "embedd_store_folds", "Folds of the journal into the JSON file (full rewrites).", registry=r
        )
        self.fold_seconds = Histogram(
            "embedd_store_fold_seconds",
            "Duration of a fold, the sidecar cache included.",
            buckets=(*SAVE_BUCKETS, 120.0, 300.0),
            registry=r,
        )
        self.search_seconds = Histogram(
            "embedd_search_seconds",
            "Searches answered by the API, by mode.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embeddings_seconds = Histogram(
            "embedd_embeddings_request_seconds",
            "POST /v1/embeddings requests answered.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embeddings_inputs = Counter(
            "embedd_embeddings_inputs", "Texts embedded for POST /v1/embeddings.", registry=r
        )
        self.events = Counter("embedd_notices", "Notices from the worker, by kind.", ["kind"], registry=r)
        self._reasons: dict[str, set[str]] = {}
        self._live = _Live()
        r.register(self._live)

    # -- fed by notices and handlers ----------------------------------------------------

    def _reason(self, family: str, reason: object) -> str:
        seen = self._reasons.setdefault(family, set())
        text = str(reason) if reason is not None else "unknown"
        if text in seen or len(seen) < MAX_REASONS:
            seen.add(text)
            return text
        return "other"

    def hear(self, kind: str, fields: Mapping[str, object]) -> None:
        """A notices listener: count what the worker did."""
        self.events.labels(kind).inc()
        if kind == "file_indexed":
            self.files_indexed.inc()
            self.chunks_embedded.inc(_num(fields.get("embedded")))
            self.chunks_reused.inc(_num(fields.get("reused")))
            self.tokens.inc(_num(fields.get("tokens")))
            self.index_seconds.inc(_num(fields.get("seconds")))
        elif kind == "file_removed":
            self.files_removed.labels(self._reason("removed", fields.get("reason"))).inc()
        elif kind == "file_renamed":
            self.files_renamed.inc()
        elif kind == "file_failed":
            self.files_failed.labels(self._reason("failed", fields.get("reason"))).inc()
        elif kind == "file_skipped":
            self.files_skipped.labels(self._reason("skipped", fields.get("reason"))).inc()
        elif kind == "store_saved":
            self.saves.inc()
            self.save_seconds.observe(_num(fields.get("durable_s")))
            self.bytes_written.inc(_num(fields.get("bytes_written")))
        elif kind == "store_save_failed":
            self.save_failures.inc()
        elif kind == "store_folded":
            self.folds.inc()
            self.fold_seconds.observe(_num(fields.get("seconds")))
            self.bytes_written.inc(_num(fields.get("bytes_written")))

    def searched(self, mode: str, seconds: float) -> None:
        """One search answered by the API."""
        self.search_seconds.labels(mode).observe(seconds)

    def embedded(self, inputs: int, seconds: float) -> None:
        """One embeddings request answered by the API."""
        self.embeddings_inputs.inc(inputs)
        self.embeddings_seconds.observe(seconds)

    # -- read at scrape time ------------------------------------------------------------

    def watch(
        self,
        *,
        activity: Callable[[], Mapping[str, object]] | None = None,
        sinks: Callable[[], Sequence[SinkStatus]] | None = None,
        scheduler: Callable[[], SchedulerStats] | None = None,
        threads: Callable[[], int] | None = None,
        published: Published | None = None,
    ) -> None:
        """Where the gauges are read from when Prometheus scrapes (each optional)."""
        live = self._live
        live.activity = activity or live.activity
        live.sinks = sinks or live.sinks
        live.scheduler = scheduler or live.scheduler
        live.threads = threads or live.threads
        live.published = published or live.published

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class _Live(Collector):
    """The gauges read at scrape time."""

    def __init__(self) -> None:
        self.activity: Callable[[], Mapping[str, object]] | None = None
        self.sinks: Callable[[], Sequence[SinkStatus]] | None = None
        self.scheduler: Callable[[], SchedulerStats] | None = None
        self.threads: Callable[[], int] | None = None
        self.published: Published | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())  # values change at every scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        if self.activity is not None:
            act: Mapping[str, Any] = self.activity()
            yield _gauge("embedd_queued_files", "Files waiting to be indexed.", act.get("queued_files", 0))
            yield _gauge(
                "embedd_bulk_files_left", "Files left in the bulk index.", act.get("bulk_files_left", 0)
            )
            yield _gauge(
                "embedd_bulk_index_active", "1 while a bulk index runs.", act.get("bulk_index", False)
            )
        if self.published is not None:
            snap = self.published.current()
            yield _gauge("embedd_store_files", "Files in the store (as searches see it).", snap.files)
            yield _gauge("embedd_store_chunks", "Chunks in the store (as searches see it).", snap.count)
        if self.threads is not None:
            yield _gauge("embedd_embedder_threads", "Threads llama.cpp computes with.", self.threads())
        if self.scheduler is not None:
            stats = self.scheduler()
            queued = GaugeMetricFamily(
                "embedd_embedder_queued_jobs", "Jobs waiting for the model.", labels=["priority"]
            )
            queued.add_metric(["query"], stats.queued_queries)
            queued.add_metric(["index"], stats.queued_index)
            yield queued
            yield _gauge("embedd_embedder_busy", "1 while the model computes.", stats.busy)
            jobs = CounterMetricFamily(
                "embedd_embedder_jobs", "Jobs the model finished.", labels=["priority"]
            )
            jobs.add_metric(["query"], stats.query_jobs)
            jobs.add_metric(["index"], stats.index_jobs)
            yield jobs
            calls = CounterMetricFamily(
                "embedd_embedder_calls", "Native llama.cpp calls made.", labels=["priority"]
            )
            calls.add_metric(["query"], stats.query_calls)
            calls.add_metric(["index"], stats.index_slices)
            yield calls
        if self.sinks is not None:
            pending = GaugeMetricFamily(
                "embedd_sink_pending_files",
                "Files a sink does not have as the store has them.",
                labels=["sink"],
            )
            lag = GaugeMetricFamily(
                "embedd_sink_lag_seconds", "Age of the oldest change a sink has not got.", labels=["sink"]
            )
            failing = GaugeMetricFamily(
                "embedd_sink_failures", "Consecutive failed attempts to write to a sink.", labels=["sink"]
            )
            full = GaugeMetricFamily(
                "embedd_sink_full_sync", "1 while a sink still needs a full sync.", labels=["sink"]
            )
            for status in self.sinks():
                pending.add_metric([status.sink], status.lag.pending)
                lag.add_metric([status.sink], status.lag.oldest_age_s or 0.0)
                failing.add_metric([status.sink], status.failures)
                full.add_metric([status.sink], float(status.lag.full_sync))
            yield from (pending, lag, failing, full)


def _gauge(name: str, doc: str, value: object) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value) if isinstance(value, int | float) else 0.0)
