"""Uploaded files to knowledge-base text: type, signature, page count, text and links.

Seed 001 names the document types (``content_type``: txt, md, html, pdf, docx), the page
counts (``estimated_pages`` at accept time, ``actual_pages`` after processing, null for plain
text) and ``has_extracted_text`` (true only when the bytes were transformed); seed 000 names
the upload failures. Every byte string a client sends ends here, so every parser call is
fenced: whatever pypdf, lxml, zipfile or ``html.parser`` throw on hostile or broken input comes
out as :class:`InvalidSignature` (400), never as a 500. The type is trusted from the file's
name or declared mime only as far as its bytes agree (an ``.exe`` renamed ``.pdf`` is refused).
"""

from __future__ import annotations

import codecs
import io
import logging
import math
import re
import threading
import zipfile
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any, Final, cast, get_args
from urllib.parse import urlsplit

import msgspec
import pypdf
from lxml import etree

# Seed 000's upload failures: upload.invalid_signature 400, upload.unsupported_type 415,
# upload.page_limit_exceeded 413, upload.file_too_large 413 (a docx that unpacks too large).
# Re-exported, so callers may import them from here.
from engine.errors import FileTooLarge, InvalidSignature, PageLimitExceeded, UnsupportedType
from engine.media import base_mime, sniff
from kb.documents import DocumentType

__all__ = [
    "DOCUMENT_TYPES",
    "DocumentType",
    "Extracted",
    "FileTooLarge",
    "InvalidSignature",
    "PageLimitExceeded",
    "UnsupportedType",
    "check_signature",
    "content_type_of",
    "estimate_pages",
    "extract",
]

log = logging.getLogger("rapport.kb")

DOCUMENT_TYPES: Final[tuple[str, ...]] = get_args(DocumentType)
_SUPPORTED = "txt, md, html, pdf or docx"

# A docx page is estimated as 1 + its hard page and section breaks, or ~3000 characters a
# page, whichever is more: without laying the document out, that is all the bytes tell us.
CHARS_PER_DOCX_PAGE: Final = 3000
# Of a docx, only its text (word/document.xml) and that part's relationships (the links'
# targets) are read, as a stream of parse events, never as a tree (_DocxText). DEFLATE packs
# dense XML ~1000:1, so a 400 KB upload can unpack to 128 MiB: parsing that costs seconds of
# CPU even streamed (and cost 1.9 GB as a tree, issue 21). 32 MiB leaves a document of 500
# pages (RAPPORT_KB_MAX_PAGES) of 3000 characters ~20 bytes of markup a character. zipfile
# never inflates a member past its declared size, so summing the declared sizes is a sound
# bound.
MAX_DOCX_UNPACKED_BYTES: Final = 32 * 1024 * 1024
# Parses at once in this process (upload estimates and the worker's extractions alike);
# others wait their turn. Each is bounded in memory; this bounds the CPU and memory of many.
DOCX_PARSES: Final = 2
_DOCX_PARSES = threading.BoundedSemaphore(DOCX_PARSES)
_DOCX_MAIN: Final = "word/document.xml"
_DOCX_RELS: Final = "word/_rels/document.xml.rels"
MAX_LINK_LENGTH: Final = 2048  # seed 001: DocLink.url max length


class Extracted(msgspec.Struct, frozen=True):
    text: str
    pages: int | None
    """pdf: its pages; docx: the estimate above; html: 1; None for txt and md."""
    has_extracted_text: bool
    """Seed 001: True when the bytes were transformed (pdf, docx, html), False for txt, md."""
    links: list[str]
    """Absolute https:// links in document order, each once."""


# -- the type -------------------------------------------------------------------------------

_EXTENSIONS: Final[dict[str, DocumentType]] = {
    "txt": "txt",
    "text": "txt",
    "md": "md",
    "markdown": "md",
    "html": "html",
    "htm": "html",
    "pdf": "pdf",
    "docx": "docx",
}
_MIMES: Final[dict[str, DocumentType]] = {
    "text/plain": "txt",
    "text/markdown": "md",
    "text/x-markdown": "md",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}
# What browsers and HTTP clients send when they don't know: says nothing about the file.
_GENERIC_MIMES: Final = frozenset(
    {"application/octet-stream", "binary/octet-stream", "application/unknown", "*/*"}
)
# "v1.2 notes" has no extension; "report.PDF" does.
_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,16})\Z")
_MIME = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[\w.+-]{1,127}")


