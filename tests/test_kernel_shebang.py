"""``#!`` lines at the kernel's buffer edge: predict() against execve, stratum by stratum.

``load_script()`` (fs/binfmt_script.c) reads the first 256 bytes of a file;
byte 255 is overwritten with the NUL that ends the line when no newline comes
first, the newline search stops at a NUL, and the separator after the
interpreter name is looked for before trailing blanks are trimmed. The
boundaries are where a model goes wrong, so the lines here are built to
reach them, in explicit strata:

* ``length``: files of every length 0 to 300 holding one ``#!`` line of
  random shape (blanks, name, separator, argument, blanks, an ending);
* ``edge-byte``: a space, tab, NUL, CR or newline at every offset 250 to 258,
  inside the name, the argument or the trailing blanks;
* ``NUL``: a NUL at every third offset of a 300-byte line, and after the
  name and blanks (an empty argument);
* ``name-length``: interpreter names of every length 1 to 260, ended by a
  newline, by the end of the file, or followed by an argument, and names of
  240 to 300 bytes that reach the buffer's end;
* ``arg-length``: arguments of every length 0 to 290;
* ``not #!``: files that start almost like a ``#!`` line;
* ``blank``: ``#!`` and nothing but blanks (up to 300), with and without a
  newline: ``ENOEXEC`` for a blank line, ``EACCES`` (the cwd opened) without.

The interpreters are symlinks named ``p`` * k (and ``p`` * k + CR) in the
working directory to a static program that prints its argv, so that the
argv the kernel builds is seen exactly. Each stratum's count and outcomes are
printed (``pytest -s``), and each must reach the outcomes it is about.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from binfmt import Host, State
from binfmt.prediction import Verdict, parse_shebang, predict
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip

from .argv_reporter import argv_of, reporter, runs_here

pytestmark = pytest.mark.kernel

SEED = int(os.environ.get("BINFMT_SHEBANG_SEED", "10"))
BUFFER = 256
BLANKS = b" \t"
EDGE_BYTES = {b" ": "space", b"\t": "tab", b"\0": "NUL", b"\r": "CR", b"\n": "newline"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reporter, and symlinks to it named p, pp, … (255 of them), also with a CR after."""
    if not runs_here():
        require_or_skip("the argv reporter is an x86-64 Linux program")
    d = tmp_path_factory.mktemp("shebang")
    prog = d / "reporter"
    prog.write_bytes(reporter())
    prog.chmod(0o755)
    for k in range(1, 256):
        os.symlink("reporter", d / ("p" * k))
        if k < 255:
            os.symlink("reporter", d / ("p" * k + "\r"))
    return d


# -- the strata ---------------------------------------------------------------------------


def _shape(rng: random.Random, length: int) -> bytes:
    """A ``#!`` line of exactly ``length`` bytes (ending included) of random shape."""
    if length < 2:
        return b"#!"[:length]
    room = length - 2
    ending = rng.choice([b"\n", b"\n", b"", b"\0", b"\r\n", b" \n"])
    if len(ending) > room:
        ending = b""
    room -= len(ending)
    cut = sorted(rng.randint(0, room) for _ in range(4))
    lead, name_len, sep, arg_len = cut[0], cut[1] - cut[0], cut[2] - cut[1], cut[3] - cut[2]
    trail = room - cut[3]
    name = b"p" * name_len
    sep_bytes = bytes(rng.choice(BLANKS) for _ in range(sep))
    if arg_len and not sep:  # an argument needs a separator: take one byte of the name
        if name:
            name, sep_bytes = name[:-1], b" "
        else:
            lead, arg_len = lead + arg_len, 0
    arg = bytes(rng.choice(b"aZ9-=./ \t") for _ in range(arg_len))
    line = (
        b"#!"
        + bytes(rng.choice(BLANKS) for _ in range(lead))
        + name
        + sep_bytes
        + arg
        + bytes(rng.choice(BLANKS) for _ in range(trail))
        + ending
    )
    assert len(line) == length, (length, line)
    return line


