"""The documentation is executable: its doctests run, its CLI examples print what the pages say.

Three kinds of checks:

* every ``>>>`` example in ``docs/*.rst``, ``docs/guides/*.rst`` and the
  doctest files they include (``docs/guides/*.txt``) runs from the
  repository root and prints what the page shows;
* every ``$ python -m binfmt …`` example in a ``.. code-block:: console``
  whose ``--procfs`` is a tree under ``tests/data`` and which changes
  nothing (a read-only command, or ``--dry-run``) is run again and its output
  compared with the page. Only what differs from host to host is normalised:
  the kernel release, the repository's absolute path and timings. A line
  holding only ``…`` stands for lines the page leaves out. The tree is copied
  first, so not even a broken ``--dry-run`` can change ``tests/data``;
* the reference pages cover what the code has: every ``doctor`` finding code
  with its severity, every command and option of the CLI.

The transcripts were recorded on an x86_64 Debian 12 host with Debian's
``qemu-user-static`` (``tests/setup-system.sh``) and the foreign Debian
binaries of ``tests/fetch-debian.sh``; elsewhere the examples that depend on
that are skipped with the reason.
"""

from __future__ import annotations

import argparse
import difflib
import doctest
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import pytest

from binfmt import BinfmtError, BinfmtMisc, Host
from binfmt.cli import build_parser
from binfmt.doctor import CODES
from binfmt.persist import effective_entries, read_binfmt_d
from binfmt.sandbox import sandbox_unavailable_reason
from binfmt.testing import require_or_skip

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.glob("*.rst"), *DOCS.glob("guides/*.rst")])
# Doctest files pulled into a page with ``.. include::`` (Sphinx does not build them alone).
INCLUDED = sorted(DOCS.glob("guides/*.txt"))
# Where the transcripts were recorded: the repository path they show.
RECORDED_IN = "/work/main"
DEBIAN_CACHE = ROOT / "tests" / ".cache" / "debian"
DEBIAN_TREE = ROOT / "tests" / "data" / "procfs" / "debian-qemu-user-static"
ELLIPSIS = "…"

# Commands whose examples are re-run: they only read (install, uninstall and
# load only with --dry-run; export and status only when they write no file).
READ_ONLY = ("status", "check", "scan", "doctor", "export", "ps", "metrics")
DRY_RUN_ONLY = ("install", "uninstall", "load")


def _rel(path: Path) -> str:
    return path.relative_to(DOCS).as_posix()


# -- what the recording host had ---------------------------------------------------


def _x86_64_with_ia32() -> Optional[str]:
    """Why this host differs from the recording host's architecture, or None."""
    host = Host.detect()
    if host.native != ("x86_64", "i386", "i486") or host.unknown:
        return (
            "recorded on an x86_64 host that runs i386 natively; this one runs "
            f"{', '.join(host.native) or 'nothing known'} natively"
        )
    return None


def _needs_recording_host() -> None:
    reason = _x86_64_with_ia32()
    if reason is not None:
        require_or_skip(reason)


