"""The engines every sink test runs on: local folders per test, servers shared by the session.

The Milvus server (the PyPI ``milvus`` package's standalone binary) and Chroma's own server
(``chroma run``) start on loopback the first time a test needs them and are stopped when the
session ends, also when it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ChromaTestServer, MilvusTestServer
from sink_support import ALL, Backend, make_backend, need


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTestServer]:
    """One Milvus standalone server for the session, over gRPC on loopback."""
    need("milvus", "pymilvus")
    server = MilvusTestServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaTestServer]:
    """One ``chroma run`` server for the session, over HTTP on loopback."""
    need("chromadb")
    server = ChromaTestServer(tmp_path_factory.mktemp("chroma-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each engine in turn: a local folder of this test's own, or the session's server."""
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
def collection(request: pytest.FixtureRequest) -> str:
    """A collection name of this test's own (servers are shared)."""
    from sink_support import unique_collection

    return unique_collection(request.node.originalname)