def _tail(rng: random.Random) -> bytes:
    """What follows the line in the file: nothing, or more text."""
    return rng.choice([b"", b"", b"echo body\n", b"x" * 40])


def cases() -> Iterator[tuple[str, bytes]]:
    """(stratum, file content) for every case, deterministically from SEED."""
    rng = random.Random(SEED)
    for start in (b"", b"#", b"!", b"# !", b" #!", b"\n#!", b"!#", b"\0#!", b"##!", b"#\n!"):
        for _ in range(5):
            yield "not #!", start + _shape(rng, rng.randint(0, 60))[2:]
    for length in range(301):
        yield "length", _shape(rng, length) + _tail(rng)
    for pos in range(250, 259):
        for byte in EDGE_BYTES:
            for region in ("name", "arg", "trailing"):
                if region == "name":
                    line = bytearray(b"#!" + b"p" * 298)
                elif region == "arg":
                    line = bytearray(b"#!p " + b"a" * 296)
                else:
                    line = bytearray(b"#!pp a" + b" " * 294)
                line[pos] = byte[0]
                yield "edge-byte", bytes(line[: rng.randint(pos + 1, 300)]) + _tail(rng)
    for pos in range(2, 301, 3):
        line = bytearray(_shape(rng, 300))
        line[pos] = 0
        yield "NUL", bytes(line)
    for k in range(1, 254, 3):  # blanks, then a NUL: the argument is the empty string
        blanks = bytes(rng.choice(BLANKS) for _ in range(rng.randint(1, 3)))
        yield "NUL", (b"#!" + b"p" * k + blanks + b"\0" + b"junk\n")[:300]
    for k in range(1, 261):
        name = b"p" * k
        yield "name-length", b"#!" + name + b"\n"
        yield "name-length", b"#!" + name
        yield (
            "name-length",
            b"#!" + name + b" " + b"a" * rng.randint(0, 40) + rng.choice([b"", b"\n"]),
        )
    for k in range(240, 301):
        yield "name-length", b"#!" + rng.choice([b"", b" "]) + b"p" * k + rng.choice([b"", b"q"])
    for m in range(291):
        lead = rng.choice([b"", b" ", b"\t "])
        yield "arg-length", b"#!" + lead + b"pp " + b"q" * m + rng.choice([b"\n", b"", b"  \n"])
    for n in range(301):
        yield "blank", b"#!" + bytes(rng.choice(BLANKS) for _ in range(n)) + b"\n"
        yield (
            "blank",
            b"#!" + bytes(rng.choice(BLANKS) for _ in range(n)) + rng.choice([b"", b"\0"]),
        )


# -- what happened, what was predicted ----------------------------------------------------


def final_argv(verdict: Verdict) -> Optional[tuple[str, ...]]:
    """The argv of the program that finally runs: the deepest level's."""
    while verdict.next is not None:
        verdict = verdict.next
    return verdict.argv


def kernel_rules(content: bytes) -> set[str]:
    """Which steps of ``load_script()`` decide this file: the rules the strata must reach.

    Worked out from the bytes independently of the library, only to count
    what the cases reach (the outcomes compared come from the kernel).
    """
    if not content.startswith(b"#!"):
        return {"not #!"}
    buf = content[:BUFFER].ljust(BUFFER, b"\0")
    newline, nul = buf.find(b"\n"), buf.find(b"\0")
    rules = set()
    if newline >= 0 and (nul < 0 or newline < nul):
        end = newline
        rules.add("newline ends the line")
    else:
        rest = buf[2:255]
        start = next((i for i, b in enumerate(rest, 2) if b not in BLANKS), None)
        if start is None and buf[255] in BLANKS:
            return {"no newline: only blanks (ENOEXEC)"}
        start = 255 if start is None else start
        if not any(b in BLANKS or b == 0 for b in buf[start:256]):
            return {"no newline: name cut by the buffer (ENOEXEC)"}
        end = 255
        rules.add("no newline: byte 255 ends the line")
        if buf[255] not in (0, *BLANKS):
            rules.add("byte 255 overwritten")
    while buf[end - 1] in BLANKS:
        end -= 1
        rules.add("trailing blanks trimmed")
    line = buf[:end]
    name_at = next((i for i in range(2, end) if line[i] not in BLANKS), None)
    if name_at is None:
        return rules | {"no interpreter (ENOEXEC)"}
    if line[name_at] == 0:
        return rules | {"empty interpreter: the cwd (EACCES)"}
    sep = next((i for i in range(name_at, end) if line[i] in BLANKS or line[i] == 0), None)
    if sep is not None and line[sep] == 0:
        rules.add("NUL ends the interpreter")
    else:
        arg_at = (
            None
            if sep is None
            else next((i for i in range(sep, end) if line[i] not in BLANKS), None)
        )
        if arg_at is None:
            rules.add("no argument")
        elif line[arg_at] == 0:
            rules.add("empty argument (blanks, then NUL)")
        else:
            rules.add("NUL cuts the argument" if 0 in line[arg_at:] else "argument")
    return rules