def content_type_of(filename: str | None, declared_mime: str | None) -> DocumentType:
    """The document type an upload claims to be: by its name's extension when it has one,
    else by its declared mime. The bytes are checked against it by :func:`check_signature`."""
    name = re.split(r"[/\\]", filename or "")[-1]  # old browsers send a whole Windows path
    extension = _EXTENSION.search(name)
    if extension:
        ext = extension.group(1).lower()
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
        raise UnsupportedType(f"Files of type .{ext} are not supported; upload {_SUPPORTED}.")
    mime = base_mime(declared_mime)
    if mime and mime not in _GENERIC_MIMES:
        if mime in _MIMES:
            return _MIMES[mime]
        # Echo the mime back only when it looks like one: it is the caller's text.
        shown = f"Content type {mime}" if _MIME.fullmatch(mime) else "This content type"
        raise UnsupportedType(f"{shown} is not supported; upload {_SUPPORTED}.")
    raise UnsupportedType(
        "The file's type is unknown: give it a name ending in .txt, .md, .html, .pdf or "
        ".docx, or declare its content type."
    )


def _known(content_type: str) -> DocumentType:
    if content_type in DOCUMENT_TYPES:
        return cast(DocumentType, content_type)
    shown = content_type if re.fullmatch(r"[A-Za-z0-9]{1,16}", content_type) else "this type"
    raise UnsupportedType(f"Documents of type {shown} are not supported; upload {_SUPPORTED}.")


# -- signatures -----------------------------------------------------------------------------

