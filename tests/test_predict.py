"""predict() without a kernel: fake states, hostile files, rootfs confinement, the check CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binfmt import Entry, Host, State, qemu
from binfmt.cli import OPTION_FLAGS, main
from binfmt.prediction import HANDLERS, predict
from binfmt.rootfs import resolve

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
EMPTY = State(path="/fake", mounted=True, enabled=True)


def write(path: Path, data: bytes, mode: int = 0o755) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def state_of(*entries: Entry, enabled: bool = True) -> State:
    return State(path="/fake", mounted=True, enabled=enabled, entries=tuple(entries))


# -- hostile and odd files ---------------------------------------------------------


def test_empty_file_is_exec_format_error(tmp_path: Path) -> None:
    """An empty executable file: no handler, ENOEXEC."""
    v = predict(write(tmp_path / "e", b""), state=EMPTY, host=X86)
    assert (v.handler, v.errno, v.runs) == ("none", "ENOEXEC", False)


def test_directory_fifo_and_device_are_eacces_without_blocking(tmp_path: Path) -> None:
    """Directories, FIFOs and devices are refused with EACCES, and a FIFO is never opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o755)
    for path in (str(tmp_path), str(fifo), "/dev/null"):
        v = predict(path, state=EMPTY, host=X86)
        assert v.errno == "EACCES", path
        assert v.findings[0].code in ("not-regular", "not-executable")


def test_missing_and_symlink_loop(tmp_path: Path) -> None:
    """A missing file is ENOENT; a symlink loop is ELOOP."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert predict(str(tmp_path / "nope"), state=EMPTY, host=X86).errno == "ENOENT"
    assert predict(str(loop), state=EMPTY, host=X86).errno == "ELOOP"


def test_file_without_exec_bit(tmp_path: Path) -> None:
    """No exec bit: EACCES before any handler is asked."""
    v = predict(write(tmp_path / "f", b"#!/bin/sh\n", 0o644), state=EMPTY, host=X86)
    assert (v.errno, v.findings[0].code) == ("EACCES", "not-executable")


def test_truncated_elf_headers_never_raise(tmp_path: Path) -> None:
    """Every prefix of a real ELF header gives a verdict, never an exception."""
    head = qemu.get("aarch64").header(2)
    for n in range(len(head) + 1):
        v = predict(write(tmp_path / f"t{n}", head[:n]), state=EMPTY, host=X86)
        assert v.handler in HANDLERS and v.errno == "ENOEXEC"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), native_prefix=st.booleans())
def test_fuzzed_files_give_a_verdict(tmp_path: Path, data: bytes, native_prefix: bool) -> None:
    """Random bytes (some behind a native x86_64 ELF header) always give a verdict."""
    if native_prefix:
        data = qemu.get("x86_64").header(2) + data
    v = predict(write(tmp_path / "fuzz", data), state=EMPTY, host=X86)
    assert v.handler in HANDLERS
    assert v.errno in (None, "ENOEXEC", "ENOENT", "EACCES")
    json.dumps(v.to_dict())


# -- handlers ----------------------------------------------------------------------


def test_newest_match_wins_and_older_ones_are_reported(tmp_path: Path) -> None:
    """Two entries for x86_64 binaries (Rosetta newer than QEMU): Rosetta runs, QEMU is shadowed."""
    interp = write(tmp_path / "emu", qemu.get("x86_64").header(2))
    old = qemu.get("aarch64").to_entry(interp, "F", name="qemu-aarch64")
    new = Entry("rosetta", interp, magic=old.magic, mask=old.mask, flags="OCF")
    target = write(tmp_path / "bin", qemu.get("aarch64").header(2))
    v = predict(target, state=state_of(new, old), host=X86)
    assert v.entry == "rosetta"
    assert [f.code for f in v.findings] == ["shadowed-entry"]


def test_disabled_entry_and_global_switch(tmp_path: Path) -> None:
    """A disabled entry is skipped; with binfmt_misc off, nothing matches."""
    interp = write(tmp_path / "emu", qemu.get("x86_64").header(2))
    entry = qemu.get("aarch64").to_entry(interp, "F")
    target = write(tmp_path / "bin", qemu.get("aarch64").header(2))
    assert predict(target, state=state_of(entry), host=X86).handler == "binfmt_misc"
    off = state_of(entry, enabled=False)
    v = predict(target, state=off, host=X86)
    assert (v.handler, v.errno, v.findings[0].code) == ("none", "ENOEXEC", "no-handler")
    disabled = state_of(attrs.evolve(entry, enabled=False))
    assert predict(target, state=disabled, host=X86).handler == "none"


def test_missing_interpreter_inside_rootfs_without_f(tmp_path: Path) -> None:
    """Without F, an interpreter absent from the container root gives ENOENT, with the fix."""
    root = tmp_path / "root"
    target = write(root / "bin" / "app", qemu.get("aarch64").header(2))
    entry = qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static")
    v = predict(target, state=state_of(entry), host=X86, rootfs=str(root))
    assert v.exec_path == "/bin/app"
    assert v.errno == "ENOENT"
    assert v.findings[-1].code == "interpreter-missing"
    assert "F (--persistent)" in v.findings[-1].fix_text(OPTION_FLAGS)


def test_hijack_of_native_binaries_loops(tmp_path: Path) -> None:
    """An entry matching native x86_64 ELF, with a native interpreter, is reported and loops."""
    native = write(tmp_path / "emu", qemu.get("x86_64").header(2))
    entry = qemu.get("x86_64").to_entry(native, name="evil")
    v = predict(native, state=state_of(entry), host=X86)
    assert v.errno == "ELOOP"
    assert "hijacks-native" in [f.code for f in v.findings]


def test_script_argv_and_missing_script_interpreter(tmp_path: Path) -> None:
    """#!interp arg → argv [interp, arg, path, args…]; a missing interpreter is ENOENT."""
    sh = write(tmp_path / "sh", qemu.get("x86_64").header(2))
    script = write(tmp_path / "s", f"#! {sh}  -e -x \n".encode())
    v = predict(script, state=EMPTY, host=X86, argv=["s", "a1"])
    assert v.argv == (sh, "-e -x", script, "a1")
    broken = write(tmp_path / "b", b"#!/nonexistent/interp\n")
    assert predict(broken, state=EMPTY, host=X86).errno == "ENOENT"


