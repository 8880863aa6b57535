"""The README's examples, run as a reader runs them (issue 26, items 4 and 5): every example
in document order, in one shell, against one fresh ``rapport serve`` on the embedded
defaults, each printed output compared with what the command printed.

The README's conventions, which this file reads:

- Every ```` ```sh ```` block is an example; the blocks run in order in one bash, so a
  variable one block sets (``KEY``) is there in the next, as in a reader's terminal. The
  test does not set ``KEY``: the README must. (```` ```html ```` blocks are markup to paste,
  not run; a block in any other language fails the test until it has a rule here.)
- In a block, a line starting ``# =>`` is the printed output of the commands above it (since
  the block's start or the last output); comment lines right below it that start with ``#``
  and two or more spaces continue it. Line breaks and indentation there are not part of the
  output (JSON is wrapped where it has no space). ``…`` stands for any text (a reply, an id).
  Any other comment is prose.
- ```` ```python ```` blocks are compiled, then run (after the shell examples, which they
  follow) with ``minted``, the session the shell examples minted.
- A block right below ``<!-- readme-test: skip, REASON -->`` is not run (installing and
  serving, a long load test); the reason is required.

What a reader would read differently is substituted: the server's port for 8000 and its data
dir for ``rapport-data/``. ``curl`` runs with ``--fail-with-body``, so an example whose
output the README does not show still fails on an HTTP error; the script stops at the first
failing command (``set -e``, ``pipefail``). Ids, keys, times and latencies are masked on
both sides, since they differ on every run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import UNLIMITED, Server

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```$", re.M | re.S)
SKIP = re.compile(r"<!-- readme-test: skip, (\S.*?) -->\n\Z")
OUTPUT, CONTINUED = "# => ", re.compile(r"#\s{2,}")
STEP = "@@readme-step {}@@"
STEPS = re.compile(r"\n@@readme-step (\d+)@@\n")
# Floors, so that a parser that stops finding blocks fails instead of passing on nothing.
MIN_OUTPUTS, MIN_PYTHON = 9, 2

MASKS = [
    (re.compile(r"rk_live_[A-Za-z0-9]{44}"), "<key>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r'("\w*latency_ms":)\d+'), r"\1<ms>"),
    # Account and persona ids (12 hex digits), request and trace ids (16).
    (re.compile(r"\b[0-9a-f]{12,32}\b"), "<hex>"),
]


@dataclass
class Block:
    language: str
    code: str
    line: int
    skipped: str | None


@dataclass
class Step:
    """Commands, and what the README says they print (None: it shows nothing)."""

    script: str
    expected: str | None
    line: int


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        skip = SKIP.search(text, 0, match.start())
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match[1], match[2], line, skip[1] if skip else None))
    return found


def steps(block: Block) -> list[Step]:
    found: list[Step] = []
    script: list[str] = []
    start = block.line + 1
    for number, line in enumerate(block.code.splitlines(), block.line + 1):
        if line.startswith(OUTPUT):
            found.append(Step("\n".join(script), line.removeprefix(OUTPUT).strip(), start))
            script, start = [], number + 1
        elif script == [] and found and found[-1].expected and CONTINUED.match(line):
            found[-1].expected += line.lstrip("#").strip()
            start = number + 1
        else:
            script.append(line)
    if any(line.strip() for line in script):
        found.append(Step("\n".join(script), None, start))
    return found


def masked(text: str) -> str:
    for pattern, token in MASKS:
        text = pattern.sub(token, text)
    return text


def matches(expected: str, printed: str) -> bool:
    """``printed`` (its lines unwrapped) is ``expected``, where ``…`` is any text."""
    printed = "".join(line.strip() for line in printed.splitlines())
    pattern = ".*?".join(re.escape(part) for part in masked(expected).split("…"))
    return re.fullmatch(pattern, masked(printed), re.S) is not None


def test_masks_hide_what_changes_between_runs_and_nothing_else() -> None:
    printed = (
        '{"request_id":"0a1c9886fa384479","latency_ms":12,"session_id":'
        '"01a25009-263d-78ce-b090-a8f7a5dac61c","at":"2026-12-07T10:26:06.621000Z",'
        '"key":"rk_live_8w0kbLwAltcBpETVUwPD66Lk1VVBxWW2P6ZPyuWvMJvS","count":12}'
    )
    expected = (
        '{"request_id":"d2c0ffee00000001","latency_ms":3,"session_id":'
        '"…","at":"2025-01-01T00:00:00Z","key":"rk_live_' + "a" * 44 + '","count":12}'
    )
    assert matches(expected, printed)
    assert not matches(expected.replace('"count":12', '"count":13'), printed)
    assert not matches('{"queued":1}', '{"queued":1,"extra":true}')


def test_every_readme_example_runs_in_order_and_prints_what_the_readme_shows(
    tmp_path: Path,
) -> None:
    text = README.read_text()
    found = blocks(text)
    # A block in another language would be neither run nor compiled: say what it is first.
    assert {b.language for b in found} <= {"sh", "python", "html"}
    data_dir = tmp_path / "rapport-data"
    server = Server(data_dir)
    for name in UNLIMITED:  # a fresh `make run`: the README's examples meet the real limits
        del server.env[f"RAPPORT_{name}"]
    server.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{server.env['PATH']}"

    def local(code: str) -> str:
        return code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}").replace(
            "rapport-data/", f"{data_dir}/"
        )

    shell = [s for b in found if b.language == "sh" and not b.skipped for s in steps(b)]
    script = [
        "set -eo pipefail",
        'curl() { command curl -sS --fail-with-body "$@"; }',
        "trap 'echo \"exit $? from: $BASH_COMMAND\" >&2' ERR",
    ]
    for number, step in enumerate(shell):
        script += [f"printf '\\n{STEP.format(number)}\\n'", local(step.script)]
    server.start()
    try:
        ran = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        parts = STEPS.split(ran.stdout)
        printed = {int(n): out for n, out in zip(parts[1::2], parts[2::2], strict=True)}
        last = shell[max(printed)] if printed else shell[0]
        assert ran.returncode == 0, f"README.md:{last.line}: {ran.stderr}\n{ran.stdout}"
        assert len(printed) == len(shell)
        compared = 0
        for number, step in enumerate(shell):
            if step.expected is None:
                continue
            expected = local(step.expected)
            assert matches(expected, printed[number]), (
                f"README.md:{step.line} shows\n{expected}\nbut the command printed\n"
                f"{printed[number].strip()}"
            )
            compared += 1
        assert compared >= MIN_OUTPUTS

        minted = next(
            json.loads(printed[n]) for n, s in reversed(list(enumerate(shell)))
            if s.expected and '"ws_url"' in s.expected
        )  # fmt: skip
        env = {
            **server.env,
            "MINTED": json.dumps(minted),
            "RAPPORT_URL": server.base_url,
            "RAPPORT_API_KEY": server.demo_key,
        }
        python = 0
        for block in found:
            if block.language != "python":
                continue
            compile(block.code, f"README.md:{block.line}", "exec")
            if block.skipped:
                continue
            prelude = "import json, os; minted = json.loads(os.environ['MINTED'])\n"
            answered = subprocess.run(
                [sys.executable, "-c", prelude + local(block.code)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert answered.returncode == 0, f"README.md:{block.line}: {answered.stderr}"
            if "minted[" in block.code:  # the socket example prints the session, then a reply
                first, _, reply = answered.stdout.partition("\n")
                assert first.startswith("{'type': 'session.ready'") and reply.strip()
            python += 1
        assert python >= MIN_PYTHON
    finally:
        server.retire()
