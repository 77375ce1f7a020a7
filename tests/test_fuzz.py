"""The fuzz layer in the suite: corpus replay, hypothesis mutation, a short atheris run.

Every target of :mod:`tests.fuzz.targets` (every parser of outside data, and
predict()/scan() of any bytes as a file) is run three ways:

* over its checked-in corpus (``tests/fuzz/corpus/<target>/``): seeds and
  the inputs fuzzing found, kept as regression tests;
* under hypothesis, on random bytes and on corpus seeds mutated by
  overwriting, inserting, deleting, duplicating and splicing bytes
  (``BINFMT_FUZZ_EXAMPLES`` per target, default 200), with the share of
  accepted and refused inputs printed and required on both sides, so that the
  mutations reach past the first check;
* under atheris, coverage-guided, for ``BINFMT_FUZZ_SECONDS`` seconds per
  target (default 3), in a subprocess (libFuzzer ends its process).

The contract is each target's: only the library's errors, no hang (a
deadline per input), and every accepted input renders back to itself.
Longer runs: ``docs/testing.rst``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from binfmt.testing import require_or_skip

from .fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "fuzz" / "corpus"
EXAMPLES = int(os.environ.get("BINFMT_FUZZ_EXAMPLES", "200"))
SECONDS = int(os.environ.get("BINFMT_FUZZ_SECONDS", "3"))
INTERESTING = [b"\0", b"\n", b"\r", b" ", b"\t", b":", b"\\x", b"\\x00", b"\xff", b"#!", b"\x7fELF"]


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / target).iterdir())]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays(target: str) -> None:
    """Every checked-in input of a target keeps the contract."""
    inputs = seeds(target)
    assert len(inputs) >= 5, target
    for data in inputs:
        TARGETS[target](data)  # raises if the contract is broken


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A corpus seed with a few byte-level edits, or a splice of two seeds."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.integers(0, 5))
        at = draw(st.integers(0, len(data)))
        if edit == 0 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == 1:
            data[at:at] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4))
        elif edit == 2:
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == 3:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif edit == 4:
            other = draw(st.sampled_from(pool))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.timeout(300)
def test_hypothesis_mutations(target: str) -> None:
    """Random bytes and mutated seeds keep the contract; both outcomes are reached."""
    pool = seeds(target)
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=2000,  # no hang: an input that takes seconds is a failure
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(data=st.binary(max_size=300) | mutated(pool) | mutated(pool))
    def check(data: bytes) -> None:
        outcome = "accepted" if TARGETS[target](data) else "refused"
        seen[outcome] += 1
        event(outcome)

    check()
    total = sum(seen.values())
    print(f"\n{target}: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in seen.items()))
    assert seen["accepted"] >= 0.05 * total, (target, seen)
    assert seen["refused"] >= 0.05 * total, (target, seen)


def _atheris_missing() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.timeout(180)
def test_atheris_short_run(target: str, tmp_path: Path) -> None:
    """A few seconds of coverage-guided fuzzing from the corpus find no broken contract."""
    if _atheris_missing():
        require_or_skip("atheris is not installed (pip install atheris: x86-64 Linux wheels)")
    new = tmp_path / "new"
    new.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        target,
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(new),
        str(CORPUS / target),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=170)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name != "new")
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-3000:])
    assert "Done" in proc.stderr, proc.stderr[-2000:]
