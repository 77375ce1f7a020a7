"""install / uninstall: plans, all-or-nothing apply, parity with QEMU's script, real emulation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest

from binfmt import BinfmtMisc, Entry, Host, KernelRules, qemu
from binfmt.cli import main
from binfmt.install import InstallError, InstallOptions, apply, plan, plan_uninstall
from binfmt.sandbox import Sandbox

from .debian import debian_root, install_all_argv

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
X86_NO_IA32 = Host.from_facts("x86_64", "6.18.0", config={})
REFERENCE = Path(__file__).resolve().parent / "data" / "reference" / "binfmt-signatures.json"
STATIC = "/usr/bin/qemu-aarch64-static"


def fake_qemu(directory: Path, *targets: str, source: str = STATIC) -> str:
    """Copies of a real static QEMU under the names install looks for."""
    directory.mkdir(parents=True, exist_ok=True)
    for target in targets:
        shutil.copy2(source, directory / f"{qemu.get(target).interpreter_name}-static")
    return str(directory)


def snapshot(misc: BinfmtMisc) -> tuple[object, ...]:
    state = misc.state()
    return state.enabled, tuple((e.name, e.to_status()) for e in state.entries)


# -- planning ---------------------------------------------------------------------------


def test_native_targets_are_skipped_by_real_capability(
    fake_binfmt_misc: Any, tmp_path: Path
) -> None:
    """On x86_64 with IA32 emulation i386 is skipped; without it, qemu-i386 is registered."""
    path = fake_qemu(tmp_path / "q", "i386", "x86_64", "aarch64")
    opts = InstallOptions(qemu_path=path, persistent=True)
    state = fake_binfmt_misc().state()
    with_ia32 = {s.target: s.action for s in plan(["all"], opts, state=state, host=X86).steps}
    assert with_ia32["i386"] == with_ia32["x86_64"] == "skip"
    assert with_ia32["aarch64"] == "register"
    without = {s.target: s.action for s in plan(["all"], opts, state=state, host=X86_NO_IA32).steps}
    assert without["i386"] == "register" and without["x86_64"] == "skip"


def test_all_skips_targets_without_a_binary(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """'all' registers only targets whose QEMU exists; a named missing one is an error."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    opts = InstallOptions(qemu_path=path)
    state = fake_binfmt_misc().state()
    steps = {s.target: s for s in plan(["all"], opts, state=state, host=X86).steps}
    assert steps["aarch64"].action == "register"
    assert steps["riscv64"].action == "skip" and "no qemu-riscv64" in steps["riscv64"].reason
    named = plan(["riscv64"], opts, state=state, host=X86)
    assert not named.ok
    assert [f.code for f in named.findings if f.severity == "error"] == ["interpreter-missing"]


