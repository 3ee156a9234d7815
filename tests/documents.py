"""Real documents for the format tests, written by the libraries that write them for people.

python-docx, python-pptx, odfpy and ebooklib (the dev extra) build a Word file, a slide deck,
an OpenDocument text and an EPUB; the HTML page, the reST and the Markdown are written out.
Documents made by office programs themselves are read where installed packages ship them
(never copied into the project), and password-protected ones are made here the way Word and
LibreOffice encrypt (msoffcrypto-tool; the ODF 1.2 scheme with ``cryptography``).
Each document has a few sections on distinct topics, so a search can tell them apart, and
planted markers (``TABLE-...``, ``NOTE-...``, ``ALT-...``) for what must survive extraction,
and ``NOISE-...`` for what must not.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
import zlib
from importlib.resources import files
from pathlib import Path

from PIL import Image


def png() -> io.BytesIO:
    data = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(data, "PNG")
    data.seek(0)
    return data


# -- Word ----------------------------------------------------------------------------------------

DOCX_PLANTING = (
    "Plant bare-root apple saplings in early spring, before the buds break. Dig the hole twice "
    "as wide as the roots and set the graft union a hand's width above the soil."
)
DOCX_SOIL = "Apple trees want a deep loam that drains well; lime an acid soil to a pH between 6 and 7."
DOCX_PRUNING = (
    "Prune apple trees in winter while they are dormant. Use clean secateurs, take out dead and "
    "crossing wood first, and keep the centre of the tree open to light and air."
)
DOCX_HARVEST = "An apple is ripe when it comes away with a gentle twist; windfalls go to the cider press."


def make_docx(path: Path) -> Path:
    """A Word document: Title, three chapters with subheadings, a table, a footnote, an image."""
    import docx
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part
    from docx.oxml import parse_xml
    from docx.shared import Inches

    doc = docx.Document()
    doc.core_properties.title = "Orchard Handbook"
    doc.sections[0].header.paragraphs[0].text = "NOISE-HEADER running head on every page"
    doc.add_heading("The Orchard Handbook", level=0)
    doc.add_paragraph("A practical guide for small orchards.")
    doc.add_heading("Planting", level=1)
    para = doc.add_paragraph(DOCX_PLANTING)
    para.add_run()._r.append(
        parse_xml(
            '<w:footnoteReference xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
            ' w:id="1"/>'
        )
    )
    doc.add_heading("Soil", level=2)
    doc.add_paragraph(DOCX_SOIL)
    table = doc.add_table(rows=2, cols=2)
    for (r, c), text in {
        (0, 0): "Soil",
        (0, 1): "TABLE-PH",
        (1, 0): "Loam",
        (1, 1): "6.0 to 7.0",
    }.items():
        table.cell(r, c).text = text
    doc.add_heading("Pruning", level=1)
    doc.add_paragraph(DOCX_PRUNING)
    doc.add_picture(png(), width=Inches(1))
    doc.inline_shapes[-1]._inline.docPr.set("descr", "ALT-DOCX diagram of an open-centre apple tree")
    doc.add_heading("Harvest", level=1)
    doc.add_paragraph(DOCX_HARVEST)
    # python-docx cannot create a footnotes part: add one by hand, as Word writes it.
    footnotes = (
        b'<w:footnotes xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        b'<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>'
        b'<w:footnote w:id="1"><w:p><w:r><w:t xml:space="preserve">NOTE-DOCX Grafted trees come from the '
        b"nursery in November.</w:t></w:r></w:p></w:footnote></w:footnotes>"
    )
    part = Part(PackURI("/word/footnotes.xml"), CONTENT_TYPE.WML_FOOTNOTES, footnotes, doc.part.package)
    doc.part.relate_to(part, RELATIONSHIP_TYPE.FOOTNOTES)
    doc.save(str(path))
    return path


# -- PowerPoint ----------------------------------------------------------------------------------

PPTX_REVENUE_NOTES = "NOTE-PPTX mention the delay at the northern warehouse"
PPTX_SUPPORT = "Support tickets fell by a third after the new help centre opened."


def make_pptx(path: Path) -> Path:
    """A deck of four slides: a title slide, a table with speaker notes, bullets with a picture,
    and a slide with nothing on it (its number is skipped, not reused)."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    deck.core_properties.title = "Quarterly Review"
    first = deck.slides.add_slide(deck.slide_layouts[0])
    first.shapes.title.text = "Quarterly Review"
    first.placeholders[1].text = "Sales, revenue and customer support"
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Revenue by region"
    table = second.shapes.add_table(3, 2, Inches(1), Inches(2), Inches(6), Inches(2)).table
    for (r, c), text in {
        (0, 0): "Region",
        (0, 1): "TABLE-REVENUE",
        (1, 0): "North",
        (1, 1): "1.2 million",
        (2, 0): "South",
        (2, 1): "0.9 million",
    }.items():
        table.cell(r, c).text = text
    second.notes_slide.notes_text_frame.text = PPTX_REVENUE_NOTES
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: no text at all
    fourth = deck.slides.add_slide(deck.slide_layouts[1])
    fourth.shapes.title.text = "Customer support"
    fourth.placeholders[1].text_frame.text = PPTX_SUPPORT
    picture = fourth.shapes.add_picture(png(), Inches(6), Inches(5))
    picture._element.nvPicPr.cNvPr.set("descr", "ALT-PPTX chart of weekly ticket volume")
    deck.save(str(path))
    return path


