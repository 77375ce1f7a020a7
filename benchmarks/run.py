#!/usr/bin/env python3
"""Benchmarks, as ratios against baselines measured in the same run (``tox -e bench``).

    python benchmarks/run.py [--tree /usr] [--repeat 3] [--quick]

Prints a Markdown report; the figures in ``docs/performance.rst`` come from it.
Every figure is the best of ``--repeat`` runs after one warm-up run, so all
contenders read from the page cache. Baselines:

- a bare Python walk that opens, reads 256 bytes of and closes the same files
  as the scan (the floor for any Python implementation);
- ``file -b`` over the same files (the tool people reach for);
- ``python -c pass`` and ``python -c 'import attrs'`` for start-up (CPU time of
  whole processes, medians, taking turns; and instruction counts from
  valgrind's callgrind where it is installed, which a loaded machine does not
  change);
- ``ps -e -o pid,args`` over the same ``/proc`` for ``binfmt ps``, with 2,000 real
  (native) processes started for the purpose, plus emulated ones in a private
  binfmt_misc instance where one can be made (``--ps-processes``);
- ``subprocess.run(["/bin/true"])`` for measuring a compat target (a
  spawn of the held probe);
- ``scan --jobs 1`` for ``scan --jobs 2`` (wall time, the two taking turns, with
  the load average of the machine around them);
- ``tar -xf`` of the same archive into a tmpfs for ``scan --tar`` (an archive of
  ``--tar-size`` bytes of the tree's files, made for the purpose), with the peak
  RSS of ``scan --tar``.

``--only scan,entries,elf,startup,ps,jobs,tar,undo,hostdetect`` runs some sections.
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
from typing import Callable, Optional

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


def cpu_seconds(argv: list[str]) -> float:
    """The CPU time (user + system) of one whole process running ``argv``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median CPU seconds of each command, the commands taking turns (so load drifts evenly)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(cpu_seconds(argv))
    return {name: statistics.median(values) for name, values in times.items()}


def instructions(argv: list[str]) -> Optional[int]:
    """Instructions executed by ``argv`` under callgrind (repeatable whatever the load), or None."""
    if shutil.which("valgrind") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    return None


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


