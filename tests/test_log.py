"""daemon.log's hold on libraries' stdlib loggers: routed into our events, or silenced."""

from __future__ import annotations

import logging

import pytest
from structlog.testing import capture_logs

from daemon.log import route_to_events, silence


def test_a_routed_library_logger_speaks_as_our_event_and_not_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = ("embedd-test-lib", "embedd-test-lib.access")
    route_to_events(names, "lib_said")
    route_to_events(names, "lib_said")  # again (a second server start): still one handler
    lib = logging.getLogger(names[0])
    assert len(lib.handlers) == 1 and not lib.propagate
    with capture_logs() as logs:
        lib.warning("bad request from %s", "a client")
        logging.getLogger(names[1]).info("GET / 200")
        lib.debug("below INFO: dropped")
    assert [(e["event"], e["log_level"], e["message"]) for e in logs] == [
        ("lib_said", "warning", "bad request from a client"),
        ("lib_said", "debug", "GET / 200"),
    ]
    assert capsys.readouterr().err == ""


def test_a_silenced_library_logger_says_only_critical_things() -> None:
    silence("embedd-test-noisy")
    noisy = logging.getLogger("embedd-test-noisy")
    assert not noisy.isEnabledFor(logging.ERROR) and noisy.isEnabledFor(logging.CRITICAL)