# -- OpenDocument ---------------------------------------------------------------------------------

ODT_STORMS = "During the autumn gales the keepers logged wind force and wave height every hour."
ODT_LAMP = "The lamp's brass burner is polished daily and the wick trimmed at dusk."


def make_odt(path: Path) -> Path:
    """An OpenDocument text: two levels of headings, a footnote, a list, a table, an image."""
    from odf import dc
    from odf.draw import Frame
    from odf.draw import Image as DrawImage
    from odf.opendocument import OpenDocumentText
    from odf.svg import Desc
    from odf.table import Table, TableCell, TableColumn, TableRow
    from odf.text import H, List, ListItem, Note, NoteBody, NoteCitation, P

    doc = OpenDocumentText()
    doc.meta.addElement(dc.Title(text="Lighthouse Log"))
    doc.text.addElement(H(outlinelevel=1, text="Storms"))
    para = P(text=ODT_STORMS)
    note = Note(id="ftn1", noteclass="footnote")
    note.addElement(NoteCitation(text="1"))
    body = NoteBody()
    body.addElement(P(text="NOTE-ODT readings from the anemometer on the gallery"))
    note.addElement(body)
    para.addElement(note)
    doc.text.addElement(para)
    items = List()
    item = ListItem()
    item.addElement(P(text="Close the storm shutters"))
    items.addElement(item)
    doc.text.addElement(items)
    doc.text.addElement(H(outlinelevel=2, text="Lamp maintenance"))
    doc.text.addElement(P(text=ODT_LAMP))
    table = Table(name="Supplies")
    table.addElement(TableColumn(numbercolumnsrepeated=2))
    for row_cells in (("Supply", "TABLE-ODT"), ("Paraffin", "40 litres")):
        row = TableRow()
        for text in row_cells:
            cell = TableCell()
            cell.addElement(P(text=text))
            row.addElement(cell)
        table.addElement(row)
    doc.text.addElement(table)
    href = doc.addPicture("Pictures/lamp.png", "image/png", png().getvalue())
    frame = Frame(width="2cm", height="1.5cm", anchortype="as-char", name="lamp")
    frame.addElement(DrawImage(href=href))
    frame.addElement(Desc(text="ALT-ODT drawing of the lamp room"))
    holder = P()
    holder.addElement(frame)
    doc.text.addElement(holder)
    doc.save(str(path))
    return path


# -- EPUB ---------------------------------------------------------------------------------------

EPUB_STEAM = "Steam locomotives boil water in a fire-tube boiler to drive the pistons."
EPUB_SIGNALS = "Semaphore signals tell the driver whether the block ahead is clear."


