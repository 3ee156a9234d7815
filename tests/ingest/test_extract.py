"""Tests of daemon.ingest.extract (and its sandboxed worker) with real files, FIFOs, symlinks and PDFs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, ClassVar

import pytest
from support import make_pdf, raw_pdf, zeros_flate

from daemon.errors import ExtractError
from daemon.ingest import extract as extract_mod
from daemon.ingest import sandbox
from daemon.ingest.extract import Extracted, ExtractLimits, TextUnit, extract

MIB = 1024 * 1024
LIMITS = ExtractLimits(max_bytes=10 * MIB, timeout_s=120, memory_bytes=1024 * MIB)
DEADLINE_S = 60  # generous: only a hang may exceed it


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def extract_error(path: Path, limits: ExtractLimits = LIMITS) -> str:
    with pytest.raises(ExtractError) as info:
        extract(path, limits)
    assert info.value.path == path
    return info.value.reason


def pdf_with_content(stream: bytes) -> bytes:
    """A one-page PDF, written by hand, whose content stream is ``stream`` (FlateDecode)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return raw_pdf(objects)


@pytest.fixture(scope="module")
def bomb_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~1 MB PDF whose page content inflates to 1 GiB of zeros."""
    return write(tmp_path_factory.mktemp("bomb") / "bomb.pdf", pdf_with_content(zeros_flate(1024)))


def run_with_deadline(fn: Any, *args: Any) -> Any:
    """Runs ``fn`` in a thread; fails instead of hanging the test run if it blocks."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"{fn.__name__} blocked"
    return result[0]


# --- text files ----------------------------------------------------------------


