"""doctor: every finding code, on kernel-made trees and fake roots; a healthy real node."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import pytest

from binfmt import BinfmtMisc, Entry, Flags, Host, State, qemu
from binfmt.cli import main
from binfmt.doctor import CODES, DoctorReport, diagnose
from binfmt.persist import binfmt_d_files, write_files
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip

from .debian import install_all_argv

TREES = Path(__file__).parent / "data" / "procfs"
X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
STATIC = "/usr/bin/qemu-aarch64-static"
SEEN: set[str] = set()  # codes some test produced; the last test checks all are covered


def tree(name: str) -> State:
    return BinfmtMisc(str(TREES / name)).state()


def fake_root(tmp_path: Path, files: dict[str, tuple[str, int]], systemd: bool = True) -> Path:
    """A root holding copies of real programs: {path: (source, mode)}."""
    root = tmp_path / "root"
    for path, (source, mode) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        target.chmod(mode)
    if systemd:
        (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/true", root / "usr/lib/systemd/systemd-binfmt")
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    (root / "proc/self/uid_map").write_text("         0          0 4294967295\n")
    return root


def codes(report: DoctorReport, entry: Any = ...) -> set[str]:
    found = {p.code for p in report.problems if entry is ... or p.entry == entry}
    SEEN.update(p.code for p in report.problems)
    return found


def test_every_entry_problem_of_the_kernel_made_tree(tmp_path: Path) -> None:
    """The doctor-problems tree (made by the kernel) yields each entry problem on its entry."""
    root = fake_root(
        tmp_path,
        {
            "/usr/bin/qemu-aarch64-static": (STATIC, 0o755),
            "/usr/bin/qemu-arm": ("/bin/true", 0o755),  # dynamically linked
            "/usr/local/bin/qemu-s390x-static": (STATIC, 0o777),  # writable by anyone
            "/usr/bin/qemu-hppa-static": (STATIC, 0o644),  # not executable
            "/usr/bin/qemu-x86_64-static": (STATIC, 0o755),
            "/mnt/rosetta/rosetta": (STATIC, 0o755),
            "/usr/bin/FEXInterpreter": (STATIC, 0o755),
            "/usr/bin/qemu-ppc64le-static": (STATIC, 0o775),  # group-writable
        },
    )
    etc = root / "etc/binfmt.d"
    etc.mkdir(parents=True)
    state = tree("doctor-problems")
    aarch64 = state.get("qemu-aarch64")
    assert aarch64 is not None
    write_files(str(etc), binfmt_d_files([aarch64]))
    report = diagnose(state, X86, host_root=str(root), binfmt_d_dirs=["/etc/binfmt.d"])
    assert codes(report, "qemu-aarch64") == set()  # healthy, and persisted
    assert codes(report, "qemu-arm") == {"interpreter-dynamic", "no-fix-binary", "not-persisted"}
    assert codes(report, "qemu-riscv64") == {"interpreter-missing", "not-persisted"}
    assert codes(report, "qemu-s390x") == {
        "writable-credentials-interpreter",
        "no-fix-binary",
        "not-persisted",
    }
    assert codes(report, "qemu-hppa") == {"interpreter-not-executable", "not-persisted"}
    assert codes(report, "qemu-mips64el") == {"interpreter-gone", "not-persisted"}
    assert codes(report, "qemu-x86_64") == {
        "hijacks-native",
        "duplicate-entry",
        "shadowed-entry",
        "not-persisted",
    }
    assert codes(report, "rosetta") == {
        "hijacks-native",
        "no-fix-binary",
        "shadowed-entry",
        "not-persisted",
    }
    assert codes(report, "FEX-x86_64") == {"hijacks-native", "no-fix-binary", "not-persisted"}
    assert codes(report, "ppc64le-again") == {"writable-interpreter", "not-persisted"}
    assert codes(report, "qemu-ppc64le") == {
        "writable-interpreter",
        "duplicate-entry",
        "not-persisted",
    }
    assert "systemd-binfmt-flushes" in codes(report, None)
    assert report.exit_status == 2
    shadows = [p for p in report.problems if p.code == "shadowed-entry"]
    assert [p.entry for p in shadows] == ["rosetta", "qemu-x86_64"]
    assert "newer FEX-x86_64" in shadows[0].message and shadows[0].fix


def test_mount_and_switch(tmp_path: Path) -> None:
    """Not mounted, an automount that did not mount, and a global off switch are errors."""
    report = diagnose(State(str(tmp_path), False), X86, host_root=str(fake_root(tmp_path, {})))
    assert codes(report) == {"not-mounted"} and report.exit_status == 2
    root = fake_root(tmp_path / "a", {})
    (root / "proc/self/mountinfo").write_text(
        "36 25 0:31 / /proc/sys/fs/binfmt_misc rw,relatime shared:13 - autofs systemd-1 rw\n"
    )
    report = diagnose(State("/proc/sys/fs/binfmt_misc", False), X86, host_root=str(root))
    assert codes(report) == {"automount-not-triggered"}
    assert "proc-sys-fs-binfmt_misc.mount" in report.problems[0].fix
    off = diagnose(tree("spec-examples"), X86, host_root=str(fake_root(tmp_path / "b", {})))
    assert "disabled" in codes(off)


def test_kernel_and_namespace(tmp_path: Path) -> None:
    """A kernel without F is a warning; running in a user namespace is noted."""
    root = fake_root(tmp_path, {}, systemd=False)
    (root / "proc/self/uid_map").write_text("0 1000 1\n")
    old = Host.from_facts("x86_64", "4.4.0", config={"CONFIG_IA32_EMULATION": "y"})
    report = diagnose(tree("empty"), old, host_root=str(root))
    assert codes(report) == {"kernel-without-f", "user-namespace"}
    assert report.exit_status == 1


def test_an_arm64_node_with_qemu_arm(tmp_path: Path, fake_binfmt_misc: Any) -> None:
    """qemu-arm on an arm64 node: a warning if the CPU runs arm itself, and if that is unknown.

    However native arm was learned (measured, or aarch32_el0), the entry is
    reported; on a CPU without AArch32 it is what the node needs.
    """
    root = fake_root(tmp_path, {"/usr/bin/qemu-arm-static": (STATIC, 0o755)}, systemd=False)
    entry = qemu.get("arm").to_entry("/usr/bin/qemu-arm-static", Flags.from_letters("F"))
    state = fake_binfmt_misc([entry]).state()
    config = {"CONFIG_COMPAT": "y"}

    def arm64(measured: Optional[bool], el0: Optional[str] = None) -> Host:
        return Host.from_facts(
            "aarch64", "6.1.0", config=config, aarch32_el0=el0, measure=lambda t: (measured, "m")
        )

    for host in (arm64(True), arm64(None, el0="0-3")):
        report = diagnose(state, host, host_root=str(root), probe=False)
        assert codes(report, "qemu-arm") == {"hijacks-native"}
        (found,) = [p for p in report.problems if p.entry == "qemu-arm"]
        assert found.severity == "warning" and "which this host runs itself" in found.message
    assert (
        codes(diagnose(state, arm64(False), host_root=str(root), probe=False), "qemu-arm") == set()
    )
    unsure = diagnose(state, arm64(None), host_root=str(root), probe=False)
    assert codes(unsure, "qemu-arm") == {"native-unknown"}
    (found,) = [p for p in unsure.problems if p.entry == "qemu-arm"]
    assert found.severity == "warning" and "unknown (" in found.message


def test_platforms_without_probes(tmp_path: Path) -> None:
    """--platform: native ok, emulated ok (not probed), missing and unknown are errors."""
    root = fake_root(tmp_path, {}, systemd=False)
    report = diagnose(
        tree("debian-qemu-user-static"),
        X86,
        host_root=str(root),
        platforms=["linux/amd64", "linux/arm64", "x86_64", "linux/loong64", "linux/nope"],
    )
    codes(report)
    found = [(p.code, p.message.split(":")[0]) for p in report.problems if "platform" in p.code]
    assert found == [
        ("platform-ok", "linux/amd64 runs natively (x86_64)"),
        ("platform-ok", "linux/arm64"),
        ("platform-ok", "x86_64 runs natively (x86_64)"),
        ("platform-ok", "linux/loong64"),
        ("platform-unavailable", "unknown target, alias or platform 'linux/nope'"),
    ]
    empty = diagnose(tree("empty"), X86, host_root=str(root), platforms=["linux/riscv64"])
    assert codes(empty) == {"platform-unavailable"}
    assert empty.problems[0].fix == "binfmt install riscv64 --persistent"


def test_config_and_unreadable(tmp_path: Path) -> None:
    """A broken binfmt.d line and an unreadable entry are reported, not fatal."""
    root = fake_root(tmp_path, {"/usr/bin/qemu-aarch64-static": (STATIC, 0o755)})
    (root / "etc/binfmt.d").mkdir(parents=True)
    (root / "etc/binfmt.d/bad.conf").write_text(":broken\n")
    state = tree("doctor-problems")
    unreadable = State(state.path, True, True, state.entries[-1:], unreadable=("secret",))
    report = diagnose(unreadable, X86, host_root=str(root), binfmt_d_dirs=["/etc/binfmt.d"])
    assert {"invalid-config", "unreadable-entry"} <= codes(report)


def test_cli_json_and_exit_status(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """doctor --json lists findings with stable codes and fixes; the exit status is the worst."""
    code = main(["doctor", "--json", "--no-probe", "--procfs", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and doc["status"] == "errors"
    assert doc["findings"][0]["code"] == "not-mounted"
    assert set(doc["findings"][0]) == {"code", "severity", "entry", "message", "fix"}
    assert main(["doctor", "--procfs", str(TREES / "empty"), "--no-probe"]) in (0, 1)
    text = capsys.readouterr().out
    assert text.splitlines()[-1].startswith(str(TREES / "empty"))


@pytest.mark.kernel
@pytest.mark.qemu
def test_healthy_real_setup_has_no_warning(binfmt_sandbox: Sandbox, tmp_path: Path) -> None:
    """install all --persistent + export to binfmt.d: doctor finds nothing to warn about."""
    misc = binfmt_sandbox.misc
    assert main(install_all_argv(misc.path)) == 0
    etc = tmp_path / "etc" / "binfmt.d"
    etc.mkdir(parents=True)
    assert main(["export", "--current", "--procfs", misc.path, "--dir", str(etc)]) == 0
    report = diagnose(
        misc.state(),
        Host.detect(),
        binfmt_d_dirs=[str(etc)],
        platforms=["linux/arm64", "linux/s390x"],
        probe=False,
    )
    assert [p for p in report.problems if p.severity != "info"] == []
    assert report.exit_status == 0


def test_cli_root_reads_a_fake_host(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """doctor --root DIR judges interpreters as found under DIR (a pod looking at its host)."""
    root = fake_root(tmp_path, {"/usr/bin/qemu-aarch64-static": (STATIC, 0o755)}, systemd=False)
    code = main(
        ["doctor", "--json", "--root", str(root), "--procfs", str(TREES / "doctor-problems")]
    )
    doc = json.loads(capsys.readouterr().out)
    missing = {f["entry"] for f in doc["findings"] if f["code"] == "interpreter-missing"}
    assert "qemu-s390x" in missing and "qemu-aarch64" not in missing
    assert code == 2


def test_boot_order(tmp_path: Path) -> None:
    """Overlapping entries persisted in files whose order reverses today's winner are flagged."""
    from binfmt import Entry, qemu

    sig = qemu.get("aarch64")
    a = Entry("qemu-aarch64", STATIC, magic=sig.magic, mask=sig.mask, flags="F")
    b = Entry("box", STATIC, magic=sig.magic, mask=sig.mask, flags="F")
    root = fake_root(tmp_path, {STATIC: (STATIC, 0o755)})
    etc = root / "etc/binfmt.d"
    etc.mkdir(parents=True)
    write_files(str(etc), binfmt_d_files([a, b]))  # box.conf sorts first: applied first
    now_qemu_wins = State("/x", True, True, (a, b))
    report = diagnose(now_qemu_wins, X86, host_root=str(root), binfmt_d_dirs=["/etc/binfmt.d"])
    assert "boot-order-differs" not in codes(report)
    now_box_wins = State("/x", True, True, (b, a))
    report = diagnose(now_box_wins, X86, host_root=str(root), binfmt_d_dirs=["/etc/binfmt.d"])
    assert "boot-order-differs" in codes(report)
    (found,) = [p for p in report.problems if p.code == "boot-order-differs"]
    assert found.entry == "qemu-aarch64" and "box wins now" in found.message