def make_epub(path: Path) -> Path:
    """An EPUB 3 of two chapters, with a table of contents, a note, a table and an image."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("railway-atlas")
    book.set_title("The Railway Atlas")
    book.set_language("en")
    steam = epub.EpubHtml(title="Steam", file_name="steam.xhtml", lang="en")
    steam.content = (
        "<html><head><title>ignored</title></head><body><h1>Steam</h1>"
        f"<p>{EPUB_STEAM}<a epub:type='noteref' href='#n1'>1</a></p>"
        "<h2>Boilers</h2><p>A boiler holds water under pressure.</p>"
        "<table><tr><td>TABLE-EPUB</td><td>12 bar</td></tr></table>"
        "<img src='boiler.png' alt='ALT-EPUB cutaway of a boiler'/>"
        "<aside epub:type='footnote' id='n1'><p>NOTE-EPUB coal or oil both work</p></aside>"
        "</body></html>"
    )
    signals = epub.EpubHtml(title="Signals", file_name="signals.xhtml", lang="en")
    signals.content = f"<html><body><h1>Signals</h1><p>{EPUB_SIGNALS}</p></body></html>"
    for chapter in (steam, signals):
        book.add_item(chapter)
    book.toc = (steam, signals)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", steam, signals]
    epub.write_epub(str(path), book)
    return path


EPUB2_LOCKS = "A pound lock lifts a boat between two gates; the lock keeper opens the paddles slowly."
EPUB2_NARROWBOATS = "Narrowboats are seven feet wide so that two can pass in the narrow locks."
EPUB2_BARGES = "Wide barges carried coal and grain on the broad canals of the north."
_XHTML11 = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">\n'
    '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>The Canal Companion</title></head><body>'
)


def make_epub2(path: Path) -> Path:
    """An EPUB 2 book as EPUB 2 tools write it, with no EPUB 3 navigation document.

    An OPF 2.0 package whose spine names an NCX table of contents; the NCX starts with its
    DOCTYPE (which must be accepted: only entity declarations are refused) and lists the
    subchapters of chapter 2 by fragment; XHTML 1.1 chapters with their DOCTYPE, each titled
    with the book's name (so only the NCX can name the chapters).
    """
    ncx = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE ncx PUBLIC "-//NISO//DTD ncx 2005-1//EN" "http://www.daisy.org/z3986/2005/ncx-2005-1.dtd">\n'
        '<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><head>'
        '<meta name="dtb:uid" content="canal-companion"/><meta name="dtb:depth" content="2"/></head>'
        "<docTitle><text>The Canal Companion</text></docTitle><navMap>"
        '<navPoint id="np1" playOrder="1"><navLabel><text>Locks</text></navLabel>'
        '<content src="text/chapter1.xhtml"/></navPoint>'
        '<navPoint id="np2" playOrder="2"><navLabel><text>Boats</text></navLabel>'
        '<content src="text/chapter2.xhtml"/>'
        '<navPoint id="np3" playOrder="3"><navLabel><text>Narrowboats</text></navLabel>'
        '<content src="text/chapter2.xhtml#narrowboats"/></navPoint>'
        '<navPoint id="np4" playOrder="4"><navLabel><text>Barges</text></navLabel>'
        '<content src="text/chapter2.xhtml#barges"/></navPoint>'
        "</navPoint></navMap></ncx>"
    )
    opf = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="uid">'
        '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:opf="http://www.idpf.org/2007/opf">'
        "<dc:title>The Canal Companion</dc:title><dc:language>en</dc:language>"
        '<dc:identifier id="uid">canal-companion</dc:identifier></metadata><manifest>'
        '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>'
        '<item id="c1" href="text/chapter1.xhtml" media-type="application/xhtml+xml"/>'
        '<item id="c2" href="text/chapter2.xhtml" media-type="application/xhtml+xml"/>'
        '</manifest><spine toc="ncx"><itemref idref="c1"/><itemref idref="c2"/></spine></package>'
    )
    container = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
        '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
        "</rootfiles></container>"
    )
    chapter1 = f"{_XHTML11}<h1>Locks</h1><p>{EPUB2_LOCKS}</p></body></html>"
    chapter2 = (
        f"{_XHTML11}<h1>Boats</h1><p>Two kinds of boat work the canals.</p>"
        f'<h2 id="narrowboats">Narrowboats</h2><p>{EPUB2_NARROWBOATS}</p>'
        f'<h2 id="barges">Barges</h2><p>{EPUB2_BARGES}</p></body></html>'
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        book.writestr("META-INF/container.xml", container)
        book.writestr("OEBPS/content.opf", opf)
        book.writestr("OEBPS/toc.ncx", ncx)
        book.writestr("OEBPS/text/chapter1.xhtml", chapter1)
        book.writestr("OEBPS/text/chapter2.xhtml", chapter2)
    return path


# -- HTML ---------------------------------------------------------------------------------------

HTML_SHIELD = "Shield volcanoes are broad and gentle, built by runny basalt lava flows."
HTML_STRATO = "Stratovolcanoes are steep cones of ash and lava that erupt explosively."


def html_page() -> str:
    """A saved web page: site chrome around one article."""
    nav = "".join(f"<li><a href='/p{i}'>NOISE-NAV link {i}</a></li>" for i in range(10))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Volcano Field Guide</title>"
        "<style>.x{color:red} NOISE-STYLE</style><script>var NOISE_SCRIPT = 1;</script></head><body>"
        f"<header><div class='logo'>NOISE-BRAND</div><nav><ul>{nav}</ul></nav></header>"
        "<div class='cookie-banner'>NOISE-COOKIE we use cookies</div>"
        "<aside class='sidebar'><h3>NOISE-SIDEBAR related</h3></aside>"
        "<main><article><header><h1>Volcanoes</h1><p class='byline'>By the survey team</p></header>"
        f"<h2>Shield volcanoes</h2><p>{HTML_SHIELD}</p>"
        f"<h2>Stratovolcanoes</h2><p>{HTML_STRATO}</p>"
        "<table><tr><th>Volcano</th><th>TABLE-HTML</th></tr><tr><td>Fuji</td><td>3776 m</td></tr></table>"
        "<figure><img src='fuji.jpg' alt='ALT-HTML Mount Fuji at dawn'><figcaption>Fuji</figcaption></figure>"
        "<pre>lava   flow\n  rate</pre>"
        "<footer>NOISE-ARTICLE-FOOTER share this</footer></article></main>"
        "<footer>NOISE-FOOTER copyright</footer><noscript>NOISE-NOSCRIPT</noscript></body></html>"
    )


# -- reST and Markdown ---------------------------------------------------------------------------

RST_TEXT = """\
===================
Bakery Operations
===================

