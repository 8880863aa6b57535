"""Upload memory (issue 21, item 3): the peak memory of reading a crafted .docx.

The crafted file is a valid .docx (python-docx's own package, its word/document.xml
replaced) whose document.xml is ``--mib`` MiB of the densest text Word markup,
``<w:p><w:r><w:t>x</w:t></w:r></w:p>`` over and over: a few hundred KB zipped. Each
measurement runs in a fresh Python process (so no other allocation counts) and reports
its peak resident set during the call (VmHWM, reset by ``/proc/self/clear_refs`` just
before it) less its resident set then (VmRSS), and the call's wall time:

- ``estimate+extract``: ``kb.extract.estimate_pages`` then ``kb.extract.extract``, what an
  upload costs the API process and then the worker. Over ``MAX_DOCX_UNPACKED_BYTES`` it is
  refused from the archive's directory (413 ``upload.file_too_large``) before any parsing.
- ``3 at once``: the same, in three threads of one process, as three uploads to one server
  (the issue's three crafted uploads at once reached 6.1 GB); at most ``DOCX_PARSES`` (2)
  parse at a time.
- ``python-docx`` (the peer, the code path before issue 21): ``docx.Document`` on the same
  bytes, which builds the whole lxml tree of every part, as ``kb.extract`` did to count the
  pages and read the text.

- with ``--before FILE``, ``estimate+extract before``: the same calls of an earlier
  ``kb/extract.py`` (``git show b68954a:kb/extract.py > /tmp/extract_before.py``), which
  read the pages and text from python-docx's tree.

Sizes: ``--mib`` for the refused file (default 100, the issue's crafted upload unpacked to
128 MiB) and just under the cap (31 MiB) for the largest file that is parsed.

    .venv/bin/python -m bench.upload_memory [--mib 100] [--before /tmp/extract_before.py]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile

import docx

DENSE = b"<w:p><w:r><w:t>x</w:t></w:r></w:p>"
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def crafted_docx(mib: float) -> bytes:
    """A valid .docx whose document.xml is ``mib`` MiB of one-character paragraphs."""
    blank = io.BytesIO()
    docx.Document().save(blank)
    count = int(mib * 1024 * 1024) // len(DENSE)
    xml = b"".join(
        (f'<w:document xmlns:w="{W}"><w:body>'.encode(), DENSE * count, b"</w:body></w:document>")
    )
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(blank.getvalue())) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target,
    ):
        for info in source.infolist():
            data = xml if info.filename == "word/document.xml" else source.read(info)
            target.writestr(info.filename, data)
    return out.getvalue()


# Run in a fresh interpreter: reads the file, measures one call, prints JSON.
MEASURE = """
import json, sys, time
data = open(sys.argv[2], "rb").read()
if sys.argv[1] in ("ours", "ours3", "before"):
    if sys.argv[1] != "before":
        from kb.extract import FileTooLarge, estimate_pages, extract
    else:
        import importlib.util
        spec = importlib.util.spec_from_file_location("before", sys.argv[3])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        FileTooLarge, estimate_pages, extract = (
            module.FileTooLarge, module.estimate_pages, module.extract
        )
    def call():
        try:
            pages = estimate_pages("docx", data)
            return f"{pages} pages, text of {len(extract('docx', data, max_pages=10**9).text)}"
        except FileTooLarge as error:
            return f"refused: {error.failure.code}: {error.message}"
else:
    import io, docx
    def call():
        return f"{len(docx.Document(io.BytesIO(data)).element.body)} body elements"
def status_kib(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])
if sys.argv[1] == "ours3":
    from concurrent.futures import ThreadPoolExecutor
    one = call
    def call():
        with ThreadPoolExecutor(3) as pool:
            outcomes = set(pool.map(lambda _: one(), range(3)))
        return " / ".join(outcomes) + (" (all three)" if len(outcomes) == 1 else "")
before = status_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak (VmHWM) starts again from the resident set now
start = time.perf_counter()
outcome = call()
seconds = time.perf_counter() - start
peak = status_kib("VmHWM")
print(json.dumps({"outcome": outcome, "mib": (peak - before) / 1024, "seconds": seconds}))
"""


MEASURED = (
    ("ours", "estimate+extract"),
    ("ours3", "3 at once, 3 threads"),
    ("peer", "python-docx (before)"),
)


def measure(which: str, path: str, before: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, which, path, before],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=100.0)
    parser.add_argument("--before", default="", help="an earlier kb/extract.py to measure too")
    args = parser.parse_args()
    measured = [*MEASURED, *([("before", "estimate+extract before")] if args.before else [])]
    print(f"command: {' '.join([sys.executable, '-m', 'bench.upload_memory', *sys.argv[1:]])}")
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load}")
    for mib in (args.mib, 31.0):
        data = crafted_docx(mib)
        with tempfile.NamedTemporaryFile(suffix=".docx") as file:
            file.write(data)
            file.flush()
            results = [(name, measure(which, file.name, args.before)) for which, name in measured]
        print(f"\ncrafted docx: {len(data) / 1024:.0f} KiB, document.xml {mib:g} MiB")
        for name, got in results:
            print(
                f"  {name:25} peak +{got['mib']:7.1f} MiB  {got['seconds']:6.2f} s  "
                f"{got['outcome']}"
            )


if __name__ == "__main__":
    main()
