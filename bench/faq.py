"""The Python FAQ from Debian's ``python3.11-doc`` as an evaluation set: each question is a
section heading of ``html/faq/*.html`` (the index page aside) that ends in "?", and its
answer is the section's text up to the next heading of any level. Parsed with the standard
library's ``html.parser``: only the page body (``div role="main"``), without its table of
contents (``nav``) or the heading permalinks."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "python3.11-doc"
FAQ_DIR = Path("/usr/share/doc/python3.11/html/faq")
MIN_ANSWER_WORDS = 20
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
BLOCKS = {"p", "li", "pre", "dt", "dd", "div", "section", "tr", "br", "blockquote"}
_SPACE = re.compile(r"\s+")
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Entry:
    file: str
    title: str
    number: int
    question: str
    answer: str

    @property
    def external_id(self) -> str:
        slug = _SLUG.sub("-", self.question.lower()).strip("-")
        return f"faq.{Path(self.file).stem}.{self.number:03d}.{slug}"[:128]

    @property
    def label(self) -> str:
        """The page's title and a running number: nothing of the question."""
        return f"{self.title} #{self.number}"


class _FaqPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[tuple[str, list[str]]] = []  # (heading, text pieces)
        self._div_depth = 0  # divs open inside the main body; 0 when outside it
        self._skip = 0  # inside nav or a heading permalink
        self._heading: list[str] | None = None
        self._heading_tag = ""
        self._in_link = False
        self._pre = 0  # source line breaks count only inside <pre>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "div":
            if self._div_depth:
                self._div_depth += 1
            elif attr.get("role") == "main":
                self._div_depth = 1
                return
        if not self._div_depth:
            return
        if tag == "nav":
            self._skip += 1
        elif tag == "a" and "headerlink" in (attr.get("class") or ""):
            self._skip += 1
            self._in_link = True
        elif tag == "pre":
            self._pre += 1
        if tag in HEADINGS:
            self._heading, self._heading_tag = [], tag
        elif tag in BLOCKS and self.sections:
            self.sections[-1][1].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if not self._div_depth:
            return
        if tag == "div":
            self._div_depth -= 1
        elif tag == "nav" or (tag == "a" and self._in_link):
            self._skip = max(0, self._skip - 1)
            self._in_link = self._in_link and tag != "a"
        elif tag == self._heading_tag and self._heading is not None:
            text = _SPACE.sub(" ", "".join(self._heading)).strip()
            if tag == "h1" and not self.title:
                self.title = text
            self.sections.append((text, []))
            self._heading, self._heading_tag = None, ""
        elif tag in BLOCKS and self.sections:
            if tag == "pre" and self._pre:
                self._pre -= 1
            self.sections[-1][1].append("\n")

    def handle_data(self, data: str) -> None:
        if not self._div_depth or self._skip:
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self.sections:
            self.sections[-1][1].append(data if self._pre else data.replace("\n", " "))


def _clean(pieces: list[str]) -> str:
    lines = (_SPACE.sub(" ", line).strip() for line in "".join(pieces).split("\n"))
    return "\n".join(line for line in lines if line)


def parse_page(path: Path) -> list[Entry]:
    page = _FaqPage()
    page.feed(path.read_text(encoding="utf-8"))
    entries: list[Entry] = []
    for heading, pieces in page.sections:
        answer = _clean(pieces)
        if heading.endswith("?") and len(answer.split()) >= MIN_ANSWER_WORDS:
            entries.append(Entry(path.name, page.title, len(entries) + 1, heading, answer))
    return entries


def ensure_package() -> None:
    """Install the package with apt-get when the FAQ pages are missing (needs root)."""
    if FAQ_DIR.is_dir():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit(f"{FAQ_DIR} is missing and there is no apt-get: install {PACKAGE}")
    done = subprocess.run([apt, "install", "-y", PACKAGE], capture_output=True, text=True)
    if done.returncode != 0 or not FAQ_DIR.is_dir():
        raise SystemExit(
            f"could not install {PACKAGE} (apt-get install -y {PACKAGE} as root): "
            f"{done.stderr.strip()[-500:]}"
        )


def package_version() -> str:
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return "unknown"
    done = subprocess.run([dpkg, "-W", PACKAGE], capture_output=True, text=True)
    return done.stdout.split()[-1] if done.returncode == 0 and done.stdout.split() else "unknown"


def load() -> tuple[list[Path], list[Entry]]:
    """The FAQ pages read and every kept question with its answer, in file order."""
    ensure_package()
    pages = sorted(p for p in FAQ_DIR.glob("*.html") if p.name != "index.html")
    entries = [e for p in pages for e in parse_page(p)]
    seen: set[str] = set()
    for e in entries:
        if e.external_id in seen:
            raise RuntimeError(f"duplicate external_id {e.external_id}")
        seen.add(e.external_id)
    return pages, entries