def undo_proof(repeat: int) -> list[str]:
    """``install --persistent --refresh --force all`` planned over F entries, fine or stale.

    After a QEMU upgrade every F entry's file was replaced, and the plan must
    fail each write in turn on paper to say what a rollback could not put
    back; with the files unchanged it has nothing to prove. The baseline is
    the same plan over unchanged files, in the same run.
    """
    from binfmt.install import InstallOptions, plan
    from binfmt.kernel import KernelRules
    from binfmt.testing import make_fake_procfs

    host = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
    rules = KernelRules.for_release("6.18")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp, "q")
        q.mkdir()
        sigs = [s for s in qemu.resolve(["all"]) if not host.runs_natively(s.name)]
        for sig in sigs:
            path = q / f"{sig.interpreter_name}-static"
            path.write_bytes(b"\x7fELF")
            path.chmod(0o755)
        time.sleep(0.02)
        entries = [sig.to_entry(str(q / f"{sig.interpreter_name}-static"), "F") for sig in sigs]
        misc = make_fake_procfs(Path(tmp, "p"), entries, kernel=rules)
        options = InstallOptions(qemu_path=str(q), persistent=True, refresh=True, force=True)
        fine = misc.state()
        t_fine = best(lambda: plan(["all"], options, state=fine, host=host), repeat)
        time.sleep(0.02)
        for sig in sigs:  # the upgrade: a new file at every path
            path = q / f"{sig.interpreter_name}-static"
            new = path.with_name("new")
            new.write_bytes(b"\x7fELF new")
            new.chmod(0o755)
            os.replace(new, path)
        stale = misc.state()
        t_stale = best(lambda: plan(["all"], options, state=stale, host=host), repeat)
        lost = len(plan(["all"], options, state=stale, host=host).cannot_restore)
    rows += [
        "",
        f"## install planning: the undo proof ({len(sigs)} F entries)",
        "",
        "| F files | cannot be put back | plan | vs unchanged files |",
        "|---|---|---|---|",
        f"| unchanged | 0 | {t_fine * 1000:.0f} ms | 1.00x |",
        f"| all replaced (after an upgrade) | {lost} | {t_stale * 1000:.0f} ms | "
        f"{t_stale / t_fine:.2f}x |",
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default="/usr")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip file(1) over --all")
    parser.add_argument(
        "--ps-processes", type=int, default=2000, help="native processes started for ps"
    )
    parser.add_argument("--only", default="", help="comma-separated sections to run")
    parser.add_argument("--turns", type=int, default=7, help="runs of each, taking turns")
    parser.add_argument(
        "--tar-size", type=int, default=1 << 30, help="bytes of files in the tar archive"
    )
    args = parser.parse_args()
    chosen = {s for s in args.only.split(",") if s}

    def want(section: str) -> bool:
        return not chosen or section in chosen

    tree, repeat = args.tree, args.repeat
    host = Host.detect()
    state = BinfmtMisc(str(DEBIAN_STATE)).state()
    out = [
        f"# binfmt benchmarks: {tree} on {os.uname().machine}, kernel {os.uname().release}, "
        f"Python {sys.version.split()[0]}",
        "",
    ]

    # -- scan vs the bare loop and file(1) --------------------------------------------
    if want("scan"):
        out += scan_section(tree, state, host, repeat, args.quick, args.turns)
    if want("jobs"):
        out += jobs_section(tree, state, host, args.turns)
    if want("tar"):
        out += tar_section(tree, args.tar_size, args.turns)
    if want("entries"):
        out += entries_section(tree, host, repeat)
    if want("elf"):
        out += elf_section(tree, repeat)
    if want("startup"):
        out += startup_section(repeat)
    if want("undo"):
        out += undo_proof(repeat)
    if want("ps"):
        out += ps_section(args.ps_processes, max(20, repeat * 10))
    if want("hostdetect"):
        out += host_detection(max(20, repeat * 10))
    print("\n".join(out))
    return 0


def scan_section(
    tree: str, state: State, host: Host, repeat: int, quick: bool, turns: int
) -> list[str]:
    out: list[str] = []
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
            lambda a=all_files: scan(tree, state=state, host=host, all_files=a, jobs=1),  # type: ignore[misc]
            repeat,
        )
        if quick and all_files:
            f_time = versus = "-"
        else:
            t = best(lambda a=all_files: find_file_b(tree, a), 1)  # type: ignore[misc]
            f_time, versus = f"{t:.2f} s", f"{t / ours:.1f}x"
        mode = "`--all`" if all_files else "default (exec bit)"
        out.append(
            f"| {mode} | {n} | {base:.2f} s | {ours:.2f} s | {ours / base:.2f}x | "
            f"{f_time} | {versus} |"
        )

    # The same ratio as CPU time, the two taking turns (a loaded machine moves wall time).
    out += [
        "",
        f"### scan --jobs 1 / bare loop in CPU time (median of {turns}, taking turns; "
        f"load {_load()})",
        "",
        "| mode | bare loop | scan | scan / loop |",
        "|---|---|---|---|",
    ]
    for all_files in (False, True):
        times: dict[str, list[float]] = {"loop": [], "scan": []}
        for _ in range(turns):
            times["loop"].append(_cpu(lambda a=all_files: bare_loop(tree, a)))  # type: ignore[misc]
            times["scan"].append(
                _cpu(lambda a=all_files: scan(tree, state=state, host=host, all_files=a, jobs=1))  # type: ignore[misc]
            )
        loop, ours = (statistics.median(times[k]) for k in ("loop", "scan"))
        mode = "`--all`" if all_files else "default (exec bit)"
        out.append(f"| {mode} | {loop:.2f} s | {ours:.2f} s | {ours / loop:.2f}x |")
    return out


