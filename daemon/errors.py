"""Exception types raised by embedd's library code.

Lower layers raise these; only ``daemon.cli`` turns them into exit codes.
"""

from __future__ import annotations

from pathlib import Path


class EmbeddError(Exception):
    """Base class of every error embedd raises on purpose."""


class ConfigError(EmbeddError):
    """A configuration value is missing, unknown or out of range."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"config {field} = {value!r}: {reason}")


class ModelError(EmbeddError):
    """A model file is missing, unreadable or not a usable GGUF embedding model."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"model {self.path}: {reason}")


class ConversionError(EmbeddError):
    """A Hugging Face model directory cannot be converted to GGUF."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot convert {self.path}: {reason}")


class EmbedError(EmbeddError):
    """A text cannot be embedded: catch this for either cause, raise one of the two below.

    ``BadTextError`` is the caller's fault (answered 400 or 422), ``EmbedFailedError`` the
    model's (500). llama.cpp's own refusals (``embed/native.py``) are raised as plain
    ``EmbedError`` and become ``EmbedFailedError`` at the embedder's edge.
    """


class BadTextError(EmbedError):
    """A text the model must not be given: empty or whitespace only, or longer than its context."""


class EmbedFailedError(EmbedError):
    """The model failed on texts it may be given (llama.cpp refused a batch, gave no vector)."""


class TextTooLongError(BadTextError):
    """A text holds more tokens than the model's context; it must be split upstream."""

    def __init__(self, tokens: int, limit: int, index: int | None = None) -> None:
        self.tokens = tokens
        self.limit = limit
        self.index = index  # which of several texts, when known
        which = "text" if index is None else f"text {index}"
        super().__init__(f"{which} has {tokens} tokens, the model's context holds {limit}")


class ExtractError(EmbeddError):
    """A file's text cannot be extracted (binary, corrupt, encrypted, too large, ...)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class StoreError(EmbeddError):
    """The embedding store cannot be read or written."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock."""


class FingerprintMismatchError(StoreError):
    """The store was built with another model or chunking than the one configured."""


class StoreCorruptError(StoreError):
    """The store file is not a readable embedding store (empty, truncated, garbage, bad shape)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"store {self.path} is corrupt: {reason}")


class SchedulerClosedError(EmbeddError):
    """The embedder is shutting down and takes no more work (the daemon is stopping)."""


class ServeError(EmbeddError):
    """The local API cannot be set up: a socket or port cannot be bound, a token file cannot be read."""


class DaemonUnavailable(EmbeddError):
    """No daemon answers on the configured socket or port (the commands then work without it)."""


class DaemonRequestError(EmbeddError):
    """The running daemon refused a request; ``status`` is the HTTP status it answered with."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.status = status
        self.message = message
        self.code = code
        super().__init__(f"the daemon answered {status}: {message}")


class IndexingInterrupted(EmbeddError):
    """Indexing a file was abandoned because the daemon is stopping; the store keeps the old entries."""


class UsageError(EmbeddError):
    """The command line asks for something that cannot be done as asked (exit code 2)."""


class SinkError(EmbeddError):
    """A vector database the store is mirrored into cannot be reached or refused a request."""

    def __init__(self, sink: str, reason: str) -> None:
        self.sink = sink
        self.reason = reason
        super().__init__(f"sink {sink}: {reason}")


class SinkMismatchError(SinkError):
    """A sink's collection was made for other vectors (dimension, fingerprint) or not by embedd.

    Retrying cannot help: the user must point the sink at another collection or drop this one.
    """
