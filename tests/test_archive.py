"""scan --tar: an image's archive judged without extracting it, as its extracted tree is.

Equality with ``scan`` of the tree ``tar -xf`` extracts (GNU tar, as root),
on real Debian roots and on a hostile archive (hard links, symlink chains and
loops, entries and links escaping the root with ``..`` or absolute paths,
device nodes and FIFOs); OCI layers with whiteouts against the tree they
describe; compressed streams; and truncated, corrupt and random archives,
which give a verdict or a one-line error, never a traceback or a file read
outside the archive.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Optional

import pytest

from binfmt import Entry, Host, State, qemu
from binfmt.archive import ArchiveRoot, read_archive
from binfmt.errors import ArchiveError
from binfmt.scan import ScanReport, scan, scan_archive
from binfmt.testing import require_or_skip

from .debian import ARCHES, debian_root

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
NATIVE = qemu.get("x86_64").header(2)
ARM = qemu.get("aarch64").header(2)


def state_for(root: Optional[Path] = None) -> State:
    """QEMU entries for arm64 (F, on this machine) and riscv64 (no F: looked up in the root)."""
    qemu_file = shutil.which("qemu-aarch64-static") or sys.executable
    return State(
        "/fake",
        True,
        True,
        (
            qemu.get("aarch64").to_entry(qemu_file, "F"),
            qemu.get("riscv64").to_entry("/usr/bin/qemu-riscv64-static", ""),
            Entry("sh-ext", "/bin/sh", magic=b"#!/x"),
        ),
    )


def comparable(report: ScanReport, root_label: str) -> dict[str, Any]:
    """The report's document, with the root's name taken out of every message."""
    doc = report.to_dict()
    for key in ("root", "seconds", "warnings", "warnings_total"):
        doc.pop(key)
    for failure in doc["failures"]:
        failure["message"] = failure["message"].replace(f" inside {root_label}", " inside ROOT")
        failure["message"] = failure["message"].replace(root_label, "")
    return doc


def assert_same(tree: Path, archives: list[Any], state: State, **kw: Any) -> ScanReport:
    extracted = scan(str(tree), state=state, host=X86, jobs=1, **kw)
    archived = scan_archive(archives, state=state, host=X86, **kw)
    label = (
        ArchiveRoot(read_archive(archives)).label
        if all(isinstance(a, str) for a in archives)
        else archived.root
    )
    assert comparable(archived, label) == comparable(extracted, str(tree))
    return archived


def gnu_tar(*argv: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("tar") is None:
        require_or_skip("GNU tar is not installed")
    return subprocess.run(["tar", *argv], capture_output=True, check=False)


# -- real roots ------------------------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.parametrize("arch", ["amd64", *sorted(ARCHES)])
def test_debian_roots(arch: str, tmp_path: Path) -> None:
    """Each Debian root, archived by GNU tar: scan --tar == scan, default and --all."""
    root = debian_root(arch)
    archive = tmp_path / "root.tar"
    assert gnu_tar("-C", str(root), "-cf", str(archive), ".").returncode == 0
    for all_files in (False, True):
        report = assert_same(root, [str(archive)], state_for(), all_files=all_files)
        assert report.examined > 0


@pytest.mark.qemu
def test_debian_roots_as_layers_and_compressed(tmp_path: Path) -> None:
    """Two roots as two layers (the upper wins where both have a file), gzip and xz."""
    lower, upper = debian_root("arm64"), debian_root("amd64")
    merged = tmp_path / "merged"
    shutil.copytree(lower, merged, symlinks=True)
    shutil.copytree(upper, merged, symlinks=True, dirs_exist_ok=True)
    layers = []
    for i, (root, opener) in enumerate(((lower, gzip.open), (upper, lzma.open))):
        plain = tmp_path / f"layer{i}.tar"
        assert gnu_tar("-C", str(root), "-cf", str(plain), ".").returncode == 0
        packed = tmp_path / f"layer{i}.tar.z"
        with opener(packed, "wb") as out:  # type: ignore[operator]
            out.write(plain.read_bytes())
        layers.append(str(packed))
    assert_same(merged, layers, state_for())


# -- a hostile archive ------------------------------------------------------------------


def _member(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    mode: int = 0o755,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def hostile_archive(path: Path) -> None:
    script = b"#!/bin/sh\necho\n"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        _member(tar, "bin", tarfile.DIRTYPE)
        _member(tar, "bin/sh", data=NATIVE)
        _member(tar, "bin/arm", data=ARM)
        _member(tar, "bin/script", data=script)
        _member(tar, "bin/hard", tarfile.LNKTYPE, link="bin/arm")  # a hard link
        _member(tar, "bin/hard-to-nothing", tarfile.LNKTYPE, link="bin/missing")
        _member(tar, "bin/hard-to-dir", tarfile.LNKTYPE, link="bin")
        # symlink chains and loops, resolved inside the archive
        _member(tar, "usr/bin/a", tarfile.SYMTYPE, link="b")
        _member(tar, "usr/bin/b", tarfile.SYMTYPE, link="../../bin/c")
        _member(tar, "bin/c", tarfile.SYMTYPE, link="/bin/sh")
        _member(tar, "usr/bin/loop1", tarfile.SYMTYPE, link="loop2")
        _member(tar, "usr/bin/loop2", tarfile.SYMTYPE, link="loop1")
        _member(tar, "usr/bin/via-chain", data=b"#!/usr/bin/a\n")
        _member(tar, "usr/bin/via-loop", data=b"#!/usr/bin/loop1\n")
        # links that climb out of the root stay in it
        _member(tar, "etc/escape", tarfile.SYMTYPE, link="../../../../../../usr/bin/env")
        _member(tar, "etc/absolute", tarfile.SYMTYPE, link="/../../bin/sh")
        _member(tar, "usr/bin/escapes", data=b"#!/etc/escape\n")
        _member(tar, "usr/bin/absolute", data=b"#!/etc/absolute\n")
        _member(tar, "usr/bin/host-python", data=b"#!" + sys.executable.encode() + b"\n")
        # dynamic programs: loaders looked up inside
        _member(tar, "usr/bin/dyn-missing", data=_dynamic(b"/lib/ld-missing.so\0"))
        _member(tar, "usr/bin/dyn-ok", data=_dynamic(b"/bin/c\0"))
        _member(tar, "usr/bin/riscv", data=qemu.get("riscv64").header(2))
        # special files
        _member(tar, "dev/null", tarfile.CHRTYPE, mode=0o666)
        _member(tar, "dev/sda", tarfile.BLKTYPE, mode=0o660)
        _member(tar, "run/fifo", tarfile.FIFOTYPE, mode=0o777)
        # not programs, or not executable
        _member(tar, "usr/share/data", data=b"text", mode=0o644)
        _member(tar, "usr/share/elf-noexec", data=ARM, mode=0o644)
        _member(tar, "usr/bin/empty", data=b"")
        # names GNU tar refuses (it strips a leading /, skips a ..)
        _member(tar, "/abs/prog", data=ARM)
        _member(tar, "../escaped", data=NATIVE)
        _member(tar, "usr/../../escaped2", data=NATIVE)
        # a name replaced later in the stream
        _member(tar, "usr/bin/twice", data=ARM)
        _member(tar, "usr/bin/twice", data=NATIVE)
        # a long name (GNU 'L' member) and a long link
        long = "usr/lib/" + "d" * 120 + "/prog"
        _member(tar, long, data=ARM)
        _member(tar, "usr/bin/long-link", tarfile.SYMTYPE, link="/" + long)
        _member(tar, "usr/bin/via-long", data=b"#!/usr/bin/long-link\n")


def _dynamic(interp: bytes) -> bytes:
    from .test_elf import make_elf

    return make_elf([(3, interp)])


@pytest.mark.timeout(120)
def test_hostile_archive_equals_its_extraction(tmp_path: Path) -> None:
    """Everything GNU tar makes of a hostile archive, scan --tar makes of it too."""
    if os.geteuid() != 0:
        require_or_skip("extracting device nodes needs root")
    archive = tmp_path / "hostile.tar"
    hostile_archive(archive)
    tree = tmp_path / "tree"
    tree.mkdir()
    done = gnu_tar("-C", str(tree), "-xf", str(archive))
    assert b"Member name contains '..'" in done.stderr  # GNU tar leaves those out, as we do
    assert not (tmp_path / "escaped").exists()
    for all_files in (False, True):
        report = assert_same(tree, [str(archive)], state_for(), all_files=all_files)
    assert report.skipped[1] == ("special files", 3)
    warnings = " ".join(report.warnings)
    for left_out in ("../escaped", "usr/../../escaped2", "bin/hard-to-nothing", "bin/hard-to-dir"):
        assert left_out in warnings
    results = {r.path: r for r in _results(archive)}
    assert results["/bin/hard"].kind == "emulated"  # the hard link shares bin/arm
    assert results["/usr/bin/via-chain"].kind == "script"
    assert results["/usr/bin/via-loop"].reason == "script-interpreter-missing"
    assert "Too many levels of symbolic links" in results["/usr/bin/via-loop"].message
    # Climbing out of the root lands inside it: /usr/bin/env is not in the archive,
    # /bin/sh is the archive's own.
    assert results["/usr/bin/escapes"].reason == "script-interpreter-missing"
    assert results["/usr/bin/absolute"].kind == "script"
    # This machine's python is not in the archive.
    assert results["/usr/bin/host-python"].reason == "script-interpreter-missing"
    assert results["/usr/bin/dyn-missing"].reason == "loader-missing"
    assert results["/usr/bin/dyn-ok"].kind == "native"
    assert results["/usr/bin/riscv"].reason == "interpreter-missing"  # no F: not in the root
    assert results["/usr/bin/twice"].kind == "native"
    assert results["/usr/bin/via-long"].kind == "script"


def _results(archive: Path, **kw: Any) -> list[Any]:
    found: list[Any] = []
    scan_archive([str(archive)], state=state_for(), host=X86, on_result=found.append, **kw)
    return found


# -- layers and whiteouts ------------------------------------------------------------------


def test_layers_and_whiteouts(tmp_path: Path) -> None:
    """OCI layers: a whiteout deletes a lower file or tree, an opaque marker empties a
    directory of what lower layers put there, an upper file replaces a lower one."""
    lower, upper = tmp_path / "lower.tar", tmp_path / "upper.tar"
    with tarfile.open(lower, "w") as tar:
        for name in ("bin/a", "bin/b", "opt/tool/x", "opt/tool/y", "keep/z", "etc/sh"):
            _member(tar, name, data=ARM)
        _member(tar, "lib/dir/inner", data=ARM)
    with tarfile.open(upper, "w") as tar:
        _member(tar, "bin/.wh.a")  # deletes bin/a
        _member(tar, "lib/.wh.dir")  # deletes the whole lib/dir tree
        _member(tar, "opt/tool/.wh..wh..opq")  # opaque: x and y go ...
        _member(tar, "opt/tool/new", data=NATIVE)  # ... new stays
        _member(tar, "etc/sh", data=NATIVE)  # replaces
        _member(tar, "keep/.wh.nothing-there")  # deletes nothing
    expected = tmp_path / "expected"
    for name, data in (
        ("bin/b", ARM),
        ("keep/z", ARM),
        ("opt/tool/new", NATIVE),
        ("etc/sh", NATIVE),
    ):
        path = expected / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755)
    (expected / "lib").mkdir()
    report = assert_same(expected, [str(lower), str(upper)], state_for())
    assert report.examined == 4
    # One layer alone: its whiteouts are markers, not files.
    alone = scan_archive([str(upper)], state=state_for(), host=X86)
    assert alone.examined == 2


# -- broken archives ------------------------------------------------------------------------


def _cli(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "binfmt", *argv],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(300)
def test_truncated_corrupt_and_random_archives(tmp_path: Path) -> None:
    """Cut anywhere, flipped bytes, garbage: a report or ArchiveError, never anything else;
    through the command line, exit 1 with one line on stderr."""
    archive = tmp_path / "hostile.tar"
    hostile_archive(archive)
    data = archive.read_bytes()
    rng = random.Random(15)
    outcomes = {"report": 0, "error": 0}
    cuts = sorted({*range(0, len(data), 512), *(rng.randrange(len(data)) for _ in range(60))})
    for cut in cuts:
        outcomes[_outcome(data[:cut])] += 1
    for _ in range(150):
        broken = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        outcomes[_outcome(bytes(broken))] += 1
    for size in (1, 511, 512, 1024, 5000):
        outcomes[_outcome(bytes(rng.randrange(256) for _ in range(size)))] += 1
    print("\noutcomes:", outcomes)
    assert outcomes["report"] > 10 and outcomes["error"] > 10
    for stream in (data[:3000], b"\x1f\x8b" + data[:100], b"garbage" * 100):
        done = _cli("scan", "--tar", "-", "--host", "linux/amd64", stdin=stream)
        assert done.returncode == 1, done
        assert done.stderr.count(b"\n") == 1 and done.stderr.startswith(b"binfmt: error: -: ")
        assert b"Traceback" not in done.stderr


def _outcome(data: bytes) -> str:
    for wrap in (lambda d: d, gzip.compress):
        try:
            scan_archive([io.BytesIO(wrap(data))], state=state_for(), host=X86, all_files=True)
        except ArchiveError as exc:
            assert "\n" not in str(exc)
            return "error"
    return "report"


def test_zstd_without_support_says_how(tmp_path: Path) -> None:
    """Without compression.zstd (before Python 3.14): the error says to pipe zstd -dc."""
    try:
        import compression.zstd  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        require_or_skip("this Python reads zstd")
    done = _cli(
        "scan", "--tar", "-", "--host", "linux/amd64", stdin=b"\x28\xb5\x2f\xfd" + bytes(64)
    )
    assert done.returncode == 1
    assert b"zstd -dc FILE | binfmt scan --tar -" in done.stderr


def test_scan_tar_cli(tmp_path: Path) -> None:
    """scan --tar FILE and --tar - give the same JSON; ROOTFS and --tar together are refused."""
    archive = tmp_path / "hostile.tar"
    hostile_archive(archive)
    by_file = _cli("scan", "--json", "--tar", str(archive), "--host", "linux/amd64")
    by_pipe = _cli(
        "scan", "--json", "--tar", "-", "--host", "linux/amd64", stdin=archive.read_bytes()
    )
    assert by_file.returncode == by_pipe.returncode == 1
    import json

    a, b = json.loads(by_file.stdout), json.loads(by_pipe.stdout)
    for doc in (a, b):
        doc.pop("seconds"), doc.pop("root")
        for f in doc["failures"]:
            f["message"] = f["message"].replace(str(archive), "standard input")
    assert a == b
    assert b"left out" in by_file.stderr  # the members GNU tar would refuse, as warnings
    both = _cli("scan", "--tar", str(archive), str(tmp_path))
    assert both.returncode == 2 and b"one of them" in both.stderr