def test_preserve_argv0(tmp_path: Path) -> None:
    """With P the caller's argv[0] follows the path; without it, it is dropped."""
    interp = write(tmp_path / "emu", qemu.get("x86_64").header(2))
    target = write(tmp_path / "bin", qemu.get("aarch64").header(2))
    for flags, expected in (("P", ("NAME", "a1")), ("", ("a1",))):
        entry = qemu.get("aarch64").to_entry(interp, flags)
        v = predict(target, state=state_of(entry), host=X86, argv=["NAME", "a1"])
        assert v.argv == (interp, target, *expected)


# -- rootfs confinement --------------------------------------------------------------


def test_resolve_never_leaves_the_root(tmp_path: Path) -> None:
    """Absolute symlinks restart at the root and '..' stops there: no escape to the host."""
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "abs").symlink_to("/etc/passwd")
    (root / "lib" / "up").symlink_to("../../../../../../etc/passwd")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("inside\n")
    for link in ("abs", "up"):
        assert resolve(str(root), f"/lib/{link}") == str(root / "etc" / "passwd")
    with pytest.raises(FileNotFoundError):
        resolve(str(root), "/lib/../../host-only-file")


def test_resolve_errors(tmp_path: Path) -> None:
    """Loops give ELOOP, a file used as a directory ENOTDIR."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError, match="Too many levels"):
        resolve(str(tmp_path), "/a")
    with pytest.raises(NotADirectoryError):
        resolve(str(tmp_path), "/f/x")


# -- the check command -------------------------------------------------------------


def test_check_cli_json_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_binfmt_misc: Any
) -> None:
    """check --json lists one verdict per file in the documented shape; exit 1 if any fails."""
    misc = fake_binfmt_misc()
    ok = write(tmp_path / "ok", b"#!/bin/sh\n")
    bad = write(tmp_path / "bad", b"\0\0\0\0")
    assert main(["check", "--json", "--procfs", misc.path, ok]) == 0
    assert json.loads(capsys.readouterr().out)[0]["runs"] is True
    assert main(["check", "--json", "--procfs", misc.path, ok, bad]) == 1
    docs = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in docs] == [ok, bad]
    keys = ["path", "elf", "handler", "entry", "interpreter", "argv", "errno", "runs", "findings"]
    assert list(docs[1]) == keys
    assert (docs[1]["errno"], docs[1]["findings"][0]["code"]) == ("ENOEXEC", "unknown-format")


def test_check_cli_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_binfmt_misc: Any
) -> None:
    """Text output: a line per file, findings indented below."""
    misc = fake_binfmt_misc()
    bad = write(tmp_path / "bad", b"\0")
    assert main(["check", "--procfs", misc.path, bad]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{bad}: -: no handler: FAILS (ENOEXEC)"
    assert lines[1].startswith("    error: unknown-format: ")


def test_check_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --rootfs that is not a directory is a usage error (2) with one line."""
    assert main(["check", "--rootfs", str(tmp_path / "nope"), "/bin/sh"]) == 2
    err = capsys.readouterr().err
    assert err == f"binfmt: error: invalid --rootfs '{tmp_path / 'nope'}': not a directory\n"
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2


def test_check_warns_when_not_mounted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without binfmt_misc the prediction still runs, with a warning on stderr."""
    script = write(tmp_path / "s", b"#!/bin/sh\n")
    assert main(["check", "--procfs", str(tmp_path / "none"), script]) == 0
    assert "is not mounted" in capsys.readouterr().err


def test_native_i386_depends_on_the_host(tmp_path: Path) -> None:
    """An i386 binary is native with IA32 emulation, exec format error without it."""
    target = write(tmp_path / "i386", qemu.get("i386").header(2))
    no_ia32 = Host.from_facts("x86_64", "6.18.0", config={})
    assert predict(target, state=EMPTY, host=X86).handler == "native"
    v = predict(target, state=EMPTY, host=no_ia32)
    assert (v.handler, v.errno) == ("none", "ENOEXEC")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
