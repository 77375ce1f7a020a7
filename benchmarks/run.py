#!/usr/bin/env python3
"""Benchmarks, as ratios against baselines measured in the same run (``tox -e bench``).

    python benchmarks/run.py [--tree /usr] [--repeat 3] [--quick]

Prints a Markdown report; the figures in ``docs/performance.rst`` come from it.
Every figure is the best of ``--repeat`` runs after one warm-up run, so all
contenders read from the page cache. Baselines:

- a bare Python walk that opens, reads 256 bytes of and closes the same files
  as the scan (the floor for any Python implementation);
- ``file -b`` over the same files (the tool people reach for);
- ``python -c pass`` and ``python -c 'import attrs'`` for start-up;
- ``subprocess.run(["/bin/true"])`` for measuring a compat target (a
  spawn of the held probe).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from binfmt import BinfmtError, BinfmtMisc, Entry, Host, State, qemu  # noqa: E402
from binfmt.elf import ElfHeader, NotElf, details, program_interpreter  # noqa: E402
from binfmt.scan import scan  # noqa: E402

DEBIAN_STATE = ROOT / "tests" / "data" / "procfs" / "debian-qemu-user-static"


def best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm the page cache and the caches of the code under test
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def walk_files(root: str, all_files: bool) -> Iterator[str]:
    """The files a scan reads: regular files (with an exec bit unless all_files)."""
    stack = [root]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and (
                    all_files or entry.stat(follow_symlinks=False).st_mode & 0o111
                ):
                    yield entry.path


def bare_loop(root: str, all_files: bool) -> int:
    n = 0
    for path in walk_files(root, all_files):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        os.read(fd, 256)
        os.close(fd)
        n += 1
    return n


def find_file_b(root: str, all_files: bool) -> None:
    """``find | xargs file -b``: the walk and the classification, as people run it."""
    perm = "" if all_files else "-perm /111"
    subprocess.run(
        f"find {root} -type f {perm} -print0 | xargs -0 file -b",
        shell=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def startup(argv: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def many_entries(n: int) -> State:
    """``n`` entries: Debian's QEMU ones, then never-matching ones with assorted masks."""
    entries = list(BinfmtMisc(str(DEBIAN_STATE)).state().entries)[:n]
    i = 0
    while len(entries) < n:
        size = 4 + i % 16
        mask = bytes([0xFF - (i % 7)]) * size
        entries.append(Entry(f"x{i}", "/x", offset=i % 40, magic=b"\x01" * size, mask=mask))
        i += 1
    return State("/bench", True, True, tuple(entries))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default="/usr")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip file(1) over --all")
    args = parser.parse_args()
    tree, repeat = args.tree, args.repeat
    host = Host.detect()
    state = BinfmtMisc(str(DEBIAN_STATE)).state()
    out = [
        f"# binfmt benchmarks: {tree} on {os.uname().machine}, kernel {os.uname().release}, "
        f"Python {sys.version.split()[0]}",
        "",
    ]

    # -- scan vs the bare loop and file(1) --------------------------------------------
    out += [
        "## scan",
        "",
        "| mode | files read | bare loop | scan | scan / loop | `find | xargs file -b` | "
        "file / scan |",
        "|---|---|---|---|---|---|---|",
    ]
    for all_files in (False, True):
        n = bare_loop(tree, all_files)
        base = best(lambda a=all_files: bare_loop(tree, a), repeat)  # type: ignore[misc]
        ours = best(
            lambda a=all_files: scan(tree, state=state, host=host, all_files=a),  # type: ignore[misc]
            repeat,
        )
        if args.quick and all_files:
            f_time = versus = "-"
        else:
            t = best(lambda a=all_files: find_file_b(tree, a), 1)  # type: ignore[misc]
            f_time, versus = f"{t:.2f} s", f"{t / ours:.1f}x"
        mode = "`--all`" if all_files else "default (exec bit)"
        out.append(
            f"| {mode} | {n} | {base:.2f} s | {ours:.2f} s | {ours / base:.2f}x | "
            f"{f_time} | {versus} |"
        )

    # -- matching cost with 5 and 60 entries ------------------------------------------
    out += [
        "",
        "## scan time by number of registered entries",
        "",
        "| entries | mask groups | scan --all |",
        "|---|---|---|",
    ]
    from binfmt.matcher import Matcher

    for n in (5, 60):
        st = many_entries(n)
        t = best(
            lambda s=st: scan(tree, state=s, host=host, all_files=True),  # type: ignore[misc]
            repeat,
        )
        out.append(f"| {n} | {Matcher(st).groups} | {t:.2f} s |")

    # -- where the time goes on ELF files ---------------------------------------------
    elves = []
    for path in walk_files(tree, True):
        try:
            with open(path, "rb") as f:
                head = f.read(64)
            ElfHeader.decode(head)
        except (OSError, NotElf):
            continue
        elves.append(path)
        if len(elves) >= 500:
            break
    heads = [Path(p).read_bytes()[:256] for p in elves]

    def decode_all() -> None:
        for h in heads:
            ElfHeader.decode(h)

    def interp_all() -> None:
        for p, h in zip(elves, heads):
            fd = os.open(p, os.O_RDONLY)
            try:
                with contextlib.suppress(BinfmtError, OSError):  # corrupt files: not the point
                    program_interpreter(fd, ElfHeader.decode(h))
            finally:
                os.close(fd)

    def details_all() -> None:
        for p in elves:
            with contextlib.suppress(BinfmtError, OSError):
                details(p)

    def match_all() -> None:
        for h in heads:
            qemu.match_header(h)

    n = len(elves)
    out += [
        "",
        f"## per ELF file ({n} ELF files of {tree})",
        "",
        "| step | per file |",
        "|---|---|",
    ]
    for label, fn in (
        ("header decode (struct)", decode_all),
        ("QEMU signature match, uncached", match_all),
        ("PT_INTERP with two pread calls", interp_all),
        ("pyelftools details()", details_all),
    ):
        t = best(fn, repeat)
        out.append(f"| {label} | {t / n * 1e6:.1f} µs |")

    # -- start-up ---------------------------------------------------------------------
    py = sys.executable
    # Installed packages carry bytecode; make sure ours does too, or every start-up
    # would compile the sources (PYTHONDONTWRITEBYTECODE=1 is set in some sandboxes).
    subprocess.run([py, "-m", "compileall", "-q", str(ROOT / "binfmt")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp)
        (fake / "register").touch()
        (fake / "status").write_text("enabled\n")
        for line in (DEBIAN_STATE / "register").read_text().split():
            shutil.copy(DEBIAN_STATE / line, fake / line)
        shutil.copy(DEBIAN_STATE / "register", fake / "register")
        runs = max(10, repeat * 5)
        t_pass = startup([py, "-c", "pass"], runs)
        t_attrs = startup([py, "-c", "import attrs"], runs)
        t_status = startup([py, "-m", "binfmt", "status", "--procfs", str(fake)], runs)
    out += [
        "",
        f"## start-up (median of {runs})",
        "",
        "| command | time | vs import attrs |",
        "|---|---|---|",
        f"| `python -c pass` | {t_pass * 1000:.0f} ms | {t_pass / t_attrs:.2f}x |",
        f"| `python -c 'import attrs'` | {t_attrs * 1000:.0f} ms | 1.00x |",
        f"| `python -m binfmt status` (29 entries) | {t_status * 1000:.0f} ms | "
        f"{t_status / t_attrs:.2f}x |",
    ]
    out += host_detection(runs)
    print("\n".join(out))
    return 0


def host_detection(runs: int) -> list[str]:
    """What measuring a compat target costs, against spawning a native program."""
    from binfmt.host import measure_native

    compat = {"x86_64": "i386", "aarch64": "arm"}.get(os.uname().machine)
    if compat is None:
        return ["", f"## host detection: no compat target to measure on {os.uname().machine}"]

    def timed(fn: Callable[[], object]) -> float:
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    spawn = timed(lambda: subprocess.run(["/bin/true"]))
    measured = timed(lambda: measure_native(compat))
    plain = timed(lambda: Host.detect(measure=False))
    detect = timed(Host.detect)
    return [
        "",
        f"## host detection (median of {runs})",
        "",
        "| step | time | vs spawning /bin/true |",
        "|---|---|---|",
        f"| `subprocess.run(['/bin/true'])` | {spawn * 1000:.1f} ms | 1.00x |",
        f"| `measure_native({compat!r})` | {measured * 1000:.1f} ms | {measured / spawn:.2f}x |",
        f"| `Host.detect(measure=False)` | {plain * 1000:.1f} ms | {plain / spawn:.2f}x |",
        f"| `Host.detect()` | {detect * 1000:.1f} ms | {detect / spawn:.2f}x |",
    ]


if __name__ == "__main__":
    sys.exit(main())