def _needs_debian_qemu() -> None:
    for path in ("/usr/bin/qemu-aarch64-static", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"):
        if not os.path.exists(path):
            require_or_skip(f"{path} is missing: install Debian's qemu-user-static")


def _needs_debian_binaries() -> None:
    if not (DEBIAN_CACHE / "arm64" / ".fetched").exists():
        require_or_skip("the foreign Debian binaries are missing: run tests/fetch-debian.sh")


def _systemd_differences() -> list[str]:
    """How this host's systemd-binfmt setup differs from the recording host's."""
    problems = []
    if not any(
        os.path.exists(p)
        for p in ("/usr/lib/systemd/systemd-binfmt", "/lib/systemd/systemd-binfmt")
    ):
        problems.append("systemd-binfmt is not installed")
    for directory in ("/etc/binfmt.d", "/run/binfmt.d", "/usr/local/lib/binfmt.d"):
        if os.path.isdir(directory) and any(n.endswith(".conf") for n in os.listdir(directory)):
            problems.append(f"{directory} holds .conf files")
    try:
        persisted = {line.entry.name: line.entry for line in effective_entries(read_binfmt_d())}
    except (BinfmtError, OSError) as exc:
        problems.append(f"binfmt.d cannot be read: {exc}")
        persisted = {}
    debian = BinfmtMisc(str(DEBIAN_TREE)).state().entries
    if any(persisted.get(e.name) != e for e in debian):
        problems.append("binfmt.d does not hold Debian 12's qemu-user-static entries")
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            if f.read().split() != ["0", "0", "4294967295"]:
                problems.append("this runs in a user namespace")
    except OSError:
        pass
    return problems


def _needs_recording_systemd() -> None:
    problems = _systemd_differences()
    if problems:
        require_or_skip(
            "doctor reads the host's binfmt.d and systemd, which differ from the recording "
            "host's: " + "; ".join(problems)
        )


# -- (a) doctests ----------------------------------------------------------------------


def _needs_sandbox() -> None:
    reason = sandbox_unavailable_reason()
    if reason is not None:
        require_or_skip(f"no private binfmt_misc instance: {reason}")


# What a doctest file needs beyond the repository.
DOCTEST_NEEDS: dict[str, Callable[[], None]] = {
    "quickstart.rst": _needs_recording_host,  # reads /bin/ls "on an x86_64 machine"
    "guides/library-sandbox.txt": _needs_sandbox,
}


def _doctest_files() -> list[Path]:
    return [p for p in [*PAGES, *INCLUDED] if ">>>" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("path", _doctest_files(), ids=_rel)
def test_doctests(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every >>> example of a page runs from the repository root and prints what the page shows."""
    needs = DOCTEST_NEEDS.get(_rel(path))
    if needs is not None:
        needs()
    monkeypatch.chdir(ROOT)
    text = path.read_text(encoding="utf-8")
    test = doctest.DocTestParser().get_doctest(
        text, {"__name__": "__main__"}, _rel(path), str(path), 0
    )
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report: list[str] = []
    try:
        runner.run(test, out=report.append)
    finally:
        test.globs.clear()
    assert runner.failures == 0, "".join(report)
    assert runner.tries > 0


def test_the_guides_have_doctests() -> None:
    """The library guide's examples are doctests, so the collection above really runs them."""
    files = {_rel(p) for p in _doctest_files()}
    assert {"guides/library.rst", "guides/library-sandbox.txt"} <= files


# -- (b) CLI examples ------------------------------------------------------------------


class Example(NamedTuple):
    """One ``$ python -m binfmt …`` command of a console block, and what the page shows."""

    page: str
    line: int
    command: str
    output: tuple[str, ...]
    status: Optional[int]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


_CONSOLE = re.compile(r"^(\s*)\.\. code-block:: console\s*$")


def _console_blocks(text: str) -> Iterator[list[tuple[int, str]]]:
    """The dedented lines (with their 1-based numbers) of every console code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _CONSOLE.match(lines[i])
        i += 1
        if match is None:
            continue
        indent = len(match.group(1))
        body: list[tuple[int, str]] = []
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append((i + 1, line))
            i += 1
        content = [line for _, line in body if line.strip()]
        if not content:
            continue
        margin = min(len(line) - len(line.lstrip()) for line in content)
        block = [(n, line[margin:] if line.strip() else "") for n, line in body]
        while block and not block[-1][1]:
            block.pop()
        while block and not block[0][1]:
            block.pop(0)
        yield block


def _commands(block: list[tuple[int, str]]) -> list[tuple[int, str, list[str]]]:
    commands: list[tuple[int, str, list[str]]] = []
    for number, line in block:
        if line.startswith("$ "):
            commands.append((number, line[2:], []))
        elif commands and commands[-1][1].endswith("\\") and not commands[-1][2]:
            # A command continued on the next line (a backslash before the newline).
            first, command, output = commands[-1]
            commands[-1] = (first, command[:-1] + " " + line.strip(), output)
        elif commands:
            commands[-1][2].append(line)
    return commands


def _procfs(argv: list[str]) -> Optional[str]:
    if "--procfs" in argv:
        index = argv.index("--procfs")
        if index + 1 < len(argv):
            return argv[index + 1]
    return None


def _option(argv: list[str], name: str) -> Optional[str]:
    if name in argv and argv.index(name) + 1 < len(argv):
        return argv[argv.index(name) + 1]
    return None


def _is_rerun(argv: list[str]) -> bool:
    """A command the test may run: binfmt, against a tree under tests/data, changing nothing."""
    if argv[:3] != ["python", "-m", "binfmt"] or len(argv) < 4 or ">" in argv:
        return False  # (a redirection writes a file)
    procfs = _procfs(argv)
    if procfs is None:
        # Another node's (issue 15): its state a document under tests/data, or none (--host).
        node = _option(argv, "--state") or ("tests/data/" if "--host" in argv else None)
        if node is None or not node.startswith("tests/data/"):
            return False
    elif not procfs.startswith("tests/data/"):
        return False
    command = argv[3]
    if command in DRY_RUN_ONLY:
        return "--dry-run" in argv
    if command == "export" and "--dir" in argv:
        return "--dry-run" in argv
    if command in ("status", "metrics") and "--output" in argv:
        return False
    if command == "metrics" and "--verify" in argv:
        return False  # runs probes through this machine's binfmt_misc
    return command in READ_ONLY


def collect_examples() -> list[Example]:
    """Every re-runnable CLI example of every page, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in _console_blocks(text):
            commands = _commands(block)
            for k, (number, command, output) in enumerate(commands):
                if not _is_rerun(shlex.split(command)):
                    continue
                status = None
                if k + 1 < len(commands) and commands[k + 1][1] == "echo $?":
                    status = int(commands[k + 1][2][0])
                while output and not output[-1]:
                    output.pop()
                found.append(Example(_rel(page), number, command, tuple(output), status))
    return found


EXAMPLES = collect_examples()


def _normalise(lines: list[str], repo: str) -> list[str]:
    """Take out what differs between hosts: kernel release, repository path, timings."""
    out = []
    for line in lines:
        line = line.rstrip().replace(repo, "<repo>")
        line = re.sub(r"^(host: \S+, kernel )\S+,", r"\1<release>,", line)
        line = re.sub(r'^(\s*"kernel": )".*"', r'\1"<release>"', line)
        line = re.sub(r'^(\s*"version": )"#.*"', r'\1"<uname -v>"', line)
        line = re.sub(r"\bin \d+\.\d+s\b", "in <t>s", line)
        line = re.sub(r'^(\s*"seconds": )[0-9.]+', r"\1<t>", line)
        line = re.sub(
            r'^(binfmt_host_info\{machine="[^"]*",kernel=)"[^"]*"', r'\1"<release>"', line
        )
        out.append(line)
    return out


def _matches(expected: list[str], actual: list[str], ordered: bool) -> bool:
    """Whether ``actual`` is what ``expected`` shows, a lone ``…`` line standing for any lines."""
    cut = [line.strip() == ELLIPSIS for line in expected]
    if not ordered:
        shown = Counter(line for line, gap in zip(expected, cut) if not gap)
        got = Counter(actual)
        return not shown - got if any(cut) else shown == got
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if gap else re.escape(line) + "\n" for line, gap in zip(expected, cut)
    )
    return re.fullmatch(pattern, "".join(line + "\n" for line in actual)) is not None


def _prepare(example: Example) -> None:
    """Skip (or, in CI, fail) where the host cannot reproduce what the page recorded."""
    _needs_recording_host()
    _needs_debian_qemu()
    argv = shlex.split(example.command)
    if any(arg.startswith("tests/.cache/") for arg in argv):
        _needs_debian_binaries()
    if argv[3] == "doctor":
        _needs_recording_systemd()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_cli_example(example: Example, tmp_path: Path) -> None:
    """A CLI example of the docs prints, today, what the page shows, and exits as it says."""
    _prepare(example)
    argv = shlex.split(example.command)
    procfs = _procfs(argv)
    copy = None
    if procfs is not None and os.path.isdir(ROOT / procfs):
        copy = str(tmp_path / "procfs" / os.path.basename(procfs))
        shutil.copytree(ROOT / procfs, copy, symlinks=True)
        argv[argv.index("--procfs") + 1] = copy
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    printed = done.stdout
    if copy is not None and procfs is not None:
        printed = printed.replace(copy, procfs)
    actual = _normalise(printed.rstrip("\n").split("\n") if printed else [], str(ROOT))
    expected = _normalise(list(example.output), RECORDED_IN)
    ordered = argv[3] != "scan"  # a scan lists files in directory order, which varies
    diff = "\n".join(difflib.unified_diff(expected, actual, "page", "now", lineterm=""))
    assert _matches(expected, actual, ordered), f"{example.id}: $ {example.command}\n{diff}"
    if example.status is not None:
        assert done.returncode == example.status, f"{example.id}: exit status"


def test_examples_cover_every_read_only_command() -> None:
    """The pages re-run examples of every command that can run against a captured tree."""
    commands = {shlex.split(e.command)[3] for e in EXAMPLES}
    assert set(READ_ONLY) | set(DRY_RUN_ONLY) <= commands


def test_ellipsis_matching() -> None:
    """A lone … line matches any run of lines, in order or not; other lines must all be there."""
    assert _matches(["a", "…", "d"], ["a", "b", "c", "d"], ordered=True)
    assert _matches(["a", "…", "d"], ["a", "d"], ordered=True)
    assert not _matches(["a", "…", "d"], ["a", "b"], ordered=True)
    assert not _matches(["a", "b"], ["b", "a"], ordered=True)
    assert _matches(["a", "b"], ["b", "a"], ordered=False)
    assert _matches(["b", "…"], ["a", "b", "c"], ordered=False)
    assert not _matches(["a", "b"], ["a", "b", "c"], ordered=False)


def test_normalise_keeps_all_but_host_details() -> None:
    """Kernel release, repository path and timings are normalised; nothing else changes."""
    lines = [
        "host: x86_64, kernel 6.1.0-18-amd64, runs natively: linux/amd64",
        '    "kernel": "6.1.0-18-amd64",',
        "/src/binfmt/tests/.cache/debian/arm64: 12 files examined in 0.13s",
        '  "seconds": 0.013',
        "binfmt_misc: mounted at tests/data/procfs/empty, enabled",
    ]
    assert _normalise(lines, "/src/binfmt") == [
        "host: x86_64, kernel <release>, runs natively: linux/amd64",
        '    "kernel": "<release>",',
        "<repo>/tests/.cache/debian/arm64: 12 files examined in <t>s",
        '  "seconds": <t>',
        "binfmt_misc: mounted at tests/data/procfs/empty, enabled",
    ]


# -- (c) the reference pages cover the code --------------------------------------------


def test_every_doctor_code_is_documented() -> None:
    """docs/doctor.rst has a section for each code doctor emits, with its severity, and no other."""
    text = (DOCS / "doctor.rst").read_text(encoding="utf-8")
    sections = re.findall(r"^``([a-z0-9-]+)``\n[-~^]+\n\n:Severity: (\w+)$", text, re.MULTILINE)
    documented = dict(sections)
    assert len(documented) == len(sections), "a code is documented twice"
    assert documented == CODES


def test_every_finding_code_is_listed() -> None:
    """docs/findings.rst lists each code of the registry with its severity, and no other."""
    from binfmt.findings import CODES as ALL

    text = (DOCS / "findings.rst").read_text(encoding="utf-8")
    rows = re.findall(r"^   \* - ``([a-z0-9-]+)``\n     - (\w+)$", text, re.MULTILINE)
    assert dict(rows) == {code: severity for code, (severity, _) in ALL.items()}
    assert len(rows) == len(ALL)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _cli_sections() -> dict[str, str]:
    text = (DOCS / "cli.rst").read_text(encoding="utf-8")
    parts = re.split(r"^``([a-z]+)``\n-+\n", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_cli_reference_covers_every_command_and_option() -> None:
    """docs/cli.rst has a section per command that names every one of its options."""
    sections = _cli_sections()
    for name, parser in _subcommands().items():
        assert name in sections, f"no section for {name}"
        for action in parser._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                assert f"``{option}" in sections[name], f"{name}: {option} is not documented"
