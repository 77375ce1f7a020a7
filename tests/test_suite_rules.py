"""The suite's own rules: one switch for every skip, nothing read from outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(p for p in TESTS.rglob("*.py") if ".cache" not in p.parts)

# pytest's own ways to skip, which would bypass BINFMT_REQUIRE_ALL.
_BYPASS = re.compile(r"pytest\.(skip|importorskip)\(|mark\.skipif|mark\.skip\b|mark\.xfail")
# Paths that climb out of the repository (the shared reference lives beside it).
_OUTSIDE = re.compile(r"\.\./shared|[\"'/]shared[\"'/]|parents\[2\] / [\"']shared")


def _lines_matching(pattern: re.Pattern[str]) -> list[str]:
    this = Path(__file__).resolve()
    return [
        f"{p.relative_to(TESTS)}:{n}: {line.strip()}"
        for p in SOURCES
        if p != this
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]


def test_every_skip_goes_through_the_switch() -> None:
    """No test calls pytest.skip, skipif, importorskip or xfail: require_or_skip decides."""
    assert _lines_matching(_BYPASS) == []
    assert len(SOURCES) > 20  # the walk found the suite


def test_nothing_is_read_from_outside_the_repository() -> None:
    """No test names the shared reference directory or climbs above the repository."""
    assert _lines_matching(_OUTSIDE) == []
