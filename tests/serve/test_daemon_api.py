"""The real daemon in a subprocess serving its API: same ranking three ways, queries during a bulk
index, SIGHUP for [serve], a stale or live socket, and an MCP client starting `embedd mcp`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from reference_bert import ReferenceBert, model_dir
from support import Daemon, cli, read_store, wait_for, write_config

TOPICS = [
    "The harbour survey starts in May; bring boots and a torch for the tunnels under the pier.",
    "A sourdough loaf needs a long, cool rise: twelve hours in the fridge is typical.",
    "The city trams had their brakes inspected in March, and two cars were taken out of service.",
    "Quarterly revenue grew by eight percent, mostly from the new subscription plans.",
    "The volcano's last eruption covered the valley in ash and closed the airport for a week.",
    "Our on-call engineers rotate weekly; the handover happens on Monday at ten.",
    "Tomato plants need full sun, regular watering and a stake once they reach knee height.",
    "The museum archive holds letters from the harbour master written between 1850 and 1890.",
    "Latency spikes in the payment service were traced to a slow DNS resolver.",
    "The choir rehearses on Thursday evenings in the hall behind the library.",
    "Migrating the old database needs a freeze on schema changes for two weeks.",
    "Rainfall in the spring raised the water table and flooded two basements on River Street.",
]
QUERIES = [
    "when does the harbour survey start",
    "bread dough rising time",
    "why was the payment service slow",
]


def sock_of(cfg: Path) -> Path:
    return cfg.parent / "data" / "embeddings.sock"


def uds(cfg: Path) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock_of(cfg))), base_url="http://embedd", timeout=120
    )


def ranked(doc: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["id"], h["score"]) for h in doc["results"]]


def test_same_ranking_three_ways_and_openai_vectors_equal_the_store(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    for i, text in enumerate(TOPICS):
        (tmp_path / "inbox" / f"t{i:02}.txt").write_text(text + "\n")
    # A socket left behind by a crash (nobody listens on it) is replaced.
    sock_of(cfg).parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_of(cfg)))
    stale.close()
    daemon = Daemon(cfg, cli_env)
    try:
        daemon.ready()
        daemon.wait_event("store_saved")
        assert sock_of(cfg).stat().st_mode & 0o777 == 0o660
        assert daemon.events("stale_socket_removed")
        with uds(cfg) as c:
            assert c.get("/healthz").json() == {"status": "ready"}
            jobs_before = c.get("/v1/status").json()["daemon"]["embedder"]["query_jobs"]
            for query in QUERIES:
                http = c.post("/v1/search", json={"query": query, "k": 5}).json()
                via_daemon = cli(["search", "--config", str(cfg), "-k", "5", "--json", query], cli_env)
                cold = cli(
                    ["search", "--config", str(cfg), "-k", "5", "--json", "--no-daemon", query], cli_env
                )
                assert via_daemon.returncode == 0 and cold.returncode == 0, via_daemon.stderr + cold.stderr
                a, b = json.loads(via_daemon.stdout), json.loads(cold.stdout)
                assert [i for i, _ in ranked(http)] == [i for i, _ in ranked(a)] == [i for i, _ in ranked(b)]
                assert np.allclose([s for _, s in ranked(http)], [s for _, s in ranked(b)], atol=1e-5)
                assert {k: v for k, v in a.items() if k != "results"} == {
                    k: v for k, v in b.items() if k != "results"
                }
            status = c.get("/v1/status").json()
            assert status["daemon"]["phase"] == "ready" and status["store"]["chunks"] == len(TOPICS)
            # The daemon embedded the HTTP query and the CLI's, not the cold one's: the CLI
            # really asked the daemon (a silent fallback would give the same JSON).
            assert status["daemon"]["embedder"]["query_jobs"] - jobs_before == 2 * len(QUERIES)
        st = cli(["status", "--config", str(cfg), "--json"], cli_env)
        live = json.loads(st.stdout)["daemon"]
        assert live["running"] and live["in_memory"]["chunks"] == len(TOPICS) and "queued_files" in live

        # The official openai client over the socket: vectors equal the store's and the reference's.
        import openai

        store = read_store(cfg.parent / "data" / "embeddings.json")
        assert store is not None
        stored = {e["content"]: np.array(e["embedding"], dtype=np.float32) for e in store["embeddings"]}
        with uds(cfg) as http_client:
            client = openai.OpenAI(base_url="http://embedd/v1", api_key="x", http_client=http_client)
            got = client.embeddings.create(model="all-MiniLM-L6-v2", input=TOPICS[:6])
        reference = ReferenceBert.from_dir(model_dir())
        for text, data in zip(TOPICS[:6], got.data, strict=True):
            vec = np.array(data.embedding, dtype=np.float32)
            assert float(vec @ stored[text]) > 0.9999
            ref = reference.embed(text)
            assert float(vec @ ref / np.linalg.norm(ref)) > 0.9999
    finally:
        code = daemon.stop()
    assert code == 0
    assert not sock_of(cfg).exists()  # removed at a clean stop


def test_queries_during_a_bulk_index_wait_at_most_one_batch(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    """At least 2,000 chunks indexed in bulk; each query is served between two index batches."""
    rng = np.random.default_rng(7)
    words = " ".join(TOPICS).replace(",", "").replace(".", "").split()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for f in range(40):
        paragraphs = [" ".join(rng.choice(words, size=14)) + "." for _ in range(60)]
        (inbox / f"bulk{f:02}.txt").write_text("\n\n".join(paragraphs))
    cfg = write_config(tmp_path, default_model, extra="[chunking]\nsize = 100\noverlap = 10\n")
    daemon = Daemon(cfg, cli_env, "--log-level", "debug")
    answers = []
    try:
        daemon.wait_event("bulk_index_queued")
        daemon.wait_event("file_indexed")
        with uds(cfg) as c:
            for query in QUERIES * 3:
                r = c.post("/v1/search", json={"query": query, "k": 3})
                assert r.status_code == 200, r.text
                answers.append(r.json())
                assert c.get("/v1/status").json()["daemon"]["bulk_index"] in (True, False)
        wait_for(
            lambda: (
                (read_store(cfg.parent / "data" / "embeddings.json") or {}).get("files", {}).keys()
                >= {f"inbox/bulk{f:02}.txt" for f in range(40)}
            ),
            timeout=600,
            what="all 40 files in the store",
        )
        jobs = daemon.events("embed_job")
    finally:
        assert daemon.stop() == 0
    store = read_store(cfg.parent / "data" / "embeddings.json")
    assert store is not None and store["count"] >= 2000
    queries = [j for j in jobs if j["kind"] == "query"]
    index = [j for j in jobs if j["kind"] == "index"]
    total_slices = max(j["index_slices_done"] for j in index)
    assert len(queries) == len(answers)
    # Structural proof: each query waited for at most the one index slice in flight ...
    assert all(q["index_slices_waited"] <= 1 for q in queries), queries
    # ... and some were answered while the bulk index still had batches to run.
    during = [q for q in queries if 0 < q["index_slices_done"] < total_slices]
    assert during, (queries, total_slices)
    # Searches during the bulk index saw the store grow, whole files at a time.
    counts = [a["searched"] for a in answers]
    assert counts == sorted(counts)
    verify = cli(["verify", "--config", str(cfg)], cli_env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sighup_applies_a_changed_serve_section_and_a_live_socket_is_refused(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    (tmp_path / "inbox" / "a.txt").write_text(TOPICS[0])
    daemon = Daemon(cfg, cli_env)
    try:
        daemon.ready()
        # A second daemon for another store but the same socket path: refused, naming the socket.
        other = tmp_path / "other"
        other_cfg = write_config(other, default_model, extra=f'[serve]\nsocket = "{sock_of(cfg)}"\n')
        second = cli(["--config", str(other_cfg)], cli_env, timeout=120)
        assert second.returncode == 1
        assert "another server is listening on" in second.stdout + second.stderr
        assert str(sock_of(cfg)) in second.stdout + second.stderr
        with uds(cfg) as c:
            assert c.get("/healthz").status_code == 200
        (tmp_path / "token").write_text("first-token\n")
        serve = '\n[serve]\nsocket = "run/api.sock"\ntcp = "127.0.0.1:0"\ntoken_file = "token"\n'
        cfg.write_text(cfg.read_text() + serve)
        daemon.proc.send_signal(signal.SIGHUP)
        (event,) = daemon.wait_event("api_reloaded")
        tcp = next(x for x in event["listeners"] if x.startswith("tcp "))[4:]
        assert not sock_of(cfg).exists()
        with httpx.Client(base_url=f"http://{tcp}", headers={"Authorization": "Bearer first-token"}) as t:
            hits = t.post("/v1/search", json={"query": "harbour"}).json()["results"]
            assert hits[0]["source"] == "inbox/a.txt"
        # A new token in the same file: SIGHUP sets the listeners up anew with it.
        (tmp_path / "token").write_text("second-token\n")
        daemon.proc.send_signal(signal.SIGHUP)
        second = daemon.wait_event("api_reloaded", count=2)[1]
        tcp = next(x for x in second["listeners"] if x.startswith("tcp "))[4:]
        for token, status in (("first-token", 401), ("second-token", 200)):
            with httpx.Client(base_url=f"http://{tcp}", headers={"Authorization": f"Bearer {token}"}) as t:
                assert t.post("/v1/search", json={"query": "harbour"}).status_code == status
        moved = httpx.HTTPTransport(uds=str(tmp_path / "run" / "api.sock"))
        with httpx.Client(transport=moved, base_url="http://e") as c:
            assert c.get("/healthz").status_code == 200
    finally:
        assert daemon.stop() == 0
    assert not (tmp_path / "run" / "api.sock").exists()


def test_an_mcp_client_lists_the_tools_and_searches(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    cfg = write_config(tmp_path, default_model)
    for i, text in enumerate(TOPICS[:6]):
        (tmp_path / "inbox" / f"t{i}.txt").write_text(text)
    (tmp_path / "inbox" / "guide.md").write_text(
        "# Guide\n\n## Tunnels\n\nThe tunnels under the old fort flood at every spring tide.\n"
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "daemon.cli", "mcp", "--config", str(cfg)],
        env={"PYTHONPATH": cli_env["PYTHONPATH"], "PATH": cli_env.get("PATH", "")},
    )
    daemon: Daemon | None = None

    async def session() -> None:
        nonlocal daemon
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == {"search", "status"}
            assert tools["search"].input_schema["required"] == ["query"]
            alone = await s.call_tool("search", {"query": "harbour"})
            assert alone.is_error and "no embedd daemon" in alone.content[0].text  # type: ignore[union-attr]
            daemon = Daemon(cfg, cli_env)
            daemon.ready()
            daemon.wait_event("store_saved")
            r = await s.call_tool("search", {"query": "when does the harbour survey start", "k": 2})
            assert not r.is_error, r.content
            hits = r.structured_content["hits"]  # type: ignore[index]
            assert [h["rank"] for h in hits] == [1, 2] and hits[0]["source"] == "inbox/t0.txt"
            assert hits[0]["content"] == TOPICS[0] and hits[0]["page"] is None
            md = await s.call_tool("search", {"query": "flooded tunnels under a fort", "k": 1})
            (top,) = md.structured_content["hits"]  # type: ignore[index]
            assert top["source"] == "inbox/guide.md" and top["section"] == "# Guide > ## Tunnels", top
            st = await s.call_tool("status", {})
            assert not st.is_error and st.structured_content["store"]["chunks"] == 7  # type: ignore[index]
            bad = await s.call_tool("search", {"query": "x", "k": 0})
            assert bad.is_error

    try:
        asyncio.run(asyncio.wait_for(session(), 300))
    finally:
        if daemon is not None:
            assert daemon.stop() == 0


@pytest.fixture(autouse=True)
def _short_tmp(tmp_path: Path) -> None:
    # A Unix socket path holds at most 107 bytes; pytest's folders are well below that here.
    assert len(str(tmp_path / "other" / "data" / "embeddings.sock")) < 107
