"""The options of a search (mode, fusion, filters, grouping, k) and their checks: the one place.

Light on purpose (no numpy, no store): ``embedd search`` checks its options here before it asks
a daemon, and sends them with ``to_body``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from daemon.errors import UsageError
from daemon.ingest.extract import FORMATS

Fusion = Literal["rrf", "convex"]
FUSIONS: tuple[Fusion, ...] = ("rrf", "convex")
# The default fusion, chosen on bench/retrieval.py (CISI and CACM, docs/benchmarks.md): min-max
# convex at alpha 0.5 reached 1.11x and 1.12x the better of BM25 and vectors, RRF 1.09x and 1.06x.
FUSION: Fusion = "convex"
RRF_K = 60.0
ALPHA = 0.5
Mode = Literal["hybrid", "vector", "keyword"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "keyword")
GROUPS = ("chunk", "file")
FORMAT_NAMES: tuple[str, ...] = tuple(sorted({f.name for f in FORMATS.values()} | {"text"}))
MAX_K = 1000
"""The largest ``k`` anywhere (API, CLI, MCP): the one place it is checked is ``check_k``."""


def check_k(k: int) -> None:
    """Raise UsageError unless 1 <= k <= MAX_K."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise UsageError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")


def check_query(query: str) -> None:
    """Raise UsageError for a query that is empty or only whitespace (anything else is searched)."""
    if not query.strip():
        raise UsageError("the query is empty")


def parse_time(value: str, field: str) -> int:
    """An ISO 8601 date or date-time as ns since the epoch (a time without zone is UTC)."""
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            moment = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(
            f"{field} must be an ISO 8601 date or date-time (2026-01-31, 2026-01-31T12:00Z), not {value!r}"
        ) from None
    return int(moment.timestamp() * 1_000_000_000)


@dataclass(frozen=True)
class Filters:
    """Which chunks a search may return."""

    source_prefix: str | None = None
    formats: tuple[str, ...] = ()
    modified_after: int | None = None  # ns, inclusive
    modified_before: int | None = None  # ns, exclusive

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMAT_NAMES]
        if bad:
            raise UsageError(f"unknown format {bad[0]!r}; the formats are {', '.join(FORMAT_NAMES)}")

    @property
    def active(self) -> bool:
        return (
            bool(self.source_prefix or self.formats)
            or self.modified_after is not None
            or self.modified_before is not None
        )

    def _suffixes(self) -> tuple[set[str], bool]:
        """The suffixes the formats name, and whether "text" (any other suffix) is wanted."""
        return {s for s, f in FORMATS.items() if f.name in self.formats}, "text" in self.formats

    def keep(self, source: str, mtime_ns: int | None) -> bool:
        """Whether a chunk of ``source`` passes."""
        if self.source_prefix and not source.startswith(self.source_prefix):
            return False
        if self.formats:
            name = source.rsplit("/", 1)[-1]
            dot = name.rfind(".")
            suffix = name[dot:].lower() if dot > 0 else ""
            wanted, text = self._suffixes()
            if not (suffix in wanted or (text and suffix not in FORMATS)):
                return False
        if self.modified_after is not None and (mtime_ns is None or mtime_ns < self.modified_after):
            return False
        return not (
            self.modified_before is not None and (mtime_ns is None or mtime_ns >= self.modified_before)
        )

    def sql(self) -> tuple[str, list[object]]:
        """The same filters as a condition on the keyword index's ``sources`` table ``s``."""
        where: list[str] = []
        params: list[object] = []
        if self.source_prefix:
            where.append("substr(s.source, 1, ?) = ?")
            params += [len(self.source_prefix), self.source_prefix]
        if self.formats:
            wanted, text = self._suffixes()
            parts = []
            if wanted:
                parts.append(f"s.suffix IN ({','.join('?' * len(wanted))})")
                params += sorted(wanted)
            if text:
                parts.append(f"s.suffix NOT IN ({','.join('?' * len(FORMATS))})")
                params += sorted(FORMATS)
            where.append("(" + " OR ".join(parts) + ")")
        if self.modified_after is not None:
            where.append("s.mtime_ns >= ?")
            params.append(self.modified_after)
        if self.modified_before is not None:
            where.append("s.mtime_ns < ?")
            params.append(self.modified_before)
        return " AND ".join(where), params


@dataclass(frozen=True)
class SearchOptions:
    """How to search: mode, fusion and its constants, filters, grouping, a cosine threshold."""

    k: int = 5
    mode: Mode = "hybrid"
    fusion: Fusion = FUSION
    rrf_k: float = RRF_K
    alpha: float = ALPHA
    filters: Filters = Filters()
    group_by: str = "chunk"
    min_score: float | None = None  # on the cosine: vector mode only

    def __post_init__(self) -> None:
        check_k(self.k)
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.fusion not in FUSIONS:
            raise UsageError(f"fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")
        if self.group_by not in GROUPS:
            raise UsageError(f"group_by must be one of {', '.join(GROUPS)}, not {self.group_by!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be from 0 to 1, not {self.alpha}")
        if self.rrf_k < 0:
            raise UsageError(f"rrf_k must not be negative, not {self.rrf_k}")
        if self.min_score is not None and self.mode != "vector":
            raise UsageError("min_score is a threshold on the cosine similarity: use it with mode 'vector'")

    @property
    def needs_vector(self) -> bool:
        return self.mode != "keyword"


def to_body(query: str, opts: SearchOptions) -> dict[str, Any]:
    """The ``/v1/search`` request for ``query`` with ``opts`` (defaults left out)."""
    body: dict[str, Any] = {"query": query, "k": opts.k, "mode": opts.mode}
    f = opts.filters
    if f.source_prefix:
        body["source_prefix"] = f.source_prefix
    if f.formats:
        body["formats"] = list(f.formats)
    if f.modified_after is not None:
        body["modified_after"] = _iso(f.modified_after)
    if f.modified_before is not None:
        body["modified_before"] = _iso(f.modified_before)
    if opts.group_by != "chunk":
        body["group_by"] = opts.group_by
    if opts.min_score is not None:
        body["min_score"] = opts.min_score
    if opts.fusion != FUSION or opts.rrf_k != RRF_K or opts.alpha != ALPHA:
        body.update(fusion=opts.fusion, rrf_k=opts.rrf_k, alpha=opts.alpha)
    return body


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()
