"""What the daemon's runner hands llama.cpp: the configured model settings, read back from it."""

from __future__ import annotations

from pathlib import Path

from daemon.config import parse_config
from daemon.embed.embedder import LlamaEmbedder
from daemon.service.runner import embedder_settings


def test_configured_threads_and_gpu_layers_reach_llama_cpp(default_model: Path, tmp_path: Path) -> None:
    config = parse_config(
        {"model": {"path": str(default_model), "threads": 1, "gpu_layers": 5}, "watch": [{"path": "inbox"}]},
        tmp_path,
    )
    emb = LlamaEmbedder(config.model.path, embedder_settings(config))
    try:
        assert emb.gpu_layers == 5
        assert emb.threads == 1 and emb.context_threads == 1 and not emb.adaptive
    finally:
        emb.close()
    adaptive = parse_config({"model": {"path": str(default_model)}, "watch": [{"path": "inbox"}]}, tmp_path)
    assert embedder_settings(adaptive).threads == 0 and embedder_settings(adaptive).gpu_layers == 0
