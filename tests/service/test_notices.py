"""The worker's notices: every listener hears each fact once, and a failing listener harms nobody."""

from __future__ import annotations

from collections.abc import Mapping

from structlog.testing import capture_logs

from daemon.service.notices import Notices


def test_every_listener_hears_each_notice_in_order() -> None:
    heard: list[tuple[str, str, dict[str, object]]] = []
    notices = Notices()
    notices.listen(lambda kind, fields: heard.append(("a", kind, dict(fields))))
    notices.listen(lambda kind, fields: heard.append(("b", kind, dict(fields))))
    notices.notify("file_removed", source="inbox/a.txt", reason="deleted")
    assert heard == [
        ("a", "file_removed", {"source": "inbox/a.txt", "reason": "deleted"}),
        ("b", "file_removed", {"source": "inbox/a.txt", "reason": "deleted"}),
    ]


def test_a_failing_listener_is_logged_and_the_others_still_hear() -> None:
    heard: list[str] = []

    def broken(kind: str, fields: Mapping[str, object]) -> None:
        raise KeyError("boom")

    notices = Notices()
    notices.listen(broken)
    notices.listen(lambda kind, fields: heard.append(kind))
    with capture_logs() as logs:
        notices.notify("store_saved", entries=3)
    assert heard == ["store_saved"]
    assert [e["event"] for e in logs] == ["notice_listener_failed"]
    assert logs[0]["kind"] == "store_saved"
