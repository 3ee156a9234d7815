"""The engines every sink test runs on: local folders per test, servers shared by the session.

The Milvus server (the PyPI ``milvus`` package's standalone binary) and Chroma's own server
(``chroma run``) start on loopback the first time a test needs them and are stopped when the
session ends, also when it fails.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ChromaTestServer, MilvusTestServer
from sink_support import Backend, foreign_chroma, foreign_lancedb, foreign_milvus, foreign_qdrant

LOCAL = {
    "milvus-lite": ("milvus", "lite.db", foreign_milvus, ("pymilvus", "milvus_lite")),
    "qdrant-local": ("qdrant", "qdrant", foreign_qdrant, ("qdrant_client",)),
    "chroma-local": ("chroma", "chroma", foreign_chroma, ("chromadb",)),
    "lancedb-local": ("lancedb", "lance", foreign_lancedb, ("lancedb",)),
}
SERVERS = ("milvus-server", "chroma-server")
ALL = (*LOCAL, *SERVERS)


def _need(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTestServer]:
    """One Milvus standalone server for the session, over gRPC on loopback."""
    _need("milvus", "pymilvus")
    server = MilvusTestServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaTestServer]:
    """One ``chroma run`` server for the session, over HTTP on loopback."""
    _need("chromadb")
    server = ChromaTestServer(tmp_path_factory.mktemp("chroma-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make_backend(kind: str, request: pytest.FixtureRequest, folder: Path) -> Backend:
    """The backend ``kind`` (an id of ``ALL``), with a fresh local folder under ``folder``."""
    if kind in LOCAL:
        engine, name, foreign, modules = LOCAL[kind]
        _need(*modules)
        return Backend(kind, engine, str(folder / name), local=kind != "lancedb-local", foreign=foreign)
    if kind == "milvus-server":
        server = request.getfixturevalue("milvus_server")
        return Backend(kind, "milvus", server.uri, local=False, foreign=foreign_milvus)
    server = request.getfixturevalue("chroma_server")
    return Backend(kind, "chroma", server.uri, local=False, foreign=foreign_chroma)


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each engine in turn: a local folder of this test's own, or the session's server."""
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
def collection(request: pytest.FixtureRequest) -> str:
    """A collection name of this test's own (servers are shared)."""
    from sink_support import unique_collection

    return unique_collection(request.node.originalname)
