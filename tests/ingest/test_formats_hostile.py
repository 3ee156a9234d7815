"""Hostile documents: zip bombs, damaged and encrypted packages, entity bombs, huge and slow pages.

First each case alone through ``extract`` (the real sandboxed worker), then all of them at
once through the real daemon, which must skip each with a clear reason (or cut it with a
warning), index the good files beside them and stay up. Every wait polls with a generous
deadline; nothing asserts a duration.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import documents as docs
import msoffcrypto  # type: ignore[import-untyped]  # no stubs installed
import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from lxml import etree
from support import Daemon, read_store, wait_for, write_config

from daemon.errors import ExtractError
from daemon.ingest.extract import ExtractLimits, extract
from daemon.store.store import Store

MIB = 1024 * 1024
LIMITS = ExtractLimits(max_bytes=100 * MIB, timeout_s=120, memory_bytes=1024 * MIB)
W = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n"
)


# -- building hostile files from good ones ----------------------------------------------------


def rezip(
    src: Path, *, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None
) -> bytes:
    """``src``'s members, some replaced, some added (deflated at level 9)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(src) as zin,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout,
    ):
        for info in zin.infolist():
            data = (replace or {}).get(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return out.getvalue()


def patch_central(data: bytes, member: str, **fields: int) -> bytes:
    """Rewrite fields of ``member``'s central directory entry (and its local header's size)."""
    blob = bytearray(data)
    name = member.encode()
    pos = blob.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", blob, pos + 28)[0]
        if bytes(blob[pos + 46 : pos + 46 + name_len]) == name:
            if "flags" in fields:
                struct.pack_into("<H", blob, pos + 8, fields["flags"])
            if "size" in fields:
                struct.pack_into("<I", blob, pos + 24, fields["size"])
                local = struct.unpack_from("<I", blob, pos + 42)[0]
                struct.pack_into("<I", blob, local + 22, fields["size"])
            return bytes(blob)
        pos = blob.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"no member {member}")


def ratio_bomb(base: Path) -> bytes:
    """A .docx whose document.xml is 64 MiB of spaces in one run: about 1000:1 compressed."""
    xml = (
        b"<w:document "
        + W
        + b"><w:body><w:p><w:r><w:t>"
        + b" " * (64 * MIB)
        + b"</w:t></w:r></w:p></w:body></w:document>"
    )
    return rezip(base, replace={"word/document.xml": xml})


def zip_of_zips(depth: int = 3, width: int = 8) -> bytes:
    """Nested archives named .docx (a small 42.zip): zips of zips, and no document in them."""
    level = b"the innermost file"
    for _ in range(depth):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for i in range(width):
                z.writestr(f"{i}.zip", level)
        level = out.getvalue()
    return level


def with_embedded_bomb(base: Path) -> bytes:
    """A good .docx carrying a zip bomb as an embedded object, which must never be opened."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("zeros.bin", bytes(64 * MIB))
    out = io.BytesIO()
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("word/embeddings/bomb.zip", inner.getvalue(), compress_type=zipfile.ZIP_STORED)
    return out.getvalue()


def many_entries(base: Path, n: int = 12_000) -> bytes:
    return rezip(base, add={f"junk/{i}.xml": b"" for i in range(n)})


def damaged_member(base: Path, member: str) -> bytes:
    """``base`` with bytes flipped inside ``member``'s compressed stream."""
    data = bytearray(base.read_bytes())
    with zipfile.ZipFile(base) as z:
        info = z.getinfo(member)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 3
    for k in range(start, start + 32):
        data[k] ^= 0xFF
    return bytes(data)


def legacy_cfb() -> bytes:
    """An OLE2 compound file (what a .doc is), without an encrypted package's streams."""
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4096 - 8)


def drm_epub(base: Path) -> bytes:
    encryption = (
        b'<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        b'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
        b'<enc:CipherData><enc:CipherReference URI="EPUB/signals.xhtml"/></enc:CipherData>'
        b"</enc:EncryptedData></encryption>"
    )
    return rezip(base, add={"META-INF/encryption.xml": encryption})


def laughs(base: Path, member: str, root_open: bytes, root_close: bytes) -> bytes:
    return rezip(base, replace={member: LAUGHS + root_open + b"&lol9;" + root_close})