def entries_section(tree: str, host: Host, repeat: int) -> list[str]:
    out: list[str] = []
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
            lambda s=st: scan(tree, state=s, host=host, all_files=True, jobs=1),  # type: ignore[misc]
            repeat,
        )
        out.append(f"| {n} | {Matcher(st).groups} | {t:.2f} s |")
    return out


def elf_section(tree: str, repeat: int) -> list[str]:
    out: list[str] = []

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
    return out


def startup_section(repeat: int) -> list[str]:
    out: list[str] = []
    # -- start-up ---------------------------------------------------------------------
    py = sys.executable
    # Installed packages carry bytecode; make sure ours does too, or every start-up
    # would compile the sources (PYTHONDONTWRITEBYTECODE=1 is set in some sandboxes).
    subprocess.run([py, "-m", "compileall", "-q", str(ROOT / "binfmt")], check=True)
    forty = ROOT / "tests" / "data" / "procfs" / "forty-entries"  # made by the kernel
    commands = {
        "`python -c pass`": [py, "-c", "pass"],
        "`python -c 'import attrs'`": [py, "-c", "import attrs"],
        "`python -m binfmt status` (40 entries)": [
            py,
            "-m",
            "binfmt",
            "status",
            "--procfs",
            str(forty),
        ],
    }
    runs = max(20, repeat * 10)
    cpu = startup(commands, runs)
    counts = {name: instructions(argv) for name, argv in commands.items()}
    base_cpu = cpu["`python -c 'import attrs'`"]
    base_count = counts["`python -c 'import attrs'`"]
    out += [
        "",
        f"## start-up (CPU time, median of {runs} runs each, taking turns; "
        "instructions from callgrind)",
        "",
        "| command | CPU time | vs import attrs | instructions | vs import attrs |",
        "|---|---|---|---|---|",
    ]
    for name in commands:
        count = counts[name]
        shown = "-" if count is None else f"{count / 1e6:.0f} M"
        ratio = "-" if count is None or not base_count else f"{count / base_count:.2f}x"
        out.append(
            f"| {name} | {cpu[name] * 1000:.0f} ms | {cpu[name] / base_cpu:.2f}x | {shown} | "
            f"{ratio} |"
        )
    return out


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpu(fn: Callable[[], object]) -> float:
    """CPU seconds (user + system) of ``fn``, this process and the children it waited for."""
    import resource

    def used() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    before = used()
    fn()
    return used() - before


