"""predict() at the rules' edges, without a kernel (the kernel tests pin the same rules live).

Each case here is one that a differential test against ``execve`` found or
that the mutation run (``tests/tools/mutants.py``) showed was not pinned
down anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binfmt import Entry, Host, State
from binfmt.elf import ElfHeader
from binfmt.prediction import predict

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
NATIVE = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00" + bytes(44)


def write(path: Path, data: bytes, mode: int = 0o755) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def state_of(*entries: Entry) -> State:
    return State(path="/fake", mounted=True, enabled=True, entries=tuple(entries))


def _scripts(tmp_path: Path, count: int, last: str) -> str:
    """``count`` #! scripts, each naming the next, the last naming ``last``."""
    for k in range(count):
        nxt = str(tmp_path / f"s{k + 1}") if k + 1 < count else last
        write(tmp_path / f"s{k}", b"#!" + nxt.encode() + b"\n")
    return str(tmp_path / "s0")


def test_a_gone_f_interpreter_counts_toward_the_rewrite_limit(tmp_path: Path) -> None:
    """The rewrite to an F interpreter that was deleted still counts: the 6th is ELOOP.

    Found by tests/test_kernel_chains.py: the kernel runs the file it opened,
    but only after exec_binprm()'s depth check.
    """
    gone = str(tmp_path / "gone")
    entry = Entry("f", gone, magic=b"\x01GONE", flags="F")
    write(tmp_path / "m", b"\x01GONE\n")
    for scripts, errno in ((4, None), (5, "ELOOP")):
        first = _scripts(tmp_path / str(scripts), scripts, str(tmp_path / "m"))
        v = predict(first, state=state_of(entry), host=X86)
        assert v.errno == errno, (scripts, v)
        codes = [f.code for f in v.findings]
        assert "interpreter-gone" in codes


def test_a_gone_f_interpreter_after_an_o_entry_is_enoexec(tmp_path: Path) -> None:
    """An O entry whose interpreter is rewritten to a gone F interpreter: ENOEXEC (5.8+)."""
    gone = str(tmp_path / "gone")
    second = write(tmp_path / "second", b"\x01TWO\n")
    entries = (
        Entry("o", second, magic=b"\x01ONE", flags="O"),
        Entry("f", gone, magic=b"\x01TWO", flags="F"),
    )
    v = predict(write(tmp_path / "first", b"\x01ONE\n"), state=state_of(*entries), host=X86)
    assert v.errno == "ENOEXEC"
    assert v.problem is not None and v.problem.code == "open-binary-rewrite"


def test_five_rewrites_run_and_six_loop(tmp_path: Path) -> None:
    """exec_binprm(): five interpreter rewrites run, the sixth is ELOOP."""
    native = write(tmp_path / "native", NATIVE)
    for count, errno in ((5, None), (6, "ELOOP")):
        v = predict(_scripts(tmp_path / str(count), count, native), state=state_of(), host=X86)
        assert v.errno == errno, (count, v)


def test_forty_symlinks_resolve_and_the_41st_loops(tmp_path: Path) -> None:
    """resolve(): the kernel's MAXSYMLINKS, 40 links in one lookup, then ELOOP."""
    target = write(tmp_path / "native", NATIVE)
    for count, errno in ((40, None), (41, "ELOOP")):
        link = target
        for k in range(count):
            nxt = tmp_path / f"{count}-{k}"
            nxt.symlink_to(os.path.basename(link))  # relative: the same inside the root
            link = str(nxt)
        assert predict(link, state=state_of(), host=X86).errno == errno
        rooted = predict(link, state=state_of(), host=X86, rootfs=str(tmp_path))
        assert rooted.errno == errno, count


