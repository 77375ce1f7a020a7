#!/usr/bin/env python3
"""Re-record the read-only CLI examples of the docs after a deliberate output change.

    python tests/tools/update_docs_examples.py [--check]

tests/test_docs.py re-runs every ``$ python -m binfmt …`` example whose
``--procfs`` is a kernel-made tree under tests/data and compares the output
with the page. When the output changes on purpose, this rewrites those
examples in place: an example cut with ``…`` keeps as many lines before and
after the cut as it had. Review the diff (``git diff docs``) before
committing. ``--check`` only lists the examples that would change.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_docs import (  # noqa: E402
    ELLIPSIS,
    EXAMPLES,
    RECORDED_IN,
    Example,
    _matches,
    _normalise,
    _procfs,
)


def run(example: Example) -> list[str]:
    argv = shlex.split(example.command)
    procfs = _procfs(argv) or ""  # none: another node's example (--state, --host)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, os.path.basename(procfs) or "none")
        if procfs and os.path.isdir(ROOT / procfs):
            shutil.copytree(ROOT / procfs, copy, symlinks=True)
            argv[argv.index("--procfs") + 1] = copy
        done = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
    printed = done.stdout.replace(copy, procfs or copy).replace(str(ROOT), RECORDED_IN)
    return printed.rstrip("\n").split("\n") if printed else []


def cut_like(old: tuple[str, ...], new: list[str]) -> list[str]:
    """``new``, cut with ``…`` where ``old`` was, keeping as many lines around the cut."""
    cuts = [i for i, line in enumerate(old) if line.strip() == ELLIPSIS]
    if not cuts:
        return new
    head, tail = cuts[0], len(old) - cuts[-1] - 1
    if head + tail >= len(new):
        return new
    return [*new[:head], ELLIPSIS, *(new[len(new) - tail :] if tail else [])]


def rewrite(page: Path, example: Example, lines: list[str]) -> None:
    text = page.read_text(encoding="utf-8").split("\n")
    start = example.line - 1  # the "$ …" line
    indent = text[start][: len(text[start]) - len(text[start].lstrip())]
    end = start + 1
    while end < len(text) and text[end].strip() and not text[end].lstrip().startswith("$ "):
        if len(text[end]) - len(text[end].lstrip()) < len(indent):
            break
        end += 1
    text[start + 1 : end] = [indent + line if line else "" for line in lines]
    page.write_text("\n".join(text), encoding="utf-8")


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for example in EXAMPLES:
        new = run(example)
        expected = _normalise(list(example.output), RECORDED_IN)
        ordered = shlex.split(example.command)[3] != "scan"
        if _matches(expected, _normalise(new, RECORDED_IN), ordered):
            continue
        stale.append(example)
    # Bottom-up per page, so earlier line numbers stay valid.
    for example in sorted(stale, key=lambda e: (e.page, -e.line)):
        print(f"{example.id}: $ {example.command}")
        if not check:
            rewrite(ROOT / "docs" / example.page, example, cut_like(example.output, run(example)))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