def test_text_file_is_one_unit_with_crlf_normalised(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", b"# Title\r\n\r\n*Markdown* stays text.\rold mac line\n")
    result = extract(path, LIMITS)
    assert result == Extracted(
        units=(TextUnit(text="# Title\n\n*Markdown* stays text.\nold mac line\n", page=None),),
        warnings=(),
    )


def test_markdown_is_split_by_headings_with_crlf_normalised(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.md", b"# Title\r\n\r\nIntro.\r## Part\r\nBody.\n")
    assert extract(path, LIMITS) == Extracted(
        units=(
            TextUnit("# Title\n\nIntro.", None, "# Title"),
            TextUnit("## Part\nBody.\n", None, "# Title > ## Part"),
        ),
        warnings=(),
    )


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfcaf\xc3\xa9")
    assert extract(path, LIMITS).units == (TextUnit(text="café", page=None),)


@pytest.mark.parametrize(("bom", "codec"), [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")])
def test_utf16_with_bom_is_decoded(tmp_path: Path, bom: bytes, codec: str) -> None:
    text = "naïve 𝄞 text\r\nline two"
    path = write(tmp_path / "wide.txt", bom + text.encode(codec))
    result = extract(path, LIMITS)
    assert result.units == (TextUnit(text="naïve 𝄞 text\nline two", page=None),)
    assert result.warnings == ()


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.txt", b"ok caf\xe9 and \xff\xfe\xfd end")
    result = extract(path, LIMITS)
    assert result.units == (TextUnit(text="ok caf\ufffd and \ufffd end", page=None),)
    assert result.warnings == ("invalid UTF-8 at byte 6, 4 bytes replaced",)


def test_invalid_utf8_offset_counts_the_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "bom-bad.txt", b"\xef\xbb\xbfab\x80")
    result = extract(path, LIMITS)
    assert result.units == (TextUnit(text="ab\ufffd", page=None),)
    assert result.warnings == ("invalid UTF-8 at byte 5, 1 bytes replaced",)


def test_invalid_utf16_is_replaced_with_a_warning(tmp_path: Path) -> None:
    # An unpaired high surrogate (2 bytes) and a dangling odd byte at the end.
    data = b"\xff\xfe" + "ab".encode("utf-16-le") + b"\x00\xd8" + "c".encode("utf-16-le") + b"\x41"
    result = extract(write(tmp_path / "bad16.txt", data), LIMITS)
    assert result.units == (TextUnit(text="ab\ufffdc\ufffd", page=None),)
    assert result.warnings == ("invalid UTF-16 at byte 6, 3 bytes replaced",)


def test_nul_bytes_mean_binary(tmp_path: Path) -> None:
    path = write(tmp_path / "image.txt", b"GIF89a\x01\x00\x01\x00")
    reason = extract_error(path)
    assert reason.startswith("binary file (NUL bytes")
    assert "byte 7" in reason


@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n \x0b\x0c", b"\xef\xbb\xbf \n", b"\xff\xfe \x00\n\x00"])
def test_empty_or_whitespace_file_has_no_units(tmp_path: Path, data: bytes) -> None:
    assert extract(write(tmp_path / "blank.txt", data), LIMITS) == Extracted(units=(), warnings=())


# --- what is opened, and how ------------------------------------------------------


def skip_precheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disables the lstat pre-check, as if the path was swapped after it: the
    checks on the opened descriptor alone must still hold."""
    monkeypatch.setattr(extract_mod, "_reject_special_file", lambda path: None)


@pytest.mark.parametrize("precheck", [True, False])
def test_fifo_is_rejected_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precheck: bool
) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    if not precheck:
        skip_precheck(monkeypatch)
    outcome = run_with_deadline(extract, fifo, LIMITS)
    assert isinstance(outcome, ExtractError)
    assert "FIFO" in outcome.reason


@pytest.mark.parametrize("precheck", [True, False])
def test_symlink_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precheck: bool) -> None:
    target = write(tmp_path / "real.txt", b"secret")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    if not precheck:
        skip_precheck(monkeypatch)
    assert "symlink" in extract_error(link)


def test_directory_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "folder.md"
    folder.mkdir()
    assert "directory" in extract_error(folder)


@pytest.mark.parametrize("name", ["huge.txt", "huge.pdf"])
def test_size_limit_is_checked_before_reading(tmp_path: Path, name: str) -> None:
    # A sparse 64 GiB file: reading it, or handing it to pypdf, would never finish in a test.
    path = tmp_path / name
    with path.open("wb") as fh:
        fh.truncate(64 * 1024 * MIB)
    reason = extract_error(path)
    assert "65536.0 MB" in reason
    assert "10.0 MB" in reason
    assert "daemon.max_file_mb" in reason


def test_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "exact.txt", b"x" * 100)
    limits = ExtractLimits(max_bytes=100, timeout_s=1, memory_bytes=MIB)
    assert extract(path, limits).units == (TextUnit(text="x" * 100, page=None),)
    write(path, b"x" * 101)
    assert "daemon.max_file_mb" in extract_error(path, limits)


def test_vanished_file(tmp_path: Path) -> None:
    assert "vanished" in extract_error(tmp_path / "gone.txt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "private.txt", b"text")
    path.chmod(0)
    assert "permission denied" in extract_error(path)


def test_permission_error_on_open_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same mapping as test_unreadable_file, reachable when the tests run as root.
    path = write(tmp_path / "private.txt", b"text")
    real_open = os.open

    def deny(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    assert "permission denied" in extract_error(path)


# --- PDFs ----------------------------------------------------------------------


def test_pdf_gives_one_unit_per_page_and_keeps_numbering(tmp_path: Path) -> None:
    path = write(tmp_path / "doc.pdf", make_pdf(["First page café.", "", "Third page."]))
    result = extract(path, LIMITS)
    assert [unit.page for unit in result.units] == [1, 3]
    assert "First page café." in result.units[0].text
    assert "Third page." in result.units[1].text
    assert result.warnings == ()


def test_pdf_suffix_ignores_case(tmp_path: Path) -> None:
    path = write(tmp_path / "SCAN.PDF", make_pdf(["Upper case suffix."]))
    assert [unit.page for unit in extract(path, LIMITS).units] == [1]


def test_pdf_without_any_text_has_no_units(tmp_path: Path) -> None:
    path = write(tmp_path / "blank.pdf", make_pdf(["", ""]))
    assert extract(path, LIMITS) == Extracted(units=(), warnings=())


def test_encrypted_pdf_with_empty_user_password_is_extracted(tmp_path: Path) -> None:
    path = write(tmp_path / "protected.pdf", make_pdf(["Only copying is restricted."], user_password=""))
    result = extract(path, LIMITS)
    assert [unit.page for unit in result.units] == [1]
    assert "Only copying is restricted." in result.units[0].text


def test_encrypted_pdf_with_a_password_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.pdf", make_pdf(["Secret."], user_password="hunter2"))
    assert extract_error(path) == "encrypted (needs a password)"


def test_random_bytes_named_pdf_are_corrupt(tmp_path: Path) -> None:
    path = write(tmp_path / "noise.pdf", os.urandom(4096))
    assert extract_error(path).startswith("not a PDF / corrupt: ")


@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 0.9])
def test_truncated_pdf_is_corrupt(tmp_path: Path, keep: float) -> None:
    data = make_pdf(["Some text.", "More text."])
    path = write(tmp_path / "cut.pdf", data[: int(len(data) * keep)])
    assert extract_error(path).startswith("not a PDF / corrupt: ")


def test_pdf_parser_warnings_are_forwarded(tmp_path: Path) -> None:
    data = make_pdf(["Still readable."])
    start = data.rindex(b"startxref\n") + len(b"startxref\n")
    end = data.index(b"\n", start)
    wrong = str(int(data[start:end]) - 7).encode()  # pypdf recovers from a bad xref pointer
    path = write(tmp_path / "xref.pdf", data[:start] + wrong + data[end:])
    result = extract(path, LIMITS)
    assert "Still readable." in result.units[0].text
    assert result.warnings
    assert all(warning.startswith("pypdf: ") for warning in result.warnings)


def test_zeros_flate_inflates_to_zeros() -> None:
    assert zlib.decompress(zeros_flate(4)) == bytes(4 * MIB)


def test_decompression_bomb_hits_the_memory_limit(bomb_pdf: Path) -> None:
    limits = ExtractLimits(max_bytes=10 * MIB, timeout_s=120, memory_bytes=128 * MIB)
    reason = extract_error(bomb_pdf, limits)
    assert reason.startswith("exceeded memory limit (128 MB)")
    assert "daemon.extract_memory_mb" in reason


def test_decompression_bomb_under_a_generous_limit_hits_pypdfs_limit(bomb_pdf: Path) -> None:
    assert extract_error(bomb_pdf).startswith("exceeded a pypdf safety limit")


def test_memory_limit_also_covers_lazy_imports(tmp_path: Path) -> None:
    # Below the interpreter's own footprint, imports fail to map their shared
    # objects: still a memory problem, not a corrupt PDF.
    path = write(tmp_path / "doc.pdf", pdf_with_content(zeros_flate(8)))
    limits = ExtractLimits(max_bytes=10 * MIB, timeout_s=120, memory_bytes=24 * MIB)
    assert extract_error(path, limits).startswith("exceeded memory limit (24 MB)")


class RecordingPopen(subprocess.Popen[bytes]):
    """Keeps every worker process so a test can check how it ended."""

    started: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordingPopen.started.append(self)


def use_worker(monkeypatch: pytest.MonkeyPatch, code: str) -> list[subprocess.Popen[bytes]]:
    """Replaces the sandboxed worker with a Python snippet and records the processes started."""
    monkeypatch.setattr(sandbox, "_worker_argv", lambda fmt, limits: [sys.executable, "-c", code])
    started: list[subprocess.Popen[bytes]] = []
    monkeypatch.setattr(RecordingPopen, "started", started)
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return started


def test_hanging_worker_is_killed_on_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = use_worker(monkeypatch, "import time; time.sleep(600)")
    path = write(tmp_path / "doc.pdf", make_pdf(["Text."]))
    limits = ExtractLimits(max_bytes=10 * MIB, timeout_s=0.5, memory_bytes=1024 * MIB)
    reason = run_with_deadline(extract_error, path, limits)
    assert reason.startswith("timed out after 0.5s")
    assert [proc.returncode for proc in started] == [-signal.SIGKILL]


def test_real_worker_times_out(tmp_path: Path) -> None:
    # No interpreter starts and imports pypdf within a millisecond.
    path = write(tmp_path / "doc.pdf", make_pdf(["Text."]))
    limits = ExtractLimits(max_bytes=10 * MIB, timeout_s=0.001, memory_bytes=1024 * MIB)
    assert extract_error(path, limits).startswith("timed out after 0.001s")


def test_crashing_worker_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_worker(monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    path = write(tmp_path / "doc.pdf", make_pdf(["Text."]))
    assert extract_error(path) == "extraction worker died from SIGSEGV"


def test_worker_garbage_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_worker(monkeypatch, "print('not json')")
    path = write(tmp_path / "doc.pdf", make_pdf(["Text."]))
    assert extract_error(path).startswith("extraction worker returned malformed output")


def test_worker_reads_the_opened_file_not_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker gets the checked descriptor as stdin, never the path.
    code = (
        "import json, sys; data = sys.stdin.buffer.read();"
        "print(json.dumps({'status': 'ok', 'units': [[1, None, str(len(data))]], 'title': None,"
        " 'warnings': []}))"
    )
    started = use_worker(monkeypatch, code)
    path = write(tmp_path / "doc.pdf", b"%PDF-" + b"x" * 95)
    assert extract(path, LIMITS).units == (TextUnit(text="100", page=1),)
    assert started[0].args == [sys.executable, "-c", code]