def test_kernel_without_binfmt_misc(tmp_path: Path) -> None:
    """No binfmt_misc in /proc/filesystems and no module: the kernel lacks it, not the mount."""
    root = fake_root(tmp_path, {}, systemd=False)
    (root / "proc/filesystems").write_text("nodev\tsysfs\nnodev\tproc\n\text4\n")
    report = diagnose(State("/proc/sys/fs/binfmt_misc", False), X86, host_root=str(root))
    assert codes(report) == {"no-kernel-support"}
    modules = root / "lib/modules/6.18.0/kernel/fs"
    modules.mkdir(parents=True)
    (modules / "binfmt_misc.ko.xz").write_bytes(b"")
    report = diagnose(State("/proc/sys/fs/binfmt_misc", False), X86, host_root=str(root))
    assert codes(report) == {"not-mounted"}  # mounting loads the module


@pytest.mark.qemu
def test_credentials_and_versions() -> None:
    """QEMU entries without C get one note; the QEMU versions behind them are shown."""
    report = diagnose(tree("debian-qemu-user-static"), X86, binfmt_d_dirs=[], probe=True)
    assert {"no-credentials", "qemu-versions"} <= codes(report)
    (versions,) = [p for p in report.problems if p.code == "qemu-versions"]
    assert "7." in versions.message and "entries" in versions.message