def test_shebang_lines_at_the_buffer_edge(binfmt_sandbox: Sandbox, workdir: Path) -> None:
    """For every case, execve's errno, or the argv the interpreter got, is the prediction."""
    box = binfmt_sandbox
    host = Host.detect()
    empty = State("/none", True, True, ())
    script = workdir / "script"
    strata: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    rules: Counter[str] = Counter()
    failures = []
    for stratum, content in cases():
        script.write_bytes(content)
        script.chmod(0o755)
        result = box.run(["ARGV0", "a1"], executable=str(script), cwd=str(workdir), timeout=20)
        assert not result.timed_out, content
        verdict = predict(
            str(script), state=empty, host=host, argv=["ARGV0", "a1"], cwd=str(workdir)
        )
        got: tuple[Optional[str], Optional[tuple[str, ...]]] = (
            result.errno,
            None if result.errno else tuple(argv_of(result.stdout)),
        )
        want = (verdict.errno, None if verdict.errno else final_argv(verdict))
        if got != want:
            failures.append((stratum, content, got, want))
        shebang = parse_shebang(content, BUFFER) if content.startswith(b"#!") else None
        if result.errno:
            outcome = result.errno
        elif shebang is not None and shebang.argument == "":
            outcome = "runs, empty argument"
        elif shebang is not None and shebang.argument is not None:
            outcome = "runs, argument"
        else:
            outcome = "runs"
        strata[stratum] += 1
        outcomes[(stratum, outcome)] += 1
        rules.update(kernel_rules(content))
    print(f"\n#! cases: {sum(strata.values())}, per stratum and outcome:")
    for (stratum, outcome), n in sorted(outcomes.items()):
        print(f"  {stratum:12} {outcome:22} {n:4}  ({100 * n / strata[stratum]:.0f}%)")
    total = sum(strata.values())
    print("load_script() rules reached (a case reaches several):")
    for rule, n in rules.most_common():
        print(f"  {rule:45} {n:4}  ({100 * n / total:.1f}%)")
    assert not failures, failures[:5]
    reached = {outcome for _, outcome in outcomes}
    for needed in ("runs", "runs, argument", "runs, empty argument", "ENOEXEC", "EACCES", "ENOENT"):
        assert needed in reached, (needed, outcomes)
    for rule in RULES:  # every rule of load_script() decides a few percent of the cases
        assert rules[rule] >= 0.02 * total, (rule, rules)


#: The rules of load_script() the strata must reach (see kernel_rules()).
RULES = (
    "not #!",
    "newline ends the line",
    "no newline: byte 255 ends the line",
    "byte 255 overwritten",
    "no newline: only blanks (ENOEXEC)",
    "no newline: name cut by the buffer (ENOEXEC)",
    "trailing blanks trimmed",
    "no interpreter (ENOEXEC)",
    "empty interpreter: the cwd (EACCES)",
    "NUL ends the interpreter",
    "argument",
    "NUL cuts the argument",
    "empty argument (blanks, then NUL)",
    "no argument",
)
