"""scan: agreement with predict(), real Debian roots, hostile trees, the compiled matcher."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binfmt import BinfmtMisc, Entry, EntryType, Host, State, qemu
from binfmt.cli import main
from binfmt.matcher import Matcher
from binfmt.prediction import Verdict, predict
from binfmt.scan import FileResult, scan
from binfmt.testing import require_or_skip

from .debian import debian_root

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
DEBIAN_TREE = Path(__file__).parent / "data" / "procfs" / "debian-qemu-user-static"


def debian_state() -> State:
    return BinfmtMisc(str(DEBIAN_TREE)).state()


def write(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def results_of(root: Path, state: State, host: Host = X86, **kw: Any) -> dict[str, FileResult]:
    found: dict[str, FileResult] = {}

    def keep(result: FileResult) -> None:
        found[result.path] = result

    scan(str(root), state=state, host=host, on_result=keep, **kw)
    return found


def expected_kind(v: Verdict) -> str:
    """What scan should call a file, from predict()'s verdict on it."""
    if v.runs:
        return {"binfmt_misc": "emulated", "script": "script", "native": "native"}[v.handler]
    if v.handler == "none" and (v.elf is None or not v.elf.is_executable_type):
        return "other"
    return "fails"


def mixed_root(tmp_path: Path) -> Path:
    """A root with one of everything scan distinguishes."""
    root = tmp_path / "root"
    write(root / "bin" / "sh", qemu.get("x86_64").header(2))  # static native "shell"
    write(root / "bin" / "ok.sh", b"#!/bin/sh\necho\n")
    write(root / "bin" / "noint.sh", b"#!/usr/bin/perl\n")
    write(root / "bin" / "arm64", qemu.get("aarch64").header(2))
    write(root / "bin" / "riscv", qemu.get("riscv64").header(2))  # no entry for it below
    write(root / "bin" / "i386", qemu.get("i386").header(3))
    write(root / "bin" / "data", b"just text, but executable\n")
    write(root / "bin" / "notexec", qemu.get("aarch64").header(2), mode=0o644)
    write(root / "lib" / "libx.so", qemu.get("x86_64").header(3), mode=0o644)
    write(root / "bin" / "empty", b"")
    write(root / "bin" / "script-of-script", b"#!/bin/ok.sh\n")
    return root


def test_scan_agrees_with_predict(tmp_path: Path) -> None:
    """For every file of a mixed root, scan's kind equals what predict() says, file by file."""
    root = mixed_root(tmp_path)
    interp = write(tmp_path / "qemu-aarch64", qemu.get("x86_64").header(2))
    state = State("/fake", True, True, (qemu.get("aarch64").to_entry(str(interp), "F"),))
    for all_files in (False, True):
        found = results_of(root, state, all_files=all_files)
        for rel, result in found.items():
            if not os.stat(str(root) + rel).st_mode & 0o111:
                continue  # --all judges these as if executable; predict() says EACCES
            verdict = predict(str(root) + rel, state=state, host=X86, rootfs=str(root))
            assert result.kind == expected_kind(verdict), (rel, result, verdict)
    assert "/bin/notexec" not in results_of(root, state)
    assert results_of(root, state, all_files=True)["/bin/notexec"].kind == "emulated"
    kinds = {r.path: r.kind for r in found.values()}
    assert kinds["/bin/arm64"] == "emulated" and kinds["/bin/riscv"] == "fails"
    assert kinds["/bin/ok.sh"] == "script" and kinds["/bin/noint.sh"] == "fails"
    assert kinds["/bin/data"] == "other" and kinds["/bin/i386"] == "native"


@pytest.mark.qemu
def test_debian_root_counts(tmp_path: Path) -> None:
    """arm64 and armhf busybox and hello in one root, armhf's loader missing: exact counts."""
    root = tmp_path / "image"
    shutil.copytree(debian_root("arm64"), root, symlinks=True)
    armhf = debian_root("armhf")
    shutil.copy2(armhf / "bin" / "busybox", root / "bin" / "busybox-armhf")
    shutil.copy2(armhf / "usr" / "bin" / "hello", root / "usr" / "bin" / "hello-armhf")
    state = debian_state()
    report = scan(str(root), state=state, host=Host.detect())
    counts = {(p, k, v): n for (p, k, v), n in report.summary}
    # busybox, hello, and libc6's ld-linux-aarch64.so.1 and libc.so.6 (both have exec bits)
    assert counts[("linux/arm64", "emulated", "qemu-aarch64")] == 4
    assert counts[("linux/arm/v7", "emulated", "qemu-arm")] == 1  # static busybox
    assert counts[("linux/arm/v7", "fails", "")] == 1  # hello-armhf: no /lib/ld-linux-armhf.so.3
    (hello,) = [f for f in report.failures if f.path == "/usr/bin/hello-armhf"]
    assert (hello.reason, hello.via) == ("loader-missing", "qemu-arm")
    assert "/lib/ld-linux-armhf.so.3" in hello.message
    # The busybox helper scripts want /bin/sh, which this image lacks (no symlink farm).
    assert {f.reason for f in report.failures if f.platform == "script"} == {
        "script-interpreter-missing"
    }
    for rel in ("/usr/bin/hello", "/bin/busybox", "/usr/bin/hello-armhf"):
        verdict = predict(str(root) + rel, state=state, host=Host.detect(), rootfs=str(root))
        kind = "fails" if rel.endswith("armhf") else "emulated"
        assert expected_kind(verdict) == kind


# -- hostile trees ----------------------------------------------------------------------


