"""scan and predict are one exec model: on random trees, scan's verdict for every file is predict's.

The trees mix what the model decides on: native and foreign ELF (static,
dynamic with and without their loader, ET_REL), scripts (chains, missing
and relative interpreters, symlinked ones, an empty ``#!``), data files,
files without exec bits and files on a ``noexec`` mount; the states mix
QEMU-style magic entries with every flag combination, ``#!`` entries and
extension entries (rewrite chains through binfmt_misc, the O/C rule, the
rewrite limit), disabled entries and a disabled binfmt_misc. The noexec
mount needs a private mount namespace: the property runs in a forked child
that made one (as root, or in a user namespace).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from binfmt import Entry, EntryType, Host, State, qemu
from binfmt.prediction import Verdict, predict
from binfmt.scan import FileResult, scan
from binfmt.testing import require_or_skip

from .test_elf import make_elf

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
PT_INTERP = 3
AARCH64 = 183

# What a file of the tree can be: (name, bytes, whether it gets exec bits by default).
_NATIVE = qemu.get("x86_64").header(2)
_FOREIGN = qemu.get("aarch64").header(2)
_CONTENTS: dict[str, bytes] = {
    "native": _NATIVE,
    "native-dyn": make_elf([(PT_INTERP, b"/lib/ld-x86-64.so.2\0")]),
    "native-dyn-noloader": make_elf([(PT_INTERP, b"/lib/missing-ld.so\0")]),
    "foreign": _FOREIGN,
    "foreign-dyn": make_elf([(PT_INTERP, b"/lib/ld-linux-aarch64.so.1\0")], machine=AARCH64),
    "native-rel": qemu.get("x86_64").header(1),
    "foreign-rel": qemu.get("aarch64").header(1),
    "data": b"just text\n",
    "empty": b"",
    "shebang-empty": b"#!\n",
    "shebang-blank-eof": b"#!   ",
}
_NAMES = sorted(_CONTENTS)


@st.composite
def trees(draw: Any) -> dict[str, Any]:
    """A tree (path → content, mode, on noexec?) and a binfmt_misc state over it."""
    files: dict[str, tuple[bytes, int]] = {}
    count = draw(st.integers(3, 9))
    paths = [f"/bin/f{i}" for i in range(count)]
    for path in paths:
        kind = draw(st.sampled_from([*_NAMES, "script", "script", "script"]))
        if kind == "script":
            target = draw(
                st.sampled_from(
                    [*paths, "/missing/sh", "bin/relative", "/usr/bin/link", "/noexec/tool"]
                )
            )
            arg = draw(st.sampled_from(["", " -x", "  a b  "]))
            data = f"#!{target}{arg}\n".encode()
        else:
            data = _CONTENTS[kind]
        mode = draw(st.sampled_from([0o755, 0o755, 0o755, 0o644, 0o700, 0o111]))
        files[path] = (data, mode)
    files["/noexec/tool"] = (draw(st.sampled_from([_NATIVE, b"#!/bin/f0\n"])), 0o755)
    files["/lib/ld-x86-64.so.2"] = (_NATIVE, 0o755)
    if draw(st.booleans()):
        files["/lib/ld-linux-aarch64.so.1"] = (_FOREIGN, 0o755)
    link = draw(st.sampled_from(["../../bin/f0", "/bin/f1", "/missing"]))
    entries: list[Entry] = []
    interpreters = [*paths, "/noexec/tool", "/usr/bin/link", "/missing/qemu", "/HOST"]
    for kind in draw(
        st.lists(st.sampled_from(["aarch64", "shebang", "ext", "x86_64"]), max_size=4)
    ):
        flags = draw(st.sampled_from(["", "F", "P", "O", "C", "OF", "PF", "CF"]))
        interp = draw(st.sampled_from(interpreters))
        name = f"e{len(entries)}"
        if kind == "ext":
            entry = Entry(name, interp, type=EntryType.EXTENSION, extension="sh", flags=flags)
        elif kind == "shebang":
            entry = Entry(name, interp, magic=b"#!", flags=flags)
        else:
            entry = qemu.get(kind).to_entry(interp, flags, name=name)
        entries.append(attrs.evolve(entry, enabled=draw(st.booleans()) or kind == "aarch64"))
    return {
        "files": files,
        "link": link,
        "entries": entries,
        "enabled": draw(st.sampled_from([True, True, True, False])),
    }


def _build(root: Path, host_dir: Path, spec: dict[str, Any]) -> State:
    for path, (data, mode) in spec["files"].items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/link").symlink_to(spec["link"])
    (root / "bin/sh.sh").write_bytes(b"#!/bin/f0\n")  # matched by extension entries
    (root / "bin/sh.sh").chmod(0o755)
    host_interp = host_dir / "qemu"
    host_interp.write_bytes(_NATIVE)
    host_interp.chmod(0o755)
    entries = []
    for entry in spec["entries"]:
        interp = entry.interpreter
        if interp == "/HOST":
            interp = str(host_interp)
        elif "F" in entry.flags.letters:
            interp = str(root) + interp  # F opens the file on the host, at registration
        entries.append(attrs.evolve(entry, interpreter=interp))
    return State("/fake", True, spec["enabled"], tuple(entries))


def _without_argv(verdict: Optional[Verdict]) -> Optional[Verdict]:
    if verdict is None:
        return None
    return attrs.evolve(verdict, argv=None, next=_without_argv(verdict.next))


def _depth(verdict: Verdict) -> int:
    return 0 if verdict.next is None else 1 + _depth(verdict.next)


def _agree(root: Path, host_dir: Path, state: State, seen: Counter[str]) -> None:
    found: dict[str, FileResult] = {}

    def keep(result: FileResult) -> None:
        found[result.path] = result

    scan(str(root), state=state, host=X86, on_result=keep)
    for path in sorted(found):
        result = found[path]
        verdict = predict(str(root) + path, state=state, host=X86, rootfs=str(root))
        assert result.verdict == _without_argv(verdict), (path, result.verdict, verdict)
        problem = verdict.problem
        outcome = f"{verdict.handler}/{verdict.errno or 'ok'}/{problem.code if problem else '-'}"
        seen[outcome] += 1
        event(outcome)
        event(f"depth {_depth(verdict)}")


def _in_private_mounts(test: Callable[[Path], None]) -> None:
    """Run ``test(dir)`` in a forked child with its own mount namespace (for noexec mounts)."""
    base = Path(tempfile.mkdtemp(prefix="binfmt-one-model-"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        status = 1
        try:
            _private_mounts()
            test(base)
            status = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(base, ignore_errors=True)
    if "cannot make a private noexec mount" in report:
        require_or_skip(report.strip().splitlines()[-1])
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report


_LIBC = ctypes.CDLL(None, use_errno=True)
_MS_NOEXEC, _MS_REC, _MS_PRIVATE = 8, 16384, 1 << 18


def _private_mounts() -> None:
    libc = _LIBC
    clone_newns, clone_newuser = 0x00020000, 0x10000000
    ms_rec, ms_private = _MS_REC, _MS_PRIVATE
    uid, gid = os.getuid(), os.getgid()
    flags = clone_newns if uid == 0 else clone_newns | clone_newuser
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "cannot make a private noexec mount: unshare failed")
    if uid != 0:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
        raise OSError(
            ctypes.get_errno(), "cannot make a private noexec mount: mount --make-rprivate"
        )


def _mount_noexec(path: Path) -> None:
    """A small tmpfs mounted ``noexec`` at ``path`` (in the child's private namespace)."""
    path.mkdir()
    if _LIBC.mount(b"tmpfs", str(path).encode(), b"tmpfs", _MS_NOEXEC, b"size=8m") != 0:
        raise OSError(ctypes.get_errno(), "cannot make a private noexec mount: mount tmpfs")


def _umount(path: Path) -> None:
    if _LIBC.umount2(str(path).encode(), 2) != 0:  # MNT_DETACH
        raise OSError(ctypes.get_errno(), f"umount {path}")


def test_scan_verdicts_are_predicts_on_random_trees() -> None:
    """Every file's verdict in a scan equals predict()'s (but argv, which scan does not follow)."""

    def run(base: Path) -> None:
        seen: Counter[str] = Counter()

        @settings(
            max_examples=80,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(trees())
        def agree(spec: dict[str, Any]) -> None:
            work = Path(tempfile.mkdtemp(dir=base))
            root, host_dir = work / "root", work / "host"
            root.mkdir()
            host_dir.mkdir()
            _mount_noexec(root / "noexec")
            try:
                state = _build(root, host_dir, spec)
                _agree(root, host_dir, state, seen)
            finally:
                _umount(root / "noexec")
                shutil.rmtree(work, ignore_errors=True)

        agree()
        # The strata the property is about were all reached.
        reached = " ".join(seen)
        for needed in (
            "native/ok",
            "binfmt_misc/ok",
            "script/ok",
            "EACCES/not-executable",
            "noexec-mount",
            "ENOEXEC/unknown-format",
            "loader-missing",
            "script-interpreter-missing",
            "ELOOP/too-deep",
            "open-binary-rewrite",
        ):
            assert needed in reached, (needed, seen)
        print("\noutcomes:", dict(seen.most_common()))

    _in_private_mounts(run)


def test_scan_of_an_archive_is_scan_of_its_tree() -> None:
    """scan --tar of a random tree's archive gives every file the verdict scan of the tree
    gives it (the messages name the root differently; nothing else differs)."""
    import tarfile

    from binfmt.archive import ArchiveRoot, read_archive
    from binfmt.scan import scan_archive

    seen: Counter[str] = Counter()

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(trees(), st.booleans())
    def agree(spec: dict[str, Any], all_files: bool) -> None:
        work = Path(tempfile.mkdtemp(prefix="binfmt-one-model-tar-"))
        try:
            root, host_dir = work / "root", work / "host"
            root.mkdir()
            host_dir.mkdir()
            state = _build(root, host_dir, spec)
            archive = work / "root.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(root, arcname=".")
            label = ArchiveRoot(read_archive([str(archive)])).label
            found: dict[str, dict[str, Any]] = {}
            expected: dict[str, dict[str, Any]] = {}
            scan_archive(
                [str(archive)],
                state=state,
                host=X86,
                all_files=all_files,
                on_result=lambda r: found.__setitem__(r.path, _plain(r, label)),
            )
            scan(
                str(root),
                state=state,
                host=X86,
                all_files=all_files,
                jobs=1,
                on_result=lambda r: expected.__setitem__(r.path, _plain(r, str(root))),
            )
            assert found == expected
            for result in found.values():
                seen[f"{result['kind']}/{result['reason']}"] += 1
                event(f"{result['kind']}/{result['reason']}")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    agree()
    reached = " ".join(seen)
    for needed in ("native/None", "emulated/None", "script/None", "fails/loader-missing"):
        assert needed in reached, (needed, seen)
    print("\noutcomes:", dict(seen.most_common()))


def _plain(result: FileResult, root: str) -> dict[str, Any]:
    doc = result.to_dict()
    message = doc["message"].replace(f" inside {root}", " inside ROOT")
    doc["message"] = message.replace(root, "/").replace("//", "/")  # the root itself is "/"
    return doc
