"""axe-core for the browser tests (issue 23, item 5): the pinned release from the npm
registry, checked against its published sha512 and kept in ``.cache/axe-core/``, and the
check the tests run on a page.

``make test`` fetches it first (``python tests/axe_core.py``); the download needs nothing but
the standard library, so a machine without node or npm runs it. A test that needs it and finds
it missing fails: it is never skipped.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the download runs before the venv's test packages are used
    from playwright.async_api import Page

VERSION = "4.14.1"
# The registry's dist.integrity for that version (https://registry.npmjs.org/axe-core/4.14.1):
# what npm itself checks the tarball against.
INTEGRITY = (
    "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuF"
    "ooJpZe37OgudVGtQ=="
)
TARBALL = f"https://registry.npmjs.org/axe-core/-/axe-core-{VERSION}.tgz"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "axe-core"
SCRIPT = CACHE / "axe.min.js"
# Kept beside the script: axe-core is MPL-2.0, whose notice travels with the file.
KEPT = {"package/axe.min.js": SCRIPT, "package/LICENSE": CACHE / "LICENSE"}
DOWNLOAD_TIMEOUT_S = 60
BLOCKING = ("serious", "critical")


def verified(tarball: bytes) -> bytes:
    algorithm, _, expected = INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if digest != expected:
        raise RuntimeError(f"{TARBALL}: {algorithm} {digest} is not the pinned {expected}")
    return tarball


def fetch() -> None:
    """Download, check and unpack the pinned release, unless it is there already."""
    if all(path.exists() for path in KEPT.values()):
        return
    with urllib.request.urlopen(TARBALL, timeout=DOWNLOAD_TIMEOUT_S) as response:
        tarball = verified(response.read())
    CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member, target in KEPT.items():
            extracted = archive.extractfile(member)
            if extracted is None:
                raise RuntimeError(f"{TARBALL} has no file {member}")
            # Written under another name, then renamed: an interrupted run leaves no half file
            # that the check above would take for a whole one.
            partial = target.with_suffix(".part")
            partial.write_bytes(extracted.read())
            partial.replace(target)


def source() -> str:
    if not SCRIPT.exists():
        raise AssertionError(
            f"axe-core {VERSION} is missing from {CACHE}: `make test` fetches it "
            "(`make axe`, or `.venv/bin/python tests/axe_core.py`)"
        )
    return SCRIPT.read_text()


async def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now: each one's id,
    impact, help and the targets of the nodes it found."""
    # page.evaluate goes through the DevTools protocol, which the page's CSP does not govern,
    # so the script runs even under Rapport's `script-src 'self'` (no inline, no eval).
    await page.evaluate(source())
    return await page.evaluate(
        """async (blocking) => {
            const results = await axe.run(document, {resultTypes: ['violations']});
            return results.violations
                .filter((v) => blocking.includes(v.impact))
                .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                              targets: v.nodes.map((n) => n.target)}));
        }""",
        list(BLOCKING),
    )


if __name__ == "__main__":
    try:
        fetch()
    except (OSError, RuntimeError, tarfile.TarError) as error:
        sys.exit(f"could not fetch axe-core {VERSION}: {error}; the accessibility tests will fail")
    print(f"axe-core {VERSION} in {CACHE}")