def test_targets_by_alias_and_platform(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """arm64, linux/arm/v7 and armhf resolve to qemu-aarch64 and qemu-arm, once each."""
    path = fake_qemu(tmp_path / "q", "aarch64", "arm")
    the_plan = plan(
        ["arm64", "linux/arm/v7", "armhf"],
        InstallOptions(qemu_path=path),
        state=fake_binfmt_misc().state(),
        host=X86,
    )
    assert [s.entry.name for s in the_plan.steps] == ["qemu-aarch64", "qemu-arm"]


def test_flags_and_warnings(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """--credential gives OC and a security warning; no --persistent warns about containers."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    state = fake_binfmt_misc().state()
    the_plan = plan(
        ["aarch64"],
        InstallOptions(qemu_path=path, credential=True, preserve_argv0=True),
        state=state,
        host=X86,
    )
    assert the_plan.steps[0].entry.flags.letters == "POC"
    codes = {f.code for f in the_plan.findings}
    assert {"credentials-flag", "no-fix-binary"} <= codes
    assert the_plan.ok


def test_dynamic_qemu_with_persistent_warns(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """A dynamically linked QEMU with F gets the loud warning about containers."""
    path = fake_qemu(tmp_path / "q", "aarch64", source="/bin/true")
    the_plan = plan(
        ["aarch64"],
        InstallOptions(qemu_path=path, persistent=True),
        state=fake_binfmt_misc().state(),
        host=X86,
    )
    (dynamic,) = [f for f in the_plan.findings if f.code == "interpreter-dynamic"]
    assert "use a static QEMU" in dynamic.message


def test_f_needs_linux_4_8(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """On a 4.4 kernel --persistent is an error in the plan."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    the_plan = plan(
        ["aarch64"],
        InstallOptions(qemu_path=path, persistent=True),
        state=fake_binfmt_misc().state(),
        host=X86,
        kernel=KernelRules.for_release("4.4"),
    )
    assert [f.code for f in the_plan.findings if f.severity == "error"] == ["kernel-too-old"]


def test_forcing_a_native_target_is_flagged(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """--force on x86_64 registers qemu-x86_64, and warns that it captures native binaries."""
    path = fake_qemu(tmp_path / "q", "x86_64")
    the_plan = plan(
        ["x86_64"],
        InstallOptions(qemu_path=path, force=True),
        state=fake_binfmt_misc().state(),
        host=X86,
    )
    assert the_plan.steps[0].action == "register"
    assert "hijacks-native" in {f.code for f in the_plan.findings}


def test_idempotent_conflict_and_replace(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """A re-run changes nothing; a different same-name entry is a conflict unless --replace."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    misc = fake_binfmt_misc()
    opts = InstallOptions(qemu_path=path, persistent=True)
    apply(plan(["aarch64"], opts, state=misc.state(), host=X86), misc)
    again = plan(["aarch64"], opts, state=misc.state(), host=X86)
    assert [s.action for s in again.steps] == ["unchanged"] and not again.changes
    other = attrs.evolve(opts, persistent=False)
    conflict = plan(["aarch64"], other, state=misc.state(), host=X86)
    assert not conflict.ok and conflict.findings[-1].options == ("replace",)
    with pytest.raises(InstallError, match="nothing was written"):
        apply(conflict, misc)
    replaced = plan(["aarch64"], attrs.evolve(other, replace=True), state=misc.state(), host=X86)
    apply(replaced, misc)
    entry = misc.state().get("qemu-aarch64")
    assert entry is not None and entry.flags.letters == ""


def test_disabled_identical_entry_is_enabled(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """An identical but disabled entry is enabled, not re-registered."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    misc = fake_binfmt_misc()
    opts = InstallOptions(qemu_path=path)
    apply(plan(["aarch64"], opts, state=misc.state(), host=X86), misc)
    misc.disable("qemu-aarch64")
    the_plan = plan(["aarch64"], opts, state=misc.state(), host=X86)
    assert [s.action for s in the_plan.steps] == ["enable"]
    apply(the_plan, misc)
    assert misc.read_entry("qemu-aarch64").enabled


def test_shadowing_another_registrant_is_warned(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """Installing qemu-aarch64 over a FEX-like entry for the same binaries warns."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    sig = qemu.get("aarch64")
    misc = fake_binfmt_misc([Entry("box", "/opt/box/run", magic=sig.magic, mask=sig.mask)])
    the_plan = plan(["aarch64"], InstallOptions(qemu_path=path), state=misc.state(), host=X86)
    (shadow,) = [f for f in the_plan.findings if f.code == "shadows-entry"]
    assert "'box'" in shadow.message


def test_state_changed_since_plan(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """If someone registers the same name between plan and apply, apply refuses."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    misc = fake_binfmt_misc()
    the_plan = plan(["aarch64"], InstallOptions(qemu_path=path), state=misc.state(), host=X86)
    misc.register(":qemu-aarch64:M::AB::/bin/true:")
    with pytest.raises(InstallError, match="changed since the plan"):
        apply(the_plan, misc)


def test_parity_with_qemu_binfmt_conf_sh(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """Register lines equal what QEMU's script writes (flags in kernel order; microblaze fixed)."""
    records = [
        r for r in json.loads(REFERENCE.read_text())["records"] if r["origin"] == "qemu-upstream"
    ]
    for record in records:
        sig = qemu.get(record["name"])
        entry = sig.to_entry(f"/usr/bin/{sig.interpreter_name}-static", "OCFP")
        ours = entry.to_register(KernelRules.for_release("6.18"))
        # qemu-binfmt-conf.sh: ":qemu-$cpu:M::$magic:$mask:$qemu$suffix:$FLAGS", FLAGS=OC F P
        theirs = (
            f":qemu-{record['name']}:M::{record['magic_escaped']}:{record['mask_escaped']}:"
            f"/usr/bin/{sig.interpreter_name}-static:POCF"
        )
        k = KernelRules.for_release("6.18")
        if record["name"] == "microblaze":
            fixed, upstream = Entry.parse(ours, k), Entry.parse(theirs, k)
            assert fixed.magic[16:18] == b"\x00\x02" and upstream.magic[16:18] == b"\x02\x00"
            assert fixed.magic[18:] == upstream.magic[18:] and sig.upstream_difference
        else:
            # Same registration; the same text except where QEMU spells ELF as \x45\x4c\x46.
            assert Entry.parse(ours, k) == Entry.parse(theirs, k), record["name"]
            assert ours == theirs.replace("\\x45\\x4c\\x46", "ELF"), record["name"]


# -- uninstall -------------------------------------------------------------------------


def test_uninstall_touches_only_qemu(fake_binfmt_misc: Any) -> None:
    """--all-qemu removes QEMU's entries, never WSLInterop, Rosetta or python."""
    tree = Path(__file__).parent / "data" / "procfs" / "mixed-registrants"
    misc = fake_binfmt_misc()
    shutil.rmtree(misc.path)
    shutil.copytree(tree, misc.path)
    the_plan = plan_uninstall([], all_qemu=True, state=misc.state())
    assert [s.entry.name for s in the_plan.changes] == ["qemu-aarch64"]
    apply(the_plan, misc)
    assert set(misc.state().names) == {"with space", "rosetta", "WSLInterop", "jar", "python3.11"}
    by_target = plan_uninstall(["x86_64"], state=misc.state())
    assert not by_target.changes  # rosetta runs x86_64 binaries but is not QEMU
    named = plan_uninstall(["rosetta"], state=misc.state())
    assert [s.entry.name for s in named.changes] == ["rosetta"]


def test_uninstall_unknown_name(fake_binfmt_misc: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown name is an error naming it; nothing is removed."""
    misc = fake_binfmt_misc([":keep:M::AB::/bin/true:"])
    assert main(["uninstall", "--procfs", misc.path, "nosuch"]) == 1
    assert "no entry named 'nosuch'" in capsys.readouterr().err
    assert misc.state().names == ("keep",)
    assert main(["uninstall", "--procfs", misc.path]) == 2


# -- the CLI -------------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_prints_lines(
    fake_binfmt_misc: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints the exact register lines and leaves the tree as it was."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    misc = fake_binfmt_misc()
    before = snapshot(misc)
    code = main(
        [
            "install",
            "--procfs",
            misc.path,
            "--qemu-path",
            path,
            "--persistent",
            "--dry-run",
            "arm64",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and snapshot(misc) == before
    assert ":qemu-aarch64:M::\\x7fELF\\x02" in out and out.rstrip().endswith("-static:F")


def test_install_json(
    fake_binfmt_misc: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json reports steps, findings and whether it was applied."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    misc = fake_binfmt_misc()
    assert main(["install", "--json", "--procfs", misc.path, "--qemu-path", path, "aarch64"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["applied"], doc["dry_run"], doc["error"], doc["ok"]) == (True, False, None, True)
    assert doc["steps"][0]["action"] == "register"
    assert doc["steps"][0]["platforms"][0] == "linux/arm64"


def test_unknown_target_is_one_line(
    fake_binfmt_misc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown target: exit 1, one line naming it and close matches."""
    misc = fake_binfmt_misc()
    assert main(["install", "--procfs", misc.path, "arm65"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'arm65'" in err and "arm64" in err


# -- the real kernel ------------------------------------------------------------------


@pytest.mark.kernel
def test_rollback_leaves_the_instance_exactly_as_it_was(
    binfmt_sandbox: Sandbox, tmp_path: Path
) -> None:
    """When the Nth registration fails (its F interpreter vanished), all earlier ones are undone."""
    misc = binfmt_sandbox.misc
    misc.register(":keep:M::ZZ::/bin/true:")
    misc.register(":off:E::zzx::/bin/true:")
    misc.disable("off")
    targets = ["aarch64", "arm", "riscv64", "s390x", "ppc64le"]
    path = fake_qemu(tmp_path / "q", *targets)
    the_plan = plan(
        targets, InstallOptions(qemu_path=path, persistent=True), state=misc.state(), host=X86
    )
    assert the_plan.ok and len(the_plan.changes) == 5
    before = snapshot(misc)
    Path(path, "qemu-s390x-static").unlink()  # the 4th registration will get ENOENT
    with pytest.raises(InstallError, match=r"'qemu-s390x'.*ENOENT.*rolled back 3 changes"):
        apply(the_plan, misc)
    assert snapshot(misc) == before


@pytest.mark.kernel
@pytest.mark.qemu
def test_install_all_persistent_runs_real_debian_binaries(
    binfmt_sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """install all --persistent, then Debian busybox runs for 7 arches; uninstall keeps others."""
    misc = binfmt_sandbox.misc
    misc.register(":WSLInterop:M::MZ::/bin/true:P")
    code = main(install_all_argv(misc.path))
    assert code == 0, capsys.readouterr()
    for arch in ("arm64", "armhf", "armel", "mips64el", "mipsel", "ppc64el", "s390x"):
        busybox = debian_root(arch) / "bin" / "busybox"
        result = binfmt_sandbox.run(["busybox", "echo", arch], executable=str(busybox))
        assert (result.errno, result.returncode, result.stdout) == (None, 0, f"{arch}\n".encode())
    # Persistent (F) entries work inside a root that has no QEMU at all.
    root = debian_root("arm64")
    assert not (root / "usr/bin/qemu-aarch64-static").exists()
    result = binfmt_sandbox.run(["/bin/busybox", "true"], root=str(root))
    assert result.returncode == 0
    assert main(["uninstall", "--procfs", misc.path, "--all-qemu"]) == 0
    assert misc.state().names == ("WSLInterop",)


def test_writable_interpreter(fake_binfmt_misc: Any, tmp_path: Path) -> None:
    """A QEMU others can write is a warning, and an error with --credential (C).

    With C it is doctor's writable-credentials-interpreter (one rule for both).
    """
    path = fake_qemu(tmp_path / "q", "aarch64")
    Path(path, "qemu-aarch64-static").chmod(0o777)
    state = fake_binfmt_misc().state()
    for credential, code, severity in (
        (False, "writable-interpreter", "warning"),
        (True, "writable-credentials-interpreter", "error"),
    ):
        the_plan = plan(
            ["aarch64"],
            InstallOptions(qemu_path=path, credential=credential),
            state=state,
            host=X86,
        )
        (found,) = [f for f in the_plan.findings if f.code == code]
        assert found.severity == severity


def test_quiet_and_refresh(
    fake_binfmt_misc: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--quiet prints nothing when nothing changes; --refresh re-registers identical entries."""
    path = fake_qemu(tmp_path / "q", "aarch64")
    misc = fake_binfmt_misc()
    argv = ["install", "--quiet", "--procfs", misc.path, "--qemu-path", path, "aarch64"]
    assert main(argv) == 0
    assert "done: 1 change applied" in capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr() == ("", "")
    misc.register(":newer:M::ZZ::/bin/true:")
    assert main([*argv, "--refresh"]) == 0
    assert "re-register (--refresh)" in capsys.readouterr().out
    assert misc.state().names == ("qemu-aarch64", "newer")  # registered again: newest now


# -- pinned by mutation testing (tests/tools/mutants.py) -----------------------------------


def test_qemu_is_found_in_a_path_directory_outside_the_search_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEARCH_DIRS first, then every PATH directory not already searched."""
    from binfmt.install import SEARCH_DIRS, find_interpreter

    suffix = "-only-in-this-test"
    binary = tmp_path / f"qemu-aarch64{suffix}"
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{SEARCH_DIRS[0]}:{tmp_path}")
    opts = InstallOptions(qemu_suffix=suffix)
    assert find_interpreter(qemu.get("aarch64"), opts) == str(binary)
    monkeypatch.setenv("PATH", SEARCH_DIRS[0])
    assert find_interpreter(qemu.get("aarch64"), opts) is None


def test_a_missing_interpreter_names_where_it_was_looked_for(
    fake_binfmt_misc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding names the directory given, or the search dirs and PATH."""
    from binfmt.install import SEARCH_DIRS

    monkeypatch.setenv("PATH", "")
    state = fake_binfmt_misc().state()
    for opts, where in (
        (InstallOptions(qemu_suffix="-no-such-suffix"), ", ".join(SEARCH_DIRS) + " and PATH"),
        (InstallOptions(qemu_path=str(tmp_path)), str(tmp_path)),
    ):
        the_plan = plan(["aarch64"], opts, state=state, host=X86)
        (missing,) = [f for f in the_plan.findings if f.code == "interpreter-missing"]
        assert missing.message == f"qemu-aarch64 not found in {where}", missing.message
    # The entry planned names the path it was expected at: the first search dir.
    (step,) = plan(["aarch64"], InstallOptions(qemu_suffix="-x"), state=state, host=X86).steps
    assert step.entry.interpreter == f"{SEARCH_DIRS[0]}/qemu-aarch64-x"


def test_shadows_entry_only_for_another_enabled_entry_of_the_same_target(
    fake_binfmt_misc: Any, tmp_path: Path
) -> None:
    """An older entry that runs the target's binaries is named; unrelated or disabled ones not."""
    path = fake_qemu(tmp_path, "aarch64")
    theirs = qemu.get("aarch64").to_entry("/opt/other/qemu-aarch64", "").to_register()
    theirs = theirs.replace(":qemu-aarch64:", ":their-arm64:", 1)
    for lines, shadowed in (
        ([":jar:E::jar::/usr/bin/jexec:"], []),
        ([theirs], ["their-arm64"]),
        ([theirs, "-1"], []),
    ):
        misc = fake_binfmt_misc([lines[0]])
        if lines[1:]:
            misc.disable("their-arm64")
        the_plan = plan(["aarch64"], InstallOptions(qemu_path=path), state=misc.state(), host=X86)
        assert [f.entry for f in the_plan.findings if f.code == "shadows-entry"] == shadowed


def test_uninstall_by_name_leaves_qemu_entries_alone(fake_binfmt_misc: Any) -> None:
    """Naming an entry removes that one; QEMU's entries go only with all_qemu."""
    arm64 = qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "F").to_register()
    misc = fake_binfmt_misc([arm64, ":jar:E::jar::/usr/bin/jexec:"])
    removed = [s.entry.name for s in plan_uninstall(["jar"], state=misc.state()).steps]
    assert removed == ["jar"]
    every = plan_uninstall(["jar"], state=misc.state(), all_qemu=True).steps
    assert sorted(s.entry.name for s in every) == ["jar", "qemu-aarch64"]
    only_qemu = plan_uninstall([], state=misc.state(), all_qemu=True).steps
    assert sorted((s.action, s.entry.name) for s in only_qemu) == [
        ("remove", "qemu-aarch64"),
        ("unchanged", "jar"),
    ]


def test_uninstall_of_a_target_says_when_nothing_is_registered_for_it(
    fake_binfmt_misc: Any,
) -> None:
    """A target with no QEMU entry: 'nothing-to-remove'; with one, it is removed, no finding."""
    arm64 = qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "").to_register()
    empty = plan_uninstall(["arm64"], state=fake_binfmt_misc([]).state())
    assert [f.code for f in empty.findings] == ["nothing-to-remove"] and not empty.steps
    some = plan_uninstall(["arm64"], state=fake_binfmt_misc([arm64]).state())
    assert [s.entry.name for s in some.steps] == ["qemu-aarch64"] and not some.findings


def test_uninstall_refuses_what_it_cannot_put_back_unless_forced(
    fake_binfmt_misc: Any, tmp_path: Path
) -> None:
    """Two F entries whose files are gone: if the second removal failed, the first could
    not be registered again, so the plan is refused by default and goes ahead with force."""
    lines = []
    for name in ("gone1", "gone2"):
        interp = tmp_path / name
        interp.write_bytes(b"#!/bin/sh\n")
        interp.chmod(0o755)
        lines.append(f":{name}:M::\\x01{name}::{interp}:F")
    misc = fake_binfmt_misc(lines)
    for name in ("gone1", "gone2"):
        (tmp_path / name).unlink()
    refused = plan_uninstall(["gone1", "gone2"], state=misc.state())
    assert not refused.ok and refused.cannot_restore
    assert "cannot-restore" in [f.code for f in refused.findings]
    assert plan_uninstall(["gone1", "gone2"], state=misc.state(), force=True).ok


def test_apply_takes_the_writer_lock_unless_told_it_holds_it(
    fake_binfmt_misc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply() locks the instance itself; locked=True is for a caller inside lock()."""
    from binfmt import install
    from binfmt.errors import LockTimeout

    monkeypatch.setattr(install, "LOCK_TIMEOUT", 0.05)
    misc = fake_binfmt_misc([])
    the_plan = install.plan_entries([Entry("new", "/bin/true", magic=b"NW")], state=misc.state())
    with install.lock(misc.path):
        with pytest.raises(LockTimeout):
            apply(the_plan, misc)
        assert misc.names() == []
        apply(the_plan, misc, locked=True)
    assert misc.names() == ["new"]


def test_a_plan_with_errors_is_refused_naming_its_errors(fake_binfmt_misc: Any) -> None:
    """apply() writes nothing for a plan with errors, and says which."""
    from binfmt.findings import Finding
    from binfmt.install import plan_entries

    misc = fake_binfmt_misc([])
    the_plan = attrs.evolve(
        plan_entries([Entry("n", "/bin/true", magic=b"NW")], state=misc.state()),
        findings=(
            Finding("unknown-name", message="the error said", severity="error"),
            Finding("shadows-entry", message="the warning said", severity="warning"),
        ),
    )
    with pytest.raises(InstallError) as info:
        apply(the_plan, misc)
    assert "the error said" in str(info.value) and "the warning said" not in str(info.value)
    assert misc.names() == []


def test_an_f_file_replaced_during_the_run_is_named_by_the_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An F entry's file replaced while the plan runs (a QEMU upgrade): put back, it holds the
    new file, and the error says so; a non-F entry's new file is just its path again."""
    import errno
    import os
    import time

    from binfmt import BinfmtMisc
    from binfmt.install import plan_entries
    from binfmt.testing import make_fake_procfs

    files = tmp_path / "files"
    files.mkdir()
    for name in ("f", "plain"):
        (files / name).write_bytes(b"#!/bin/sh\n")
        (files / name).chmod(0o755)
    fixed = Entry("fixed", str(files / "f"), magic=b"\x01F", flags="F")
    plain = Entry("plain", str(files / "plain"), magic=b"\x01P")
    misc = make_fake_procfs(tmp_path / "p", [fixed, plain])
    time.sleep(0.005)
    wanted = [
        attrs.evolve(fixed, interpreter="/bin/true"),
        attrs.evolve(plain, interpreter="/bin/true"),
        Entry("fresh", "/bin/true", magic=b"\x02"),
    ]
    the_plan = plan_entries(wanted, state=misc.state())
    real = BinfmtMisc._write
    calls = [0]

    def write(self: BinfmtMisc, name: str, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 2:  # after the first write: both files replaced on disk
            for file in ("f", "plain"):
                (files / "new").write_bytes(b"#!/bin/sh\n# new\n")
                (files / "new").chmod(0o755)
                os.replace(files / "new", files / file)
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, data)

    monkeypatch.setattr(BinfmtMisc, "_write", write)
    with pytest.raises(InstallError) as info:
        apply(the_plan, misc)
    notes = [d for d in info.value.differences if "holds the file now" in d]
    assert len(notes) == 1 and "'fixed'" in notes[0], info.value.differences
    assert not info.value.restored


@pytest.mark.parametrize(("undo_failures", "restored"), [(0, True), (2, True), (3, False)])
def test_the_way_back_is_tried_three_times(
    fake_binfmt_misc: Any, monkeypatch: pytest.MonkeyPatch, undo_failures: int, restored: bool
) -> None:
    """A write of the way back that fails is tried again from a fresh read, three times in all."""
    import errno
    import os

    from binfmt.install import plan_entries

    misc = fake_binfmt_misc([])
    wanted = [Entry("a", "/bin/true", magic=b"\x01A"), Entry("b", "/bin/true", magic=b"\x01B")]
    the_plan = plan_entries(wanted, state=misc.state())
    real = type(misc)._write
    calls = [0]

    def write(self: Any, name: str, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 2 or 3 <= calls[0] < 3 + undo_failures:  # the plan's 2nd, then undos
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(self, name, data)

    monkeypatch.setattr(type(misc), "_write", write)
    with pytest.raises(InstallError) as info:
        apply(the_plan, misc)
    assert info.value.restored is restored, str(info.value)
    assert (misc.names() == []) is restored


def test_the_rollback_writes_nothing_from_a_state_it_could_not_read(
    fake_binfmt_misc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When reading binfmt_misc again fails mid-rollback, it stops: no write from a stale view."""
    import errno
    import os

    from binfmt.errors import BinfmtError
    from binfmt.install import plan_entries

    misc = fake_binfmt_misc([])
    wanted = [Entry("a", "/bin/true", magic=b"\x01A"), Entry("b", "/bin/true", magic=b"\x01B")]
    the_plan = plan_entries(wanted, state=misc.state())
    cls = type(misc)
    real_write, real_state = cls._write, cls.state
    writes, reads = [0], [0]

    def write(self: Any, name: str, data: bytes) -> None:
        writes[0] += 1
        if writes[0] in (2, 3):  # the plan's 2nd write, then the first write of the way back
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_write(self, name, data)

    def state(self: Any) -> Any:
        reads[0] += 1
        if reads[0] == 3:  # before, the rollback's first read, then this one fails
            raise BinfmtError("cannot read binfmt_misc (injected)")
        return real_state(self)

    monkeypatch.setattr(cls, "_write", write)
    monkeypatch.setattr(cls, "state", state)
    with pytest.raises(InstallError) as info:
        apply(the_plan, misc)
    assert writes[0] == 3 and not info.value.restored, str(info.value)
    assert misc.names() == ["a"]
