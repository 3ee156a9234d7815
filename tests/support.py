"""Helpers for end-to-end tests: real PDFs, the real CLI in a subprocess, polling the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fpdf import FPDF

T = TypeVar("T")
DEADLINE_S = 120.0


def make_pdf(pages: list[str], *, user_password: str | None = None) -> bytes:
    """A real PDF from fpdf2; an empty string gives a page without text."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 10, text)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    return bytes(pdf.output())


def zeros_flate(n_mib: int) -> bytes:
    """A zlib stream that inflates to ``n_mib`` MiB of zeros, built without holding them.

    After a full flush deflate restarts from an empty window, so every further
    MiB of zeros compresses to the same bytes: compress two, repeat the second.
    """
    mib = 1024 * 1024
    block = bytes(mib)
    co = zlib.compressobj(9)
    head = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    body = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(block) + co.flush(zlib.Z_FULL_FLUSH) == body
    final_block = co.flush()[:-4]  # drop the checksum over the 3 MiB actually fed
    # Adler-32 of n zero bytes: a stays 1, b grows by 1 per byte.
    adler = (((n_mib * mib) % 65521) << 16) | 1
    return head + body * (n_mib - 1) + final_block + adler.to_bytes(4, "big")


def pdf_stream(data: bytes, *, compressed: bytes | None = None) -> bytes:
    """A FlateDecode stream object holding ``data`` (or the ready-made zlib bytes ``compressed``)."""
    body = compressed if compressed is not None else zlib.compress(data, 9)
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream"


def raw_pdf(objects: Sequence[bytes], *, prev_xref_to_itself: bool = False) -> bytes:
    """A PDF written by hand: object ``i + 1`` is ``objects[i]``, object 1 is the catalog.

    ``prev_xref_to_itself`` makes the trailer's ``/Prev`` point back at its own xref table,
    a loop a naive parser follows forever.
    """
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    prev = b" /Prev %d" % xref if prev_xref_to_itself else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, prev, xref)
    return bytes(out)


def text_pdf(pages: Sequence[bytes], *, kids: Sequence[int] | None = None, **kwargs: bool) -> bytes:
    """A hand-written PDF whose page ``i`` shows the content stream ``pages[i]`` (Helvetica as /F1).

    Objects: 1 catalog, 2 page tree, 3 font, then one content stream and one page per entry.
    ``kids`` overrides the page tree's /Kids (object numbers), e.g. to build a cycle.
    """
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in once the pages are numbered
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    page_numbers = []
    for content in pages:
        objects.append(pdf_stream(content))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (len(objects))
        )
        page_numbers.append(len(objects))
    refs = b" ".join(b"%d 0 R" % n for n in (kids if kids is not None else page_numbers))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(page_numbers))
    return raw_pdf(objects, **kwargs)


def wait_for(predicate: Callable[[], T | None], *, timeout: float = DEADLINE_S, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def write_config(root: Path, model: Path, *, watch: str = "inbox", extra: str = "", daemon: str = "") -> Path:
    """A config in ``root`` that watches ``root/watch`` and stores into ``root/data``."""
    (root / watch).mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(
        f"""
[model]
path = "{model}"

[store]
path = "data/embeddings.json"

[[watch]]
path = "{watch}"

[daemon]
debounce_ms = 200
log_format = "json"
{daemon}
{extra}
"""
    )
    return cfg


# The unprivileged user the permission tests run the daemon as (root reads everything).
NOBODY = 65534
NOBODY_PREFIX = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


class Daemon:
    """The real ``embedd`` CLI running in a subprocess, with its JSON log captured to a file."""

    def __init__(self, config: Path, env: dict[str, str], *args: str, prefix: Sequence[str] = ()) -> None:
        """Start the daemon; ``prefix`` runs it through a wrapper (``setpriv ...``, ``unshare ...``)."""
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "daemon.cli", "--config", str(config), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Log events so far (optionally only those named ``name``)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out

    def wait_event(
        self, name: str, *, count: int = 1, timeout: float = DEADLINE_S, **fields: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events named ``name`` (with matching fields) were logged."""

        def found() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None and len(self._matching(name, fields)) < count:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
                )
            hits = self._matching(name, fields)
            return hits if len(hits) >= count else None

        return wait_for(found, timeout=timeout, what=f"{count} x {name} {fields}")

    def events_matching(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """Events named ``name`` so far whose fields equal ``fields``."""
        return self._matching(name, fields)

    def _matching(self, name: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in self.events(name) if all(e.get(k) == v for k, v in fields.items())]

    def ready(self) -> Daemon:
        self.wait_event("daemon_ready")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def read_store(path: Path) -> dict[str, Any] | None:
    """The store as JSON, or None while it does not exist yet."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    assert isinstance(data, dict)
    return data


def entries_by_source(store: dict[str, Any], source: str) -> list[dict[str, Any]]:
    return sorted(
        (e for e in store["embeddings"] if e["metadata"]["source"] == source),
        key=lambda e: e["metadata"]["chunk"],
    )


def cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``embedd ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_without_systemd() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env
