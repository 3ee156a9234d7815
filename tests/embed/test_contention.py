"""With a real busy process on the machine, the adaptive embedder gives up the contended core.

The embedder runs in a child process at the daemon's default nice 10 (so this test's own
process keeps its priority) while another child spins at nice 0. Two llama.cpp threads then
wait at every barrier for the one that shares a core with the spinner, and one thread is
faster: the controller must find that by itself. How quickly it does depends on the machine,
so the child only polls until it sees one thread, within a generous deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.embed.embedder import physical_cores

CHILD = """
import json, os, sys, time
from pathlib import Path
os.nice(10)
from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
emb = LlamaEmbedder(Path(sys.argv[1]), EmbedderSettings(threads=0))
texts = [f"Chunk {i}: the river survey measures how rainfall moves the water table. " * 4 for i in range(48)]
seen, deadline = [emb.threads], time.monotonic() + 300
while emb.threads > 1 and time.monotonic() < deadline:
    emb.embed(texts)
    seen.append(emb.threads)
print(json.dumps({"threads": emb.threads, "seen": seen}))
"""


@pytest.mark.skipif(physical_cores() != 2, reason="the two-core case: one core busy elsewhere")
def test_a_busy_core_elsewhere_takes_the_embedder_down_to_one_thread(
    default_model: Path, cli_env: dict[str, str]
) -> None:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(default_model)],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    finally:
        hog.kill()
        hog.wait()
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["seen"][0] == 2, "it starts with every physical core"
    # structlog's default output (stdout) carries the controller's reasons.
    assert result["threads"] == 1, f"never stepped down: {result['seen']}\n{proc.stdout[-3000:]}"
    assert "embed_threads_changed" in proc.stdout