def _wall(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def jobs_section(tree: str, state: State, host: Host, turns: int) -> list[str]:
    """scan --jobs 1 against --jobs 2 (processes), wall time, taking turns."""
    loads = [_load()]
    jobs = (1, 2)
    wall: dict[int, list[float]] = {j: [] for j in jobs}
    cpu: dict[int, list[float]] = {j: [] for j in jobs}
    out = [
        "",
        f"## scan --jobs (processes) on {os.cpu_count()} CPUs, wall time, {turns} turns each",
        "",
    ]
    for all_files in (False, True):
        for j in jobs:
            wall[j], cpu[j] = [], []
        scan(tree, state=state, host=host, all_files=all_files, jobs=1)  # warm the cache
        for _ in range(turns):
            for j in jobs:

                def run(j: int = j, a: bool = all_files) -> object:
                    return scan(tree, state=state, host=host, all_files=a, jobs=j)

                start = time.perf_counter()
                c = _cpu(run)
                wall[j].append(time.perf_counter() - start)
                cpu[j].append(c)
        loads.append(_load())
        one = statistics.median(wall[1])
        mode = "`--all`" if all_files else "default"
        out += [
            f"### {mode}",
            "",
            "| jobs | wall median | wall best | CPU median | vs --jobs 1 (median, best) |",
            "|---|---|---|---|---|",
        ]
        for j in jobs:
            out.append(
                f"| {j} | {statistics.median(wall[j]):.2f} s | {min(wall[j]):.2f} s | "
                f"{statistics.median(cpu[j]):.2f} s | "
                f"{statistics.median(wall[j]) / one:.2f}x, {min(wall[j]) / min(wall[1]):.2f}x |"
            )
        out.append("")
    out.append(f"load average (1, 5, 15 min) before and after each mode: {' / '.join(loads)}")
    # The control: what two processes gain on this machine now, for pure CPU work.
    control: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(turns):
        for j in (1, 2):
            control[j].append(_wall(lambda j=j: _spin_in(j)))  # type: ignore[misc]
    ratio = statistics.median(control[2]) / statistics.median(control[1])
    best_ratio = min(control[2]) / min(control[1])
    out += [
        "",
        f"control (the same CPU-bound Python work in 1 process, or split over 2): "
        f"2 / 1 = {ratio:.2f}x median, {best_ratio:.2f}x best (1.00x: no spare core; "
        f"0.50x: two idle cores); load {_load()}",
    ]
    return out


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i & 7
    return total


def _spin_in(processes: int, work: int = 6_000_000) -> None:
    """``work`` loop iterations, split over ``processes`` forked processes."""
    pids = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            _spin(work // processes)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def make_archive(tree: str, size: int, path: Path) -> tuple[int, int]:
    """A tar of ``tree``'s first files (walk order) up to ``size`` bytes: (members, bytes)."""
    names: list[str] = []
    total = 0
    for directory, dirs, files in os.walk(tree):
        dirs.sort()
        names.append(directory)
        for name in sorted(files):
            full = os.path.join(directory, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            names.append(full)
            total += st.st_size
        if total >= size:
            break
    listing = path.with_suffix(".list")
    listing.write_bytes(b"\0".join(os.fsencode(n) for n in names) + b"\0")
    subprocess.run(
        ["tar", "--no-recursion", "--null", "-cf", str(path), "-T", str(listing)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    listing.unlink()
    return len(names), path.stat().st_size


_SCAN_RSS = (
    "import resource, sys\n"
    "from binfmt.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "sys.stderr.write(f'maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
)


def tar_section(tree: str, size: int, turns: int) -> list[str]:
    """scan --tar against tar -xf into a tmpfs, wall time taking turns; peak RSS."""
    py = sys.executable
    shm = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    out: list[str] = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        small = Path(tmp) / "small.tar"
        archive = Path(tmp) / "image.tar"
        members, nbytes = make_archive(tree, size, archive)
        small_members, small_bytes = make_archive(tree, size // 100, small)
        procfs = str(DEBIAN_STATE)
        target = shm / "binfmt-bench-extract"

        def extract(stdin: bool) -> None:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            if stdin:
                cmd = f"cat {archive} | tar -xf - -C {target}"
            else:
                cmd = f"tar -xf {archive} -C {target}"
            subprocess.run(cmd, shell=True, check=True, stderr=subprocess.DEVNULL)

        def ours(path: Path, stdin: bool) -> int:
            argv = [py, "-c", _SCAN_RSS, "scan", "--tar", "-" if stdin else str(path)]
            argv += ["--procfs", procfs, "--json"]
            if stdin:
                cmd = f"cat {path} | " + " ".join(shlex_quote(a) for a in argv)
                done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            else:
                done = subprocess.run(argv, capture_output=True, text=True)
            for line in done.stderr.splitlines():
                if line.startswith("maxrss "):
                    return int(line.split()[1])
            raise RuntimeError(done.stderr)

        loads = [_load()]
        times: dict[str, list[float]] = {k: [] for k in ("x", "s", "xp", "sp")}
        rss: dict[str, int] = {}
        extract(False)  # warm the page cache
        for _ in range(turns):
            times["x"].append(_wall(lambda: extract(False)))
            times["s"].append(_wall(lambda: rss.__setitem__("file", ours(archive, False))))
            times["xp"].append(_wall(lambda: extract(True)))
            times["sp"].append(_wall(lambda: rss.__setitem__("pipe", ours(archive, True))))
        shutil.rmtree(target, ignore_errors=True)
        rss["small"] = ours(small, False)
        loads.append(_load())
        med = {k: statistics.median(v) for k, v in times.items()}
        out += [
            "",
            f"## scan --tar: {nbytes / 2**30:.2f} GiB archive of {members} members of {tree} "
            f"(wall time, median of {turns}, taking turns; tmpfs: {shm})",
            "",
            "| input | `tar -xf` into tmpfs | `scan --tar` | scan / tar | peak RSS of scan |",
            "|---|---|---|---|---|",
            f"| file | {med['x']:.2f} s | {med['s']:.2f} s | {med['s'] / med['x']:.2f}x | "
            f"{rss['file'] / 1024:.0f} MiB |",
            f"| pipe (`cat … |`) | {med['xp']:.2f} s | {med['sp']:.2f} s | "
            f"{med['sp'] / med['xp']:.2f}x | {rss['pipe'] / 1024:.0f} MiB |",
            "",
            f"peak RSS for a {small_bytes / 2**20:.0f} MiB archive of {small_members} members: "
            f"{rss['small'] / 1024:.0f} MiB; load average before and after: {' / '.join(loads)}",
        ]
    return out


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def ps_section(count: int, runs: int) -> list[str]:
    """``binfmt ps`` against ``ps -e -o pid,args``, both over this machine's /proc.

    ``count`` real ``sleep`` processes are started (and killed, by pid, at the
    end), so /proc holds at least that many processes; where a private
    binfmt_misc instance can be made, 20 emulated arm64 busybox processes run
    through it and ``ps`` is pointed at that instance, so matching, reading and
    naming them is part of the figure.
    """
    from binfmt.emulated import processes
    from binfmt.sandbox import Sandbox, SandboxUnavailable

    busybox = ROOT / "tests" / ".cache" / "debian" / "arm64" / "bin" / "busybox"
    py = sys.executable
    sleepers = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(count)]
    box = None
    emulated: list[int] = []
    try:
        procfs = str(DEBIAN_STATE)
        try:
            if not busybox.exists():
                raise SandboxUnavailable("no arm64 busybox (tests/fetch-debian.sh)")
            box = Sandbox()
            box.start()
            box.misc.register(qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "F"))
            quiet = "</dev/null >/dev/null 2>&1 & echo $!"
            done = box.run(["/bin/sh", "-c", "; ".join([f"{busybox} sleep 3600 {quiet}"] * 20)])
            emulated = [int(p) for p in done.stdout.split()]
            procfs = box.path
        except SandboxUnavailable as exc:
            print(f"(ps: no emulated processes: {exc})", file=sys.stderr)
        time.sleep(1)  # let every exec happen
        state = BinfmtMisc(procfs).state()
        report = processes(state)
        lib = best(lambda: processes(state), 3)
        timed = startup(
            {
                "ps": ["ps", "-e", "-o", "pid,args"],
                "ours": [py, "-m", "binfmt", "ps", "--procfs", procfs],
                "json": [py, "-m", "binfmt", "ps", "--json", "--procfs", procfs],
            },
            runs,
        )
        t_ps, t_ours, t_json = timed["ps"], timed["ours"], timed["json"]
    finally:
        for pid in emulated:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()
        if box is not None:
            box.close()
    found = len(report.processes)
    return [
        "",
        f"## ps over /proc: {report.examined} processes, {found} emulated "
        f"(CPU time, median of {runs}, taking turns; in-process: best wall time)",
        "",
        "| command | time | vs `ps -e -o pid,args` |",
        "|---|---|---|",
        f"| `ps -e -o pid,args` | {t_ps * 1000:.0f} ms | 1.00x |",
        f"| `python -m binfmt ps` | {t_ours * 1000:.0f} ms | {t_ours / t_ps:.2f}x |",
        f"| `python -m binfmt ps --json` | {t_json * 1000:.0f} ms | {t_json / t_ps:.2f}x |",
        f"| `binfmt.processes()` in-process | {lib * 1000:.1f} ms "
        f"({lib / report.examined * 1e6:.1f} µs a process) | {lib / t_ps:.2f}x |",
    ]


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
