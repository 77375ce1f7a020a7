"""The parser against the kernel's recorded answers (tests/data/register-lines.jsonl).

The corpus was produced by tests/tools/capture_kernel_fixtures.py on a real
kernel. The first test needs no kernel; the second replays the corpus on a
private instance of this machine's kernel, so a fixture that stopped being
true is noticed.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from binfmt.entry import Entry
from binfmt.errors import KernelError
from binfmt.kernel import KernelRules
from binfmt.sandbox import Sandbox

from .entry_readings import readings
from .kernel_model import expected

CORPUS = Path(__file__).parent / "data" / "register-lines.jsonl"


def _load() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = CORPUS.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


HEADER, RECORDS = _load()
RULES = KernelRules.for_release(HEADER["kernel"])


def _id(record: dict[str, Any]) -> str:
    return repr(base64.b64decode(record["line"])[:40])


def _recorded(record: dict[str, Any]) -> tuple[str, object]:
    if "errno" in record:
        return "err", record["errno"]
    return "ok", base64.b64decode(record["status"])


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_parser_agrees_with_recorded_kernel(record: dict[str, Any]) -> None:
    """Each recorded line is accepted, refused (same errno) and rendered as the kernel did."""
    line = base64.b64decode(record["line"])
    assert expected(line, RULES) == _recorded(record)


def test_corpus_covers_both_outcomes() -> None:
    """The corpus holds accepted and refused lines of every errno class the spec names."""
    errnos = {r.get("errno") for r in RECORDS}
    assert {"EINVAL", "EEXIST", "ENAMETOOLONG", "ENOENT", "EACCES"} <= errnos
    assert sum("status" in r for r in RECORDS) > 40


def test_accepted_lines_round_trip() -> None:
    """Every accepted corpus line parses to an entry whose own register line parses back equal."""
    for record in RECORDS:
        if "status" not in record:
            continue
        entry = Entry.parse(base64.b64decode(record["line"]), RULES)
        assert Entry.parse(entry.to_register(RULES), RULES) == entry
        text = entry.to_status()
        options = readings(entry.name, text)
        assert entry in options
        assert Entry.from_status(entry.name, text) == options[0]  # the shortest interpreter


@pytest.mark.kernel
def test_corpus_still_true_on_this_kernel(binfmt_sandbox: Sandbox) -> None:
    """Replaying the corpus on a private instance of this kernel gives the recorded answers."""
    misc = binfmt_sandbox.misc
    rules = KernelRules.running()
    mismatches = []
    for record in RECORDS:
        line = base64.b64decode(record["line"])
        before = set(misc.names())
        try:
            misc.register(line)
        except KernelError as exc:
            got: tuple[str, object] = ("err", exc.errno_name)
        else:
            (name,) = [n for n in misc.names() if n not in before]
            with open(f"{misc.path}/{name}", "rb") as f:
                got = ("ok", f.read())
            misc.remove(name)
        if got != _recorded(record) or got != expected(line, rules):
            mismatches.append((line[:60], got, _recorded(record)))
    assert mismatches == []
