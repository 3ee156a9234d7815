"""One exit-code mapping: the daemon (``embedd run``) and the tools end with the same code for
the same error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon import cli
from daemon.errors import (
    ConfigError,
    EmbeddError,
    FingerprintMismatchError,
    ModelError,
    StoreError,
    StoreLockedError,
    UsageError,
)

CASES = [
    (UsageError("bad"), cli.EXIT_USAGE, "usage_error"),
    (ModelError("m.gguf", "no such file"), cli.EXIT_MODEL, "model_error"),
    (StoreLockedError("locked"), cli.EXIT_STORE_LOCKED, "store_locked"),
    (FingerprintMismatchError("other model"), cli.EXIT_FINGERPRINT, "fingerprint_mismatch"),
    (StoreError("disk"), cli.EXIT_FAILURE, "failed"),
]


@pytest.mark.parametrize(("error", "code", "event"), CASES, ids=[c[2] for c in CASES])
def test_run_exits_with_the_code_the_tools_use(
    error: EmbeddError, code: int, event: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def failing_run(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli, "_run", failing_run)
    with capture_logs() as logs:
        got = cli.main(["--config", str(tmp_path / "config.toml")])
    assert got == code == cli.exit_code(error)
    assert [e["event"] for e in logs] == [event]
    assert logs[0]["error"] == str(error)


def test_a_config_error_under_run_names_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing_run(args: argparse.Namespace) -> int:
        raise ConfigError("model.threads", -1, "must be an integer >= 0")

    monkeypatch.setattr(cli, "_run", failing_run)
    # The config-error path sets logging up itself (the config never got to); keep the capture.
    monkeypatch.setattr(cli.logsetup, "configure", lambda *args: None)
    with capture_logs() as logs:
        assert cli.main(["--config", str(tmp_path / "config.toml")]) == cli.EXIT_USAGE
    assert logs[0]["event"] == "config_error"
    assert logs[0]["field"] == "model.threads"