def test_interpreter_that_is_not_elf(tmp_path: Path) -> None:
    """An emulator entry whose interpreter is a script (not ELF) is reported; others are not."""
    root = fake_root(tmp_path, {}, systemd=False)
    wrapper = root / "usr/bin/qemu-aarch64-wrapper"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text('#!/bin/sh\nexec qemu-aarch64-static "$@"\n')
    wrapper.chmod(0o755)
    state = State(
        "/x",
        True,
        True,
        (
            qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-wrapper", "F"),
            Entry("python3", "/usr/bin/qemu-aarch64-wrapper", magic=b"\x55\x0d\x0d\x0a"),
        ),
    )
    report = diagnose(state, X86, host_root=str(root), probe=False)
    assert "interpreter-not-elf" in codes(report, "qemu-aarch64")
    assert "interpreter-not-elf" not in codes(report, "python3")


def test_stale_interpreter_in_use(tmp_path: Path) -> None:
    """A process still running an F interpreter that an upgrade replaced (issue 14)."""
    node = Path(__file__).parent / "data" / "ps" / "containerd-systemd-v2"
    state = BinfmtMisc(str(node / "binfmt_misc")).state()
    report = diagnose(
        state, Host.detect(), host_root=str(node / "host"), probe=False, proc=str(node / "proc")
    )
    assert "interpreter-deleted" in codes(report, "qemu-s390x")


def test_unknown_kernel_rules_are_reported(tmp_path: Path) -> None:
    """A Debian 12 release without uname -v: the backport rules are unknown, and doctor says so."""
    host = Host.from_facts("x86_64", "6.1.0-57-cloud-amd64", config={"CONFIG_IA32_EMULATION": "y"})
    report = diagnose(tree("empty"), host, host_root=str(fake_root(tmp_path, {})), probe=False)
    unknown = [p for p in report.problems if p.code == "kernel-rules-unknown"]
    codes(report)
    assert unknown and all("patch level" in p.message for p in unknown)
    known = Host.from_facts(
        "x86_64", "6.1.0-57-cloud-amd64", config={}, version="#1 SMP Debian 6.1.192-3"
    )
    again = diagnose(tree("empty"), known, host_root=str(fake_root(tmp_path / "k", {})))
    assert "kernel-rules-unknown" not in {p.code for p in again.problems}


def test_every_code_is_produced_by_some_test() -> None:
    """Each documented finding code was produced above (runs last in this module)."""
    if len(SEEN) < 5:
        require_or_skip("checks what the other tests of this module produced: run the whole module")
    assert set(CODES) - SEEN == set()