def test_without_root_the_exec_permission_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root: an exec bit is not enough, access(X_OK) must agree (and here it does)."""
    path = write(tmp_path / "native", NATIVE, 0o755)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert predict(path, state=state_of(), host=X86).errno is None
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    v = predict(path, state=state_of(), host=X86)
    assert v.errno == "EACCES" and v.problem is not None and v.problem.code == "not-executable"


def test_interpreter_dynamic_only_for_a_dynamic_native_interpreter(tmp_path: Path) -> None:
    """The interpreter-dynamic warning names an ELF interpreter with a loader, not a script."""
    from .argv_reporter import dynamic

    loader = write(tmp_path / "ld.so", NATIVE)
    dyn = write(tmp_path / "dyn-qemu", dynamic(loader))
    script = write(tmp_path / "script-qemu", b"#!" + loader.encode() + b"\n")
    for interp, warned in ((dyn, True), (script, False)):
        entry = Entry("e", interp, magic=b"\x01DYN")
        v = predict(write(tmp_path / "file", b"\x01DYN\n"), state=state_of(entry), host=X86)
        assert v.errno is None, v
        assert ("interpreter-dynamic" in [f.code for f in v.findings]) is warned, interp


def test_an_emulated_binary_without_its_loader_starts_the_emulator(tmp_path: Path) -> None:
    """execve of a foreign dynamic binary works (QEMU starts); its missing loader is the error."""
    from binfmt import qemu

    from .test_elf import make_elf

    qemu_path = write(tmp_path / "host" / "qemu-aarch64", NATIVE)
    entry = qemu.get("aarch64").to_entry(qemu_path, "F")
    root = tmp_path / "root"
    binary = write(
        root / "bin" / "app", make_elf([(3, b"/lib/ld-linux-aarch64.so.1\0")], machine=183)
    )
    v = predict(binary, state=state_of(entry), host=X86, rootfs=str(root))
    assert (v.handler, v.errno, v.interpreter) == ("binfmt_misc", None, qemu_path)
    assert v.problem is not None and v.problem.code == "loader-missing"
    assert not v.runs


def test_no_handler_names_the_target_or_the_machine(tmp_path: Path) -> None:
    """A foreign binary with no entry: the message names its QEMU target, else its machine."""
    from binfmt import qemu

    known = write(tmp_path / "arm64", qemu.get("aarch64").header(2))
    odd = NATIVE[:18] + (0x1234).to_bytes(2, "little") + NATIVE[20:]  # no QEMU target
    unknown = write(tmp_path / "odd", odd)
    machine = ElfHeader.decode(odd).machine_name
    for path, name in ((known, "aarch64"), (unknown, machine)):
        v = predict(path, state=state_of(), host=X86)
        assert v.errno == "ENOEXEC" and v.problem is not None
        assert v.problem.code == "no-handler" and v.problem.message.startswith(name), v.problem


def test_resolve_without_following_the_last_symlink(tmp_path: Path) -> None:
    """follow=False: symlinks on the way are followed inside the root, the last one is not."""
    from binfmt.rootfs import resolve

    (tmp_path / "real").mkdir()
    (tmp_path / "dir").symlink_to("/real")  # absolute: inside the root
    (tmp_path / "real" / "file").write_bytes(b"")
    (tmp_path / "real" / "last").symlink_to("file")
    assert resolve(str(tmp_path), "/dir/last", follow=False) == str(tmp_path / "real" / "last")
    assert resolve(str(tmp_path), "/dir/last") == str(tmp_path / "real" / "file")


def test_another_nodes_f_emulator_starts_and_the_guest_loader_is_judged_in_the_root(
    tmp_path: Path,
) -> None:
    """this_machine=False, F entry: the node's kernel holds the emulator, so the exec
    starts (no errno) whatever this machine has at that path; the guest binary's own
    loader is still looked up in the root, and its absence is the problem."""
    from binfmt import qemu

    from .test_elf import make_elf

    entry = qemu.get("aarch64").to_entry("/nowhere/on/this/machine/qemu-aarch64", "F")
    root = tmp_path / "root"
    binary = write(
        root / "bin" / "app", make_elf([(3, b"/lib/ld-linux-aarch64.so.1\0")], machine=183)
    )
    v = predict(binary, state=state_of(entry), host=X86, rootfs=str(root), this_machine=False)
    assert (v.handler, v.errno, v.entry) == ("binfmt_misc", None, entry.name)
    assert v.problem is not None and v.problem.code == "loader-missing", v.findings
    write(root / "lib" / "ld-linux-aarch64.so.1", b"loader")
    v = predict(binary, state=state_of(entry), host=X86, rootfs=str(root), this_machine=False)
    assert v.runs and v.problem is None, v.findings


def test_another_node_needs_its_state_and_its_host(tmp_path: Path) -> None:
    """Without the node's state or host there is nothing to predict from: refused, named."""
    from binfmt.errors import InvalidValue

    path = write(tmp_path / "f", NATIVE)
    for given in ({}, {"state": state_of()}, {"host": X86}):
        with pytest.raises(InvalidValue, match="another node needs its state and host"):
            predict(path, this_machine=False, **given)
    assert predict(path, state=state_of(), host=X86, this_machine=False).handler == "native"


def test_the_state_and_host_given_are_used_and_the_defaults_read_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A given state and host are used as given; without them, this machine's are read."""
    from binfmt import prediction
    from binfmt.host import Host as HostClass

    from .test_elf import make_elf

    entry = Entry("pinned-by-this-test", "/bin/true", magic=b"\x01PIN")
    pinned = write(tmp_path / "pinned", b"\x01PIN\n")
    assert predict(pinned, state=state_of(entry), host=X86).entry == entry.name
    arm64_static = write(tmp_path / "arm64", make_elf([], machine=183))
    arm64 = Host.for_platform("linux/arm64")
    assert predict(arm64_static, state=state_of(), host=arm64).handler == "native"

    class Machine:
        def __init__(self, path: str = "") -> None:
            pass

        def state(self) -> State:
            return state_of(entry)

    monkeypatch.setattr(prediction, "BinfmtMisc", Machine)
    monkeypatch.setattr(HostClass, "detect", classmethod(lambda cls, *a, **k: arm64))
    assert predict(pinned).entry == entry.name
    assert predict(arm64_static).handler == "native"
