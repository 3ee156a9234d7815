"""One TOML table laid over its defaults, read key by key with type and range checks.

``daemon.config`` reads every table of the configuration through ``Table``; each getter
raises ``ConfigError`` naming the dotted key as the user wrote it (an old name too), the
value and what is allowed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from daemon.errors import ConfigError


def absolute(path: Path) -> Path:
    """``path`` made absolute with '.' and '..' folded away lexically.

    Not ``resolve()``: symlinks stay as the user wrote them, so logs show familiar paths.
    """
    return Path(os.path.normpath(path.absolute()))


def reject_unknown(data: Mapping[str, object], prefix: str, allowed: Sequence[str]) -> None:
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(
                f"{prefix}{key}",
                value,
                f"unknown key; allowed here: {', '.join(sorted(allowed))}",
            )


def _type_name(value: object) -> str:
    return type(value).__name__


class Table:
    """One TOML table laid over its defaults; each getter checks type and range."""

    def __init__(
        self,
        raw: Mapping[str, object],
        field: str,
        defaults: Mapping[str, object],
        base: Path,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        values: dict[str, object] = {}
        self._written: dict[str, str] = {}  # key -> the (old) name the user wrote it under
        for key, value in raw.items():
            name = (aliases or {}).get(key, key)
            if name in values:
                old = key if key != name else self._written[name]
                raise ConfigError(
                    f"{field}.{old}", raw[old], f"the old name of {name}, which is set too; keep only {name}"
                )
            values[name] = value
            self._written[name] = key
        reject_unknown(values, f"{field}.", tuple(defaults))
        self._values: Mapping[str, object] = {**defaults, **values}
        self._field = field
        self._base = base

    def _get(self, key: str) -> tuple[str, object]:
        return f"{self._field}.{self._written.get(key, key)}", self._values[key]

    def integer(self, key: str, *, minimum: int, maximum: int | None = None) -> int:
        field, value = self._get(key)
        # bool is a subclass of int, and `threads = true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(field, value, f"must be an integer, not {_type_name(value)}")
        if value < minimum:
            raise ConfigError(field, value, f"must be an integer >= {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(field, value, f"must be an integer from {minimum} to {maximum}")
        return value

    def number(self, key: str, *, minimum: float = 0.0) -> float:
        """A finite number > 0 and >= ``minimum`` (integer or float)."""
        field, value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(field, value, f"must be a number, not {_type_name(value)}")
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(field, value, "must be a finite number > 0")
        if value < minimum:
            raise ConfigError(field, value, f"must be at least {minimum:g}")
        return float(value)

    def boolean(self, key: str) -> bool:
        field, value = self._get(key)
        if not isinstance(value, bool):
            raise ConfigError(field, value, f"must be true or false, not {_type_name(value)}")
        return value

    def string(self, key: str) -> str:
        field, value = self._get(key)
        if not isinstance(value, str):
            raise ConfigError(field, value, f"must be a string, not {_type_name(value)}")
        return value

    def choice(self, key: str, allowed: Sequence[str]) -> str:
        field = f"{self._field}.{key}"
        value = self.string(key)
        if value.lower() not in allowed:
            raise ConfigError(field, value, f"must be one of: {', '.join(allowed)}")
        return value.lower()

    def path(self, key: str) -> tuple[str, Path]:
        """The path as written, and as an absolute path ('~' expanded, relative to the base)."""
        field, value = self._get(key)
        if value is None:
            raise ConfigError(field, value, "required; it has no default")
        written = self.string(key)
        if not written.strip():
            raise ConfigError(field, written, "must be a non-empty path")
        try:
            expanded = Path(written).expanduser()
        except RuntimeError as exc:
            raise ConfigError(field, written, f"cannot expand '~': {exc}") from exc
        return written, absolute(self._base / expanded)

    def strings(self, key: str, canonical: Callable[[str], str]) -> tuple[str, ...]:
        """An array of strings, each put in ``canonical`` form (its ValueError names the item)."""
        field, value = self._get(key)
        if value is None:  # the default: none
            return ()
        if not isinstance(value, list | tuple):
            raise ConfigError(field, value, "must be an array of strings")
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{field}[{index}]", item, f"must be a string, not {_type_name(item)}")
            try:
                out.append(canonical(item))
            except ValueError as exc:
                raise ConfigError(f"{field}[{index}]", item, str(exc)) from None
        return tuple(out)

    def patterns(self, key: str, *, allow_empty: bool) -> tuple[str, ...]:
        field, value = self._get(key)
        if not isinstance(value, list | tuple):
            raise ConfigError(field, value, "must be an array of glob patterns")
        if not value and not allow_empty:
            raise ConfigError(field, value, "must hold at least one glob pattern")
        for index, pattern in enumerate(value):
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"{field}[{index}]", pattern, "must be a non-empty string")
            if "/" in pattern:
                raise ConfigError(
                    f"{field}[{index}]",
                    pattern,
                    "must not contain '/': patterns match one file or folder name",
                )
        return tuple(value)