def test_hostile_tree(tmp_path: Path) -> None:
    """Symlink loops and escapes are not followed, a FIFO is not opened, scan finishes."""
    root = tmp_path / "root"
    write(root / "bin" / "real", qemu.get("x86_64").header(2))
    (root / "loop").symlink_to("loop")
    (root / "up").symlink_to("..")
    (root / "escape").symlink_to("/usr/bin")
    (root / "bin" / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(root / "bin" / "fifo", 0o755)
    (root / "dir-loop").mkdir()
    (root / "dir-loop" / "again").symlink_to("..")
    report = scan(str(root), state=State("/x", False), host=X86)
    skipped = dict(report.skipped)
    assert skipped["symlinks"] == 5 and skipped["special files"] == 1
    assert report.examined == 1


def test_unreadable_and_vanishing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files that cannot be opened, or vanish before they are, are counted, not fatal."""
    root = tmp_path / "root"
    denied = write(root / "denied", b"#!/bin/sh\n")
    gone = write(root / "gone", b"#!/bin/sh\n")
    write(root / "fine", qemu.get("x86_64").header(2))
    real_open: Callable[..., int] = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(denied):
            raise PermissionError(errno.EACCES, "denied", path)
        if os.fspath(path) == str(gone):
            raise FileNotFoundError(errno.ENOENT, "gone", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    report = scan(str(root), state=State("/x", False), host=X86)
    skipped = dict(report.skipped)
    assert (skipped["unreadable"], skipped["vanished"], report.examined) == (1, 1, 1)
    assert report.unreadable == ("/denied",)


def _million_entry_dir() -> Path:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    if base is None:
        require_or_skip("/dev/shm is not writable: a million-entry directory would be slow here")
    return base


def test_million_entry_directory_in_bounded_memory(tmp_path: Path) -> None:
    """A directory of 1,000,000 entries (hard links on tmpfs) scans with < 100 MB resident."""
    count = int(os.environ.get("BINFMT_MILLION", "1000000"))
    top = Path(_million_entry_dir()) / f"binfmt-million-{os.getpid()}"
    try:
        (top / "d").mkdir(parents=True)
        target = top / "f"
        target.write_bytes(b"x")
        d = os.open(top / "d", os.O_RDONLY)
        try:
            for i in range(count):
                os.link(target, str(i), dst_dir_fd=d)
        finally:
            os.close(d)
        # VmHWM is this process image's peak (ru_maxrss would include the parent's
        # memory, inherited through the vfork before exec).
        code = (
            "from binfmt import State, Host\n"
            "from binfmt.scan import scan\n"
            f"r = scan({str(top)!r}, state=State('/x', False), host=Host.detect())\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(r.examined, hwm.split()[1])\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
        ).stdout.split()
        examined, max_rss_kb = int(out[0]), int(out[1])
        assert examined == 0  # none has an exec bit
        assert max_rss_kb < 100_000
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- the matcher -----------------------------------------------------------------------

small_entries = st.lists(
    st.one_of(
        st.builds(
            lambda n, off, magic, mask, on: Entry(
                f"m{n}",
                "/i",
                offset=off,
                magic=magic,
                mask=None if mask is None else (mask * len(magic))[: len(magic)],
                enabled=on,
            ),
            st.integers(0, 99),
            st.integers(0, 8),
            st.binary(min_size=1, max_size=4),
            st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
            st.booleans(),
        ),
        st.builds(
            lambda n, ext, on: Entry(
                f"e{n}", "/i", type=EntryType.EXTENSION, extension=ext, enabled=on
            ),
            st.integers(0, 99),
            st.sampled_from(["a", "b", "zz"]),
            st.booleans(),
        ),
    ),
    max_size=8,
    unique_by=lambda e: e.name,
)


@given(
    entries=small_entries,
    header=st.binary(max_size=14),
    path=st.sampled_from(["/x", "/x.a", "/y.b", "/z.zz", "/d.a/f"]),
    enabled=st.booleans(),
)
def test_matcher_equals_state_lookup(
    entries: list[Entry], header: bytes, path: str, enabled: bool
) -> None:
    """The compiled matcher picks exactly the entry State.lookup (the kernel's order) picks."""
    state = State("/x", True, enabled, tuple(entries))
    assert Matcher(state).lookup(header, path) == state.lookup(header, path)


def test_matcher_groups_qemu_entries() -> None:
    """QEMU tables compile to few mask groups: 34 upstream entries → 10, Debian's 29 → 10."""
    debian = Matcher(debian_state())
    assert (len(debian.entries), debian.groups) == (29, 10)
    upstream = State("/x", True, True, tuple(s.to_entry("/q") for s in qemu.SIGNATURES))
    assert Matcher(upstream).groups == 10


# -- the command ---------------------------------------------------------------------


def test_scan_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_binfmt_misc: Any
) -> None:
    """scan --json: summary and failures; exit 1 when something would fail, 2 on usage errors."""
    root = mixed_root(tmp_path)
    misc = fake_binfmt_misc()
    assert main(["scan", "--json", "--procfs", misc.path, str(root)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "root",
        "examined",
        "summary",
        "failures",
        "failures_total",
        "skipped",
        "unreadable",
        "seconds",
        "warnings",
        "warnings_total",
    }
    assert doc["failures_total"] == len(doc["failures"]) >= 2
    assert {f["path"] for f in doc["failures"]} >= {"/bin/arm64", "/bin/noint.sh"}
    clean = tmp_path / "clean"
    write(clean / "bin" / "ok", qemu.get("x86_64").header(2))
    assert main(["scan", "--procfs", misc.path, str(clean)]) == 0
    assert "nothing would fail" in capsys.readouterr().out
    assert main(["scan", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