How the bakery runs, from dough to counter.

.. toctree::
   :maxdepth: 1

   NOISE-TOCTREE-ENTRY

Dough
=====

Sourdough rises for twelve hours in the cold room; see :ref:`the schedule <schedule>`.

::

   Literal block
   =============
   not a heading

Ovens
-----

The deck oven is preheated to 250 degrees before the first loaves go in.

.. note:: Clean the oven stones every Friday.

.. versionadded:: 2.0
   RST-VERSIONADDED the rotating rack.

Counter
=======

Bread is sold until two in the afternoon.
"""

MD_TEXT = """\
---
title: Chess notes
---

Notes on openings.

Openings
========

Against e4, the Sicilian Defence fights for the centre from the side.

```python
# not a heading: a comment in code
print("e4 c5")
```

Endgames
--------

King and pawn endings turn on the opposition.

### Rook endings

Put the rook behind the passed pawn.
"""


# -- Made by office programs, and password-protected -----------------------------------------------


def installed(package: str, resource: str) -> Path:
    """A file an installed package ships, read where it is (never copied into the project)."""
    path = Path(str(files(package).joinpath(resource)))
    assert path.is_file(), f"the installed {package} ships no {resource}"
    return path


def word_document() -> Path:
    """An empty document saved by Microsoft Word (python-docx's template, with Word's styles and theme)."""
    return installed("docx", "templates/default.docx")


def powerpoint_deck() -> Path:
    """An empty deck saved by Microsoft PowerPoint (python-pptx's template: a master, 11 layouts, a theme)."""
    return installed("pptx", "templates/default.pptx")


def libreoffice_text() -> Path:
    """A text saved by LibreOffice 3.3 (docutils' ODT style sheet): two tables, bookmarks, no headings."""
    return installed("docutils", "writers/odf_odt/styles.odt")


PASSWORD = "correct horse"


def encrypt_docx(plain: Path, password: str = PASSWORD) -> bytes:
    """``plain`` saved with a password as Word does: ECMA-376 agile encryption, an OLE2 compound
    file holding ``EncryptionInfo`` and ``EncryptedPackage``."""
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    with plain.open("rb") as stream:
        OOXMLFile(stream).encrypt(password, out)
    return out.getvalue()


MANIFEST = "urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"
ODF_ITERATIONS = 100_000


def odf_key(password: str, salt: bytes, iterations: int = ODF_ITERATIONS) -> bytes:
    """The ODF 1.2 AES key: PBKDF2-HMAC-SHA1 over the SHA-256 of the password."""
    return hashlib.pbkdf2_hmac("sha1", hashlib.sha256(password.encode()).digest(), salt, iterations, 32)


def encrypt_odt(plain: Path, password: str = PASSWORD) -> bytes:
    """``plain`` saved with a password as LibreOffice does (ODF 1.2 encryption).

    Every XML stream is deflated, then encrypted with AES-256-CBC under a key from PBKDF2 of the
    password's SHA-256, and stored; ``META-INF/manifest.xml`` gives each encrypted entry its
    ``manifest:encryption-data`` (algorithm, IV, salt, iterations and the SHA-256 of its first
    kilobyte). The thumbnail, which would show the first page, is left out, as LibreOffice does.
    """
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from lxml import etree

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    out = io.BytesIO()
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        old = etree.fromstring(zin.read("META-INF/manifest.xml"))
        media = {
            e.get(f"{{{MANIFEST}}}full-path"): e.get(f"{{{MANIFEST}}}media-type", "")
            for e in old.iter(f"{{{MANIFEST}}}file-entry")
        }
        media.setdefault("/", "application/vnd.oasis.opendocument.text")
        entries = [
            f'<manifest:file-entry manifest:full-path="/" manifest:version="1.2" '
            f'manifest:media-type="{media["/"]}"/>'
        ]
        zout.writestr("mimetype", zin.read("mimetype"), compress_type=zipfile.ZIP_STORED)
        for info in zin.infolist():
            name = info.filename
            if name in ("mimetype", "META-INF/manifest.xml") or name.startswith("Thumbnails/"):
                continue
            data = zin.read(name)
            kind = media.get(name, "")
            entry = f'<manifest:file-entry manifest:full-path="{name}" manifest:media-type="{kind}"'
            if not name.endswith((".xml", ".rdf")):
                zout.writestr(info, data)
                entries.append(entry + "/>")
                continue
            deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = deflate.compress(data) + deflate.flush()
            salt, iv = os.urandom(16), os.urandom(16)
            padder = padding.PKCS7(128).padder()
            encryptor = Cipher(algorithms.AES(odf_key(password, salt)), modes.CBC(iv)).encryptor()
            sealed = encryptor.update(padder.update(packed) + padder.finalize()) + encryptor.finalize()
            zout.writestr(name, sealed, compress_type=zipfile.ZIP_STORED)
            entries.append(
                f'{entry} manifest:size="{len(data)}"><manifest:encryption-data '
                f'manifest:checksum-type="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0#sha256-1k" '
                f'manifest:checksum="{b64(hashlib.sha256(packed[:1024]).digest())}">'
                '<manifest:algorithm manifest:algorithm-name="http://www.w3.org/2001/04/xmlenc#aes256-cbc" '
                f'manifest:initialisation-vector="{b64(iv)}"/>'
                "<manifest:start-key-generation manifest:start-key-generation-name="
                '"http://www.w3.org/2000/09/xmldsig#sha256" manifest:key-size="32"/>'
                '<manifest:key-derivation manifest:key-derivation-name="PBKDF2" manifest:key-size="32" '
                f'manifest:iteration-count="{ODF_ITERATIONS}" manifest:salt="{b64(salt)}"/>'
                "</manifest:encryption-data></manifest:file-entry>"
            )
        manifest = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<manifest:manifest xmlns:manifest="{MANIFEST}" manifest:version="1.2">'
            + "".join(entries)
            + "</manifest:manifest>"
        )
        zout.writestr("META-INF/manifest.xml", manifest)
    return out.getvalue()
