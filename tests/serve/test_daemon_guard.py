"""The real daemon in a subprocess, on loopback TCP without a token: the issue's measured attack
(a DNS-rebinding page's POST, a cross-site text/plain POST) is refused, the daemon's own
clients are answered, and SIGHUP applies a new ``allowed_hosts``."""

from __future__ import annotations

import http.client
import signal
from pathlib import Path

import orjson
from support import Daemon, write_config

SECRET = "The harbour survey starts in May; bring boots and a torch for the tunnels under the pier."


def post(port: int, headers: dict[str, str], body: bytes) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest("POST", "/v1/search", skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()}
    finally:
        conn.close()


def tcp_port(event: dict[str, object]) -> int:
    listeners = event["listeners"]
    assert isinstance(listeners, list)
    return int(next(x for x in listeners if x.startswith("tcp ")).rsplit(":", 1)[1])


def test_web_pages_cannot_read_the_daemons_documents(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, extra='[serve]\ntcp = "127.0.0.1:0"\n')
    (tmp_path / "inbox" / "notes.txt").write_text(SECRET + "\n")
    daemon = Daemon(cfg, cli_env)
    try:
        daemon.ready()
        daemon.wait_event("store_saved")
        (listening,) = daemon.events("api_listening")
        port = tcp_port(listening)
        query = b'{"query": "when does the harbour survey start", "k": 3}'
        # The measurement, which answered 200 with the text before.
        for _ in range(3):
            status, body, headers = post(
                port, {"Host": f"attacker.example:{port}", "Content-Type": "text/plain"}, query
            )
            assert status == 421 and b"harbour" not in body
            assert not [h for h in headers if h.startswith("access-control-")]
        status, body, headers = post(
            port,
            {"Host": f"127.0.0.1:{port}", "Origin": "http://attacker.example", "Content-Type": "text/plain"},
            query,
        )
        assert status == 403 and b"harbour" not in body
        assert orjson.loads(body)["error"]["code"] == "origin_not_allowed"
        assert not [h for h in headers if h.startswith("access-control-")]
        # The daemon's own page and every non-browser client are answered.
        for headers_ in (
            {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"},
            {"Host": f"localhost:{port}"},
        ):
            status, body, _ = post(port, {**headers_, "Content-Type": "application/json"}, query)
            assert status == 200, body
            assert orjson.loads(body)["results"][0]["content"] == SECRET
        refused = daemon.events("api_host_refused")
        assert len(refused) == 1 and refused[0]["value"] == f"attacker.example:{port}"
        assert refused[0]["level"] == "warning"

        # SIGHUP with a new [serve] allowed_hosts: the listeners are set up again with it.
        cfg.write_text(cfg.read_text().replace("[serve]\n", '[serve]\nallowed_hosts = ["embedd.lan"]\n'))
        daemon.proc.send_signal(signal.SIGHUP)
        (reloaded,) = daemon.wait_event("api_reloaded")
        port = tcp_port(reloaded)
        status, body, _ = post(port, {"Host": f"embedd.lan:{port}"}, query)
        assert status == 200 and orjson.loads(body)["results"][0]["content"] == SECRET
        assert post(port, {"Host": f"attacker.example:{port}"}, query)[0] == 421
    finally:
        assert daemon.stop() == 0
