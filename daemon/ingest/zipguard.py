"""Opening a zip-based document (.docx, .pptx, .odt, .epub) only after checking it is safe to.

Nothing is decompressed before the central directory has been checked: the number of entries,
each entry's declared size and compression ratio, and the total. A member is then read in
1 MiB steps and never past its declared size (zipfile stops there and checks the CRC), so a
header that lies costs at most one step of memory, and a damaged stream is a clear "corrupt
member" instead of a zlib traceback. Archives inside the document (an embedded workbook, a
zip bomb posing as one) are never opened. A password-protected Office file is not a zip at
all but an OLE2 compound file holding ``EncryptionInfo`` and ``EncryptedPackage`` streams;
that is recognised and named. Standalone (see ``units``).
"""

from __future__ import annotations

import zipfile
import zlib
from typing import BinaryIO

from .units import CORRUPT, ENCRYPTED, LIMIT, UNSUPPORTED, Refused

MIB = 1024 * 1024
MAX_ENTRIES = 10_000  # a 300-page report has ~100 parts, a big illustrated EPUB a few thousand
MAX_ENTRY_BYTES = 256 * MIB
MAX_TOTAL_BYTES = 512 * MIB
MAX_RATIO = 200.0  # XML compresses 5-30x; only entries over RATIO_FLOOR are judged
RATIO_FLOOR = MIB
STEP = MIB

CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # OLE2 compound file: legacy or encrypted Office
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
_ENCRYPTED_STREAMS = ("EncryptedPackage".encode("utf-16-le"), "EncryptionInfo".encode("utf-16-le"))
_CFB_SCAN_BYTES = 256 * MIB  # the directory of a compound file can sit anywhere in it


def article(what: str) -> str:
    """``what`` with "a" or "an" before it: "a Word document", "an EPUB book"."""
    return ("an " if what[:1] in "AEIOU" else "a ") + what


def _cfb_is_encrypted(stream: BinaryIO) -> bool:
    """Whether a compound file's directory names the streams of an encrypted OOXML package.

    Directory entries store names in UTF-16LE; scanning for them (in steps, with an overlap
    for a name cut by a step boundary) needs no OLE2 parser.
    """
    stream.seek(0)
    found = [False, False]
    tail = b""
    scanned = 0
    while scanned < _CFB_SCAN_BYTES and not all(found):
        piece = stream.read(STEP)
        if not piece:
            break
        scanned += len(piece)
        window = tail + piece
        for i, name in enumerate(_ENCRYPTED_STREAMS):
            found[i] = found[i] or name in window
        tail = window[-64:]
    return all(found)


def sniff(stream: BinaryIO, what: str) -> None:
    """Refuse ``stream`` unless it starts like a zip archive, naming what it is instead."""
    stream.seek(0)
    head = stream.read(8)
    if not head:
        raise Refused(CORRUPT, f"empty file, not {article(what)}")
    if head.startswith(CFB_MAGIC):
        if _cfb_is_encrypted(stream):
            raise Refused(
                ENCRYPTED,
                "encrypted (a password-protected Office document); save a copy without "
                "the password to index it",
            )
        raise Refused(
            UNSUPPORTED,
            f"an OLE2 compound file (a legacy binary .doc/.ppt/.xls with a new name?), "
            f"not {article(what)}; save it in the new format to index it",
        )
    if not head.startswith(ZIP_MAGICS):
        raise Refused(CORRUPT, f"not {article(what)} (not a zip package; it starts with {head!r})")


class Package:
    """A checked zip archive; member names are matched ignoring case, as OOXML requires."""

    def __init__(self, archive: zipfile.ZipFile, what: str) -> None:
        self._zip = archive
        self.what = what
        self._names = {info.filename.casefold(): info.filename for info in archive.infolist()}

    def name(self, member: str) -> str | None:
        """The member's name as stored, or None when there is no such member."""
        return self._names.get(member.lstrip("/").casefold())

    def has(self, member: str) -> bool:
        """Whether the archive holds ``member``."""
        return self.name(member) is not None

    def read(self, member: str, cap: int = MAX_ENTRY_BYTES) -> bytes:
        """The bytes of ``member``, refused past ``cap`` bytes or when its stream is damaged."""
        stored = self.name(member)
        if stored is None:
            raise Refused(CORRUPT, f"{self.what}: the package has no {member!r}")
        parts: list[bytes] = []
        total = 0
        try:
            # Step by step: ZipExtFile.read(n) lets zlib produce up to n bytes at once before
            # the declared size trims it, so one big read of a lying member costs n bytes.
            with self._zip.open(stored) as fh:
                while piece := fh.read(STEP):
                    total += len(piece)
                    if total > cap:
                        raise Refused(LIMIT, f"{self.what}: {member!r} inflates past {cap} bytes")
                    parts.append(piece)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
            # A CRC mismatch, a truncated or damaged deflate stream, an unsupported method.
            raise Refused(CORRUPT, f"{self.what}: corrupt zip member {member!r}: {exc}") from None
        return b"".join(parts)


def open_package(stream: BinaryIO, what: str, required: tuple[str, ...] = ()) -> Package:
    """Check ``stream``'s central directory and open it; ``required`` members must be present.

    Raises ``Refused``: corrupt, encrypted (a password or zip encryption), a legacy binary
    file, or a possible zip bomb (too many entries, too large, too compressed).
    """
    sniff(stream, what)
    stream.seek(0)
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise Refused(CORRUPT, f"not {article(what)}: corrupt zip ({exc})") from None
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise Refused(
            LIMIT, f"zip has {len(infos)} entries (limit {MAX_ENTRIES}): refused as a possible zip bomb"
        )
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise Refused(ENCRYPTED, f"encrypted (zip entry {info.filename!r} needs a password)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refused(
                CORRUPT,
                f"zip entry {info.filename!r} uses compression method {info.compress_type}, which "
                f"no {what} uses",
            )
        if info.file_size > MAX_ENTRY_BYTES:
            raise Refused(
                LIMIT,
                f"zip entry {info.filename!r} inflates to {info.file_size} bytes (limit "
                f"{MAX_ENTRY_BYTES}): refused as a possible zip bomb",
            )
        if info.file_size > RATIO_FLOOR:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > MAX_RATIO:
                raise Refused(
                    LIMIT,
                    f"zip entry {info.filename!r} is compressed {ratio:.0f}:1 (limit "
                    f"{MAX_RATIO:.0f}:1): refused as a possible zip bomb",
                )
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise Refused(
            LIMIT,
            f"zip inflates to {total} bytes in all (limit {MAX_TOTAL_BYTES}): refused as a possible zip bomb",
        )
    package = Package(archive, what)
    for member in required:
        if not package.has(member):
            raise Refused(CORRUPT, f"not {article(what)}: the zip has no {member!r}")
    return package