def slow_rst() -> bytes:
    """30,000 references on one line: docutils' inline parser is quadratic on it (minutes)."""
    return b"Title\n=====\n\n" + b"a_ " * 30_000 + b"\n"


def huge_html(mib: int) -> bytes:
    """A ``mib`` MiB page; its paragraphs repeat, so its chunks are embedded once each."""
    paragraph = b"<p>" + b"Lava flows downhill and cools into basalt. " * 8 + b"</p>"
    body = paragraph * (mib * MIB // len(paragraph))
    return (
        b"<html><head><title>Huge</title></head><body><h1>Huge page</h1>"
        + body
        + b"<p>THE-END</p></body></html>"
    )


# -- the cases -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good documents of each zip format, for the hostile ones to be made from."""
    folder = tmp_path_factory.mktemp("good")
    return {
        "docx": docs.make_docx(folder / "good.docx"),
        "pptx": docs.make_pptx(folder / "good.pptx"),
        "odt": docs.make_odt(folder / "good.odt"),
        "epub": docs.make_epub(folder / "good.epub"),
    }


Builder = Callable[[dict[str, Path]], bytes]
ODT = (
    b'<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"><office:body>'
)
# name -> (how to build it, what the reason must say)
HOSTILE: dict[str, tuple[Builder, str]] = {
    "bomb-ratio.docx": (lambda g: ratio_bomb(g["docx"]), "is compressed"),
    "bomb-declared.docx": (
        lambda g: patch_central(g["docx"].read_bytes(), "word/document.xml", size=0xFFFF_FFFF),
        "inflates to 4294967295 bytes (limit 268435456): refused as a possible zip bomb",
    ),
    "bomb-lying-header.docx": (
        lambda g: patch_central(g["docx"].read_bytes(), "word/document.xml", size=100),
        "corrupt zip member 'word/document.xml': Bad CRC-32",
    ),
    "bomb-nested.docx": (
        lambda g: zip_of_zips(),
        "not a Word document (.docx): the zip has no '[Content_Types].xml'",
    ),
    "bomb-entries.pptx": (
        lambda g: many_entries(g["pptx"]),
        "entries (limit 10000): refused as a possible zip bomb",
    ),
    "truncated.pptx": (
        lambda g: g["pptx"].read_bytes()[:5000],
        "not a PowerPoint presentation (.pptx): corrupt zip",
    ),
    "garbage.docx": (lambda g: b"PK\x03\x04" + os.urandom(5000), "corrupt zip"),
    "damaged.odt": (lambda g: damaged_member(g["odt"], "content.xml"), "corrupt zip member 'content.xml'"),
    "text-named.docx": (lambda g: b"just some text\n", "not a Word document (.docx) (not a zip package"),
    "empty.epub": (lambda g: b"", "empty file, not an EPUB book (.epub)"),
    "legacy.docx": (lambda g: legacy_cfb(), "an OLE2 compound file (a legacy binary .doc/.ppt/.xls"),
    "encrypted.docx": (
        lambda g: docs.encrypt_docx(g["docx"]),
        "encrypted (a password-protected Office document)",
    ),
    "encrypted.odt": (
        lambda g: docs.encrypt_odt(docs.libreoffice_text()),
        "encrypted (a password-protected OpenDocument file)",
    ),
    "encrypted-entry.odt": (
        lambda g: patch_central(g["odt"].read_bytes(), "content.xml", flags=1),
        "encrypted (zip entry 'content.xml' needs a password)",
    ),
    "drm.epub": (lambda g: drm_epub(g["epub"]), "encrypted (DRM): the chapter 'EPUB/signals.xhtml'"),
    "laughs.docx": (
        lambda g: laughs(
            g["docx"],
            "word/document.xml",
            b"<w:document " + W + b"><w:body><w:p><w:r><w:t>",
            b"</w:t></w:r></w:p></w:body></w:document>",
        ),
        "word/document.xml: XML with entity declarations",
    ),
    "laughs.pptx": (
        lambda g: laughs(
            g["pptx"], "ppt/presentation.xml", b'<p:presentation xmlns:p="urn:x">', b"</p:presentation>"
        ),
        "ppt/presentation.xml: XML with entity declarations",
    ),
    "laughs.odt": (
        lambda g: laughs(g["odt"], "content.xml", ODT, b"</office:body></office:document-content>"),
        "content.xml: XML with entity declarations",
    ),
    "laughs.epub": (
        lambda g: laughs(
            g["epub"],
            "EPUB/steam.xhtml",
            b'<html xmlns="http://www.w3.org/1999/xhtml"><body><p>',
            b"</p></body></html>",
        ),
        "chapter 'EPUB/steam.xhtml' declares XML entities",
    ),
    "laughs.html": (
        lambda g: LAUGHS + b"<html><body><p>&lol9;</p></body></html>",
        "the page declares XML entities",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_document_is_refused_with_a_clear_reason(
    name: str, good: dict[str, Path], tmp_path: Path
) -> None:
    build, expected = HOSTILE[name]
    path = tmp_path / name
    path.write_bytes(build(good))
    with pytest.raises(ExtractError) as info:
        extract(path, LIMITS)
    assert expected in info.value.reason, info.value.reason


def test_the_password_protected_documents_open_with_their_password(good: dict[str, Path]) -> None:
    """The encrypted .docx and .odt above are real: their password gives back the document."""
    office = msoffcrypto.OfficeFile(io.BytesIO(docs.encrypt_docx(good["docx"])))
    office.load_key(password=docs.PASSWORD)
    opened = io.BytesIO()
    office.decrypt(opened, verify_integrity=True)
    with zipfile.ZipFile(opened) as plain, zipfile.ZipFile(good["docx"]) as original:
        assert plain.read("word/document.xml") == original.read("word/document.xml")

    with zipfile.ZipFile(io.BytesIO(docs.encrypt_odt(docs.libreoffice_text()))) as locked:
        m = f"{{{docs.MANIFEST}}}"
        manifest = etree.fromstring(locked.read("META-INF/manifest.xml"))
        entry = next(e for e in manifest.iter(m + "file-entry") if e.get(m + "full-path") == "content.xml")
        iv = base64.b64decode(entry.find(f".//{m}algorithm").get(m + "initialisation-vector"))
        derivation = entry.find(f".//{m}key-derivation")
        key = docs.odf_key(
            docs.PASSWORD,
            base64.b64decode(derivation.get(m + "salt")),
            int(derivation.get(m + "iteration-count")),
        )
        sealed = locked.read("content.xml")
        assert b"rststyle-table-0" not in sealed
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        packed = decryptor.update(sealed) + decryptor.finalize()
        packed = packed[: -packed[-1]]  # the padding's last byte is its length
        checksum = entry.find(f".//{m}encryption-data").get(m + "checksum")
        assert base64.b64decode(checksum) == hashlib.sha256(packed[:1024]).digest()
        content = zlib.decompressobj(-15).decompress(packed)
    with zipfile.ZipFile(docs.libreoffice_text()) as original:
        assert content == original.read("content.xml")


def test_embedded_archives_are_never_opened(good: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "carrier.docx"
    path.write_bytes(with_embedded_bomb(good["docx"]))
    result = extract(path, ExtractLimits(max_bytes=100 * MIB, timeout_s=120, memory_bytes=128 * MIB))
    assert docs.DOCX_PRUNING in "\n".join(u.text for u in result.units)


def test_text_beyond_the_file_limit_is_cut_with_a_warning(good: dict[str, Path], tmp_path: Path) -> None:
    """A small zip can hold far more text than its size (found in review): a document yields
    at most daemon.max_file_mb of text, as a text file of that size would."""
    import random

    rng = random.Random(3)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(300)
    ]
    paragraphs = b"".join(
        b"<w:p><w:r><w:t>" + " ".join(rng.choices(vocabulary, k=120)).encode() + b"</w:t></w:r></w:p>"
        for _ in range(4000)
    )
    xml = b"<w:document " + W + b"><w:body>" + paragraphs + b"</w:body></w:document>"
    path = tmp_path / "wordy.docx"
    path.write_bytes(rezip(good["docx"], replace={"word/document.xml": xml}))
    assert path.stat().st_size < MIB < len(paragraphs) // 2
    result = extract(path, ExtractLimits(max_bytes=MIB, timeout_s=120, memory_bytes=1024 * MIB))
    assert MIB * 0.99 < sum(len(u.text) for u in result.units) <= MIB
    assert result.warnings == (
        "the document's text is over 1 M characters; only the first 1 M were read "
        "(raise daemon.max_file_mb to index all of it)",
    )


def test_slow_document_is_killed_at_the_time_limit(tmp_path: Path) -> None:
    path = tmp_path / "slow.rst"
    path.write_bytes(slow_rst())
    with pytest.raises(ExtractError) as info:
        extract(path, ExtractLimits(max_bytes=100 * MIB, timeout_s=2, memory_bytes=1024 * MIB))
    assert info.value.reason == "timed out after 2s; raise daemon.extract_timeout_s if the file is just big"


def test_page_too_big_for_the_memory_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.html"
    path.write_bytes(huge_html(40))
    limits = ExtractLimits(
        max_bytes=100 * MIB, timeout_s=120, memory_bytes=128 * MIB, max_html_bytes=100 * MIB
    )
    with pytest.raises(ExtractError) as info:
        extract(path, limits)
    assert info.value.reason.startswith("exceeded memory limit (128 MB); raise daemon.extract_memory_mb")


# -- all at once, through the daemon ------------------------------------------------------------


def test_the_daemon_skips_each_hostile_document_and_stays_up(
    good: dict[str, Path], tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, daemon="extract_timeout_s = 5\nmax_html_mb = 1")
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    daemon = Daemon(cfg, cli_env).ready()
    try:
        for name, (build, _) in HOSTILE.items():
            (inbox / name).write_bytes(build(good))
        (inbox / "slow.rst").write_bytes(slow_rst())
        (inbox / "carrier.docx").write_bytes(with_embedded_bomb(good["docx"]))
        (inbox / "huge.html").write_bytes(huge_html(50))
        for kind, path in good.items():
            shutil.copy(path, inbox / f"fine.{kind}")

        reasons = {
            name: daemon.wait_event("file_skipped", path=str(inbox / name))[0]["reason"] for name in HOSTILE
        }
        for name, (_, expected) in HOSTILE.items():
            assert expected in reasons[name], (name, reasons[name])
        slow = daemon.wait_event("file_skipped", path=str(inbox / "slow.rst"))[0]["reason"]
        assert slow.startswith("timed out after 5s; raise daemon.extract_timeout_s")
        for name in ("carrier.docx", "huge.html", *(f"fine.{kind}" for kind in good)):
            daemon.wait_event("file_indexed", source=f"inbox/{name}", timeout=600)
        warning = daemon.wait_event("file_warning", path=str(inbox / "huge.html"))[0]["reason"]
        assert warning.startswith("HTML page is 50.0 MB; only its first 1.0 MB were read")
        (inbox / "after.md").write_text("# After\n\nA note written after all the hostile files.\n")
        daemon.wait_event("file_indexed", source="inbox/after.md")

        def settled() -> dict[str, Any] | None:
            store = read_store(store_path)
            return store if store is not None and "inbox/after.md" in store["files"] else None

        store = wait_for(settled, what="the store to hold every good file")
        rss_mb = psutil.Process(daemon.proc.pid).memory_info().rss / MIB
    finally:
        died = daemon.proc.poll()
        code = daemon.stop()
    assert died is None and code == 0, daemon.log_path.read_text()[-4000:]
    indexed = {e["metadata"]["source"] for e in store["embeddings"]}
    assert indexed == {
        f"inbox/{n}" for n in ("carrier.docx", "huge.html", "after.md", *(f"fine.{k}" for k in good))
    }
    huge = [e["content"] for e in store["embeddings"] if e["metadata"]["source"] == "inbox/huge.html"]
    assert not any("THE-END" in c for c in huge)
    for name in HOSTILE:
        assert len(daemon.events_matching("file_skipped", path=str(inbox / name))) == 1, name
    with Store.open_readonly(store_path) as opened:
        assert opened.count == store["count"] == len(store["embeddings"])
    page = daemon.events_matching("file_indexed", source="inbox/huge.html")[0]
    print(
        f"hostile documents: {len(HOSTILE) + 1} skipped, huge.html cut to {page['chunks']} chunks "
        f"({page['embedded']} embedded), daemon RSS {rss_mb:.0f} MB"
    )