_LEGACY_OFFICE = "a legacy Office file (.doc, .xls or .ppt)"
# What engine.media.sniff names, in words, for the types an upload is most often mistaken for.
_DESCRIPTIONS: Final[dict[str, str]] = {
    "application/pdf": "a PDF document",
    "application/x-ole-storage": _LEGACY_OFFICE,
    "application/msword": _LEGACY_OFFICE,
    "application/vnd.ms-excel": _LEGACY_OFFICE,
    "application/vnd.ms-powerpoint": _LEGACY_OFFICE,
    "application/x-executable": "an ELF executable",
    "application/x-msdownload": "a Windows executable",
    "image/png": "a PNG image",
    "image/apng": "a PNG image",
    "image/jpeg": "a JPEG image",
    "image/gif": "a GIF image",
    "image/webp": "a WebP image",
    "application/rtf": "an RTF document",
    "application/gzip": "a gzip archive",
    "application/postscript": "a PostScript file",
}
# Zip containers: what is inside tells them apart better than the first entries' names.
_ZIPS: Final = frozenset(
    {
        "application/zip",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
)


def _describe(data: bytes) -> str:
    """What the bytes look like, for error messages: 'a PNG image', 'plain text', ..."""
    if not data:
        return "an empty file"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16 text"
    sniffed = sniff(data)
    if sniffed in _ZIPS:
        return _describe_zip(data)
    # "MZ" is all an .exe's signature is, and a text may begin so; an executable's header
    # has NULs right after.
    if sniffed == "application/x-msdownload" and b"\x00" not in data[:64]:
        sniffed = None
    if sniffed is not None:
        return _DESCRIPTIONS.get(sniffed, f"a file of type {sniffed}")
    if b"\x00" not in data:
        try:
            data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return "binary data or text in an encoding other than UTF-8"
        return "plain text"
    return "binary data"


def _describe_zip(data: bytes) -> str:
    try:
        names = set(_zip_members(data))
    except InvalidSignature:
        return "a damaged ZIP archive"
    if "word/document.xml" in names:
        return "a Word document (.docx)"
    if "xl/workbook.xml" in names:
        return "an Excel workbook (.xlsx)"
    if "ppt/presentation.xml" in names:
        return "a PowerPoint presentation (.pptx)"
    return "a ZIP archive"


def _zip_members(data: bytes) -> dict[str, zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.filename: info for info in archive.infolist()}
    except Exception:  # zipfile raises several types on garbage; all mean "not a zip"
        raise InvalidSignature("The ZIP structure of the file is damaged.") from None


def check_signature(content_type: str, data: bytes) -> None:
    """Raise :class:`InvalidSignature` unless ``data`` really is a ``content_type`` file."""
    kind = _known(content_type)
    if kind == "pdf":
        if sniff(data) != "application/pdf":
            raise InvalidSignature(
                f"The file was declared pdf but is {_describe(data)}: a PDF starts with %PDF-."
            )
    elif kind == "docx":
        _check_docx(data)
    else:
        _decode_text(kind, data)


def _check_docx(data: bytes) -> dict[str, zipfile.ZipInfo]:
    # Checked before zipfile sees it: zipfile also opens an archive appended to anything,
    # a self-extracting .exe included.
    if sniff(data) not in _ZIPS:
        raise InvalidSignature(
            f"The file was declared docx but is {_describe(data)}, not a Word (.docx) document."
        )
    try:
        members = _zip_members(data)
    except InvalidSignature:
        raise InvalidSignature(
            "The file was declared docx but its ZIP structure is damaged."
        ) from None
    if "word/document.xml" not in members:
        raise InvalidSignature(
            f"The file was declared docx but is {_describe_zip(data)} without "
            "word/document.xml, not a Word document."
        )
    return members


# A start tag, end tag, comment or doctype; enough to tell markup from plain text.
_MARKUP = re.compile(r"<(?:!doctype|!--|/?[a-z][a-z0-9-]*(?:\s|/?>))", re.IGNORECASE)


def _decode_text(kind: DocumentType, data: bytes) -> str:
    if b"\x00" in data:
        raise InvalidSignature(
            f"The file was declared {kind} but is {_describe(data)}: it contains NUL bytes, "
            "which text never does."
        )
    try:
        text = data.decode("utf-8-sig")  # strips one leading byte order mark
    except UnicodeDecodeError as exc:
        found = _describe(data)
        if found.startswith("binary data"):
            found = f"is not UTF-8 (byte 0x{data[exc.start]:02X} at offset {exc.start})"
        else:
            found = f"is {found}"
        raise InvalidSignature(
            f"The file was declared {kind} but {found}; save it as UTF-8."
        ) from None
    if kind == "html" and not _MARKUP.search(text):
        raise InvalidSignature("The file was declared html but contains no HTML markup.")
    return text


# -- pages ----------------------------------------------------------------------------------


def estimate_pages(content_type: str, data: bytes) -> int | None:
    """Seed 001's ``estimated_pages``, at accept time: cheap, and what :func:`extract` will
    count. Raises what :func:`check_signature` raises, and InvalidSignature for a damaged
    pdf or docx."""
    kind = _known(content_type)
    if kind == "pdf":
        check_signature(kind, data)
        return _pdf_page_count(_open_pdf(data))
    if kind == "docx":
        return _read_docx(data).pages
    _decode_text(kind, data)
    return 1 if kind == "html" else None


_NAMES: Final[dict[str, str]] = {"pdf": "PDF", "docx": "Word document", "html": "HTML page"}


def _check_pages(kind: DocumentType, pages: int, max_pages: int, *, estimate: bool) -> None:
    if pages > max_pages:
        about = "about " if estimate else ""
        raise PageLimitExceeded(
            f"The {_NAMES[kind]} has {about}{pages} pages; at most {max_pages} are accepted. "
            "Split it into smaller files."
        )


# -- extraction -----------------------------------------------------------------------------


def extract(content_type: str, data: bytes, *, max_pages: int) -> Extracted:
    """The text of an upload, its page count and links. Raises only InvalidSignature,
    UnsupportedType, PageLimitExceeded and (a docx bomb) FileTooLarge, whatever the bytes."""
    kind = _known(content_type)
    if kind == "pdf":
        check_signature(kind, data)
        return _extract_pdf(data, max_pages)
    if kind == "docx":
        read = _read_docx(data)
        _check_pages(kind, read.pages or 0, max_pages, estimate=True)
        return read
    text = _decode_text(kind, data)
    if kind == "html":
        _check_pages(kind, 1, max_pages, estimate=False)
        return _extract_html(text)
    return Extracted(text=_clean(text), pages=None, has_extracted_text=False, links=[])


_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# C0 and C1 controls but \t and \n, DEL, and lone surrogates (which no encoder will write).
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")


def _clean(text: str) -> str:
    """Newlines to \\n (form feeds and Unicode line separators are line breaks too), other
    control characters dropped."""
    return _CONTROLS.sub("", _LINE_BREAKS.sub("\n", text))


def _tidy(text: str) -> str:
    """For text we produced: no trailing blanks on lines, at most one empty line in a row."""
    text = re.sub(r"[ \t]+\n", "\n", _clean(text))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _https_links(candidates: Iterable[str]) -> list[str]:
    """Seed 001's DocLink.url: absolute https://, at most 2048 characters; each once."""
    links: dict[str, None] = {}
    for candidate in candidates:
        url = candidate.strip()
        if len(url) > MAX_LINK_LENGTH or url[:8].lower() != "https://":
            continue
        if any(ch.isspace() or not ch.isprintable() for ch in url):
            continue
        try:
            host = urlsplit(url).hostname
        except ValueError:  # a broken [IPv6] host, a bad port
            continue
        if host:
            links.setdefault("https://" + url[8:], None)
    return list(links)


# -- pdf --


def _open_pdf(data: bytes) -> pypdf.PdfReader:
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as exc:  # pypdf raises many types on broken files; all mean "damaged"
        log.info("unreadable pdf: %s: %s", type(exc).__name__, exc)
        raise InvalidSignature("The PDF is damaged and could not be read.") from None
    if encrypted:
        raise InvalidSignature(
            "Encrypted PDFs are not supported: remove the password and upload the file again."
        )
    return reader


def _pdf_page_count(reader: pypdf.PdfReader) -> int:
    try:
        pages = len(reader.pages)
    except Exception as exc:
        log.info("unreadable pdf page tree: %s: %s", type(exc).__name__, exc)
        raise InvalidSignature("The PDF is damaged: its pages could not be read.") from None
    if pages == 0:
        raise InvalidSignature("The PDF has no pages; it may be damaged.")
    return pages


def _extract_pdf(data: bytes, max_pages: int) -> Extracted:
    reader = _open_pdf(data)
    pages = _pdf_page_count(reader)
    _check_pages("pdf", pages, max_pages, estimate=False)  # before the costly part
    texts: list[str] = []
    links: list[str] = []
    for number in range(pages):
        try:
            page = reader.pages[number]
            texts.append(_tidy(page.extract_text()))
        except Exception as exc:
            # Failing the document beats ingesting it with a page silently missing.
            log.info("unreadable pdf page %d: %s: %s", number + 1, type(exc).__name__, exc)
            raise InvalidSignature(
                f"Page {number + 1} of the PDF could not be read; the file may be damaged."
            ) from None
        links.extend(_pdf_links(page))
    text = "\n\n".join(t for t in texts if t)
    return Extracted(text=text, pages=pages, has_extracted_text=True, links=_https_links(links))


def _pdf_links(page: Any) -> list[str]:
    """URI actions of the page's link annotations. Links are a bonus: a malformed
    annotation costs its link, not the document."""
    found: list[str] = []
    try:
        annotations = page.get("/Annots")
        annotations = annotations.get_object() if annotations is not None else []
        for ref in annotations:
            annotation = ref.get_object()
            if annotation.get("/Subtype") != "/Link":
                continue
            action = annotation.get("/A")
            action = action.get_object() if action is not None else None
            if action is None or action.get("/S") != "/URI":
                continue
            uri = action.get("/URI")
            uri = uri.get_object() if uri is not None else None
            if isinstance(uri, bytes):
                found.append(uri.decode("latin-1"))
            elif isinstance(uri, str):
                found.append(str(uri))
    except Exception as exc:
        log.info("unreadable pdf link annotation: %s: %s", type(exc).__name__, exc)
    return found


# -- docx --

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_W_BODY = f"{_W}body"
_W_BR = f"{_W}br"
_W_CR = f"{_W}cr"
_W_CUSTOM_XML = f"{_W}customXml"
_W_HYPERLINK = f"{_W}hyperlink"
_W_P = f"{_W}p"
_W_P_PR = f"{_W}pPr"
_W_SDT = f"{_W}sdt"
_W_SDT_CONTENT = f"{_W}sdtContent"
_W_SECT_PR = f"{_W}sectPr"
_W_T = f"{_W}t"
_W_TAB = f"{_W}tab"
_W_TBL = f"{_W}tbl"
_W_TC = f"{_W}tc"
_W_TR = f"{_W}tr"
_W_TYPE = f"{_W}type"
_R_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
# Word writes a text box twice: as DrawingML and as a VML fallback for old readers.
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"


def _read_docx(data: bytes) -> Extracted:
    members = _check_docx(data)
    parsed = [members[name] for name in (_DOCX_MAIN, _DOCX_RELS) if name in members]
    unpacked = sum(info.file_size for info in parsed)
    if unpacked > MAX_DOCX_UNPACKED_BYTES:
        raise FileTooLarge(
            f"The docx's text unpacks to {unpacked // (1024 * 1024)} MiB; at most "
            f"{MAX_DOCX_UNPACKED_BYTES // (1024 * 1024)} MiB are accepted."
        )
    read, rels = _DocxText(), _DocxRels()
    try:
        with _DOCX_PARSES, zipfile.ZipFile(io.BytesIO(data)) as archive:
            _parse(archive, _DOCX_MAIN, read)
            if _DOCX_RELS in members:
                _parse(archive, _DOCX_RELS, rels)
    except Exception as exc:  # lxml and zipfile raise many types on broken packages
        log.info("unreadable docx: %s: %s", type(exc).__name__, exc)
        raise InvalidSignature(
            "The docx could not be read: it is damaged or not a Word document."
        ) from None
    hrefs = [rels.targets[rid] for rid in read.link_ids if rid in rels.targets]
    text = _tidy("\n\n".join(read.blocks))
    pages = max(1 + read.breaks, math.ceil(len(text) / CHARS_PER_DOCX_PAGE))
    return Extracted(text=text, pages=pages, has_extracted_text=True, links=_https_links(hrefs))


def _parse(archive: zipfile.ZipFile, name: str, target: object) -> None:
    """Feed a member, as it inflates, to a parser that calls ``target`` at each tag and text
    and builds no tree. python-docx's settings: no entities, no network."""
    parser = etree.XMLParser(target=target, resolve_entities=False, no_network=True)
    with archive.open(name) as member:
        while chunk := member.read(64 * 1024):
            parser.feed(chunk)
    parser.close()


class _DocxRels:
    """Parser target: the external relationships of a part (hyperlinks' targets), by id."""

    def __init__(self) -> None:
        self.targets: dict[str, str] = {}

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if attrib.get("TargetMode") == "External" and attrib.get("Id"):
            self.targets[attrib["Id"]] = attrib.get("Target", "")

    def close(self) -> None:
        """lxml asks a target for its result; the relationships are read from ``targets``."""


# What an open element of word/document.xml is to the text (_DocxText._stack's frames).
(_ROOT, _SKIP, _BLOCKS, _PARAGRAPH, _RUNS, _T,
 _TABLE, _TABLE_WRAP, _ROW, _ROW_WRAP, _CELL) = range(11)  # fmt: skip
_WRAPPERS: Final = frozenset((_W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML))
_RUN_MARKS: Final = {_W_TAB: "\t", _W_BR: "\n", _W_CR: "\n"}


class _DocxText:
    """Parser target for word/document.xml: its text as paragraphs and tables in document
    order, read from the parser's events without a tree (a 35-byte
    ``<w:p><w:r><w:t>x</w:t></w:r></w:p>`` is ~500 bytes as an lxml tree: 128 MiB of it
    was 1.9 GB, issue 21), so what is held is the open elements' path and the text.

    Walked by hand rather than with python-docx's ``Document.iter_inner_content()``, which
    skips content controls (w:sdt) and tracked insertions. A table is one line a row, its
    cells joined by ' | ', so a price stays beside its product; rows and cells are found
    through content-control wrappers. w:delText (deleted by tracked changes) and
    w:instrText (field codes) are not w:t, so they are left out, as Word leaves them off
    the page; Word writes a text box twice, as DrawingML and as a VML fallback
    (mc:Fallback), which is skipped."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.breaks = 0
        """Hard page breaks plus section breaks (a w:sectPr in a paragraph's properties ends
        a section; the body's last w:sectPr is the final section's, not a break)."""
        self.link_ids: list[str] = []
        """The relationship ids of w:hyperlink elements, in document order."""
        # An open element: [what it is, its tag, then what it collects into].
        self._stack: list[list[Any]] = []

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if (tag == _W_BR and attrib.get(_W_TYPE) == "page") or (
            tag == _W_SECT_PR and self._stack and self._stack[-1][1] == _W_P_PR
        ):
            self.breaks += 1
        elif tag == _W_HYPERLINK:
            self.link_ids.append(attrib.get(_R_ID, ""))
        self._stack.append(self._frame(tag) if self._stack else [_ROOT, tag])

    def _frame(self, tag: str) -> list[Any]:
        parent = self._stack[-1]
        kind = parent[0]
        if kind in (_BLOCKS, _CELL):
            out = parent[2]
            if tag == _W_P:
                return [_PARAGRAPH, tag, [], out]
            if tag == _W_TBL:
                return [_TABLE, tag, [], out]
            return [_SKIP, tag] if tag == _W_SECT_PR else [_BLOCKS, tag, out]
        if kind in (_PARAGRAPH, _RUNS):
            parts = parent[2]
            if tag == _W_T:
                return [_T, tag, parts, []]
            if tag in _RUN_MARKS:
                parts.append(_RUN_MARKS[tag])
                return [_SKIP, tag]
            if tag == _MC_FALLBACK:
                return [_SKIP, tag]
            if tag == _W_P:  # a paragraph in a text box: its own line
                parts.append("\n")
            return [_RUNS, tag, parts]
        if kind in (_TABLE, _TABLE_WRAP):
            if tag == _W_TR:
                return [_ROW, tag, [], parent[2]]
            return [_TABLE_WRAP, tag, parent[2]] if tag in _WRAPPERS else [_SKIP, tag]
        if kind in (_ROW, _ROW_WRAP):
            if tag == _W_TC:
                return [_CELL, tag, [], parent[2]]
            return [_ROW_WRAP, tag, parent[2]] if tag in _WRAPPERS else [_SKIP, tag]
        if kind == _ROOT and tag == _W_BODY and len(self._stack) == 1:
            return [_BLOCKS, tag, self.blocks]
        if kind == _T:
            parent[0] = _SKIP  # a w:t's text is what comes before anything inside it
            parent[2].append("".join(parent[3]))
        return [_SKIP, tag]

    def data(self, text: str) -> None:
        if self._stack and self._stack[-1][0] == _T:
            self._stack[-1][3].append(text)

    def end(self, tag: str) -> None:
        frame = self._stack.pop()
        kind = frame[0]
        if kind == _PARAGRAPH:
            text = "".join(frame[2])
            if text.strip():
                frame[3].append(text)
        elif kind == _T:
            frame[2].append("".join(frame[3]))
        elif kind == _TABLE:
            if frame[2]:
                frame[3].append("\n".join(frame[2]))
        elif kind == _ROW:
            if frame[2]:
                frame[3].append(" | ".join(frame[2]))
        elif kind == _CELL:
            text = " ".join(" ".join(frame[2]).split())
            if text:
                frame[3].append(text)

    def close(self) -> None:
        """lxml asks a target for its result; the text is read from ``blocks``."""


# -- html --

# Not shown by a browser (head, title) or not text (script, style, template); noscript is
# what a browser without scripts would show, and a crawler-like reader skips it too.
_HTML_SKIP: Final = frozenset({"script", "style", "head", "title", "noscript", "template"})
_HTML_BLOCKS: Final = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "html", "legend", "li",
        "main", "nav", "ol", "p", "pre", "section", "summary", "table", "ul",
    }
)  # fmt: skip


class _HtmlText(HTMLParser):
    """Visible text of an HTML page: one paragraph per block element (blank line between),
    one line per <br> or table row, whitespace collapsed, entities unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.hrefs: list[str] = []
        self._lines: list[str] = []
        self._parts: list[str] = []
        self._skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self._skipping.append(tag)
            return
        if tag == "body":  # </head> may be left out; <body> ends the head anyway
            self._skipping = [t for t in self._skipping if t not in ("head", "title")]
        if self._skipping:
            return
        if tag in _HTML_BLOCKS:
            self._end_block()
        elif tag in ("br", "tr"):
            self._end_line()
        elif tag in ("td", "th"):
            self._parts.append(" ")
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            if tag in self._skipping:
                while self._skipping.pop() != tag:
                    pass
            return
        if self._skipping:
            return
        if tag in _HTML_BLOCKS:
            self._end_block()
        elif tag == "tr":
            self._end_line()
        elif tag in ("td", "th"):
            self._parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        self._end_block()

    def _end_line(self) -> None:
        line = " ".join("".join(self._parts).split())
        self._parts = []
        if line:
            self._lines.append(line)

    def _end_block(self) -> None:
        self._end_line()
        if self._lines:
            self.blocks.append("\n".join(self._lines))
            self._lines = []


def _extract_html(text: str) -> Extracted:
    parser = _HtmlText()
    try:
        parser.feed(text)
        parser.close()
    except Exception as exc:  # html.parser is lenient, but this is still a client's bytes
        log.info("unparsable html: %s: %s", type(exc).__name__, exc)
        raise InvalidSignature("The HTML could not be parsed.") from None
    return Extracted(
        text=_tidy("\n\n".join(parser.blocks)),
        pages=1,
        has_extracted_text=True,
        links=_https_links(parser.hrefs),
    )
