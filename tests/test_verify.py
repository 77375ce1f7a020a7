"""verify(): probes executed for real through a private binfmt_misc instance, and the
classification of outcomes with a fake runner (no kernel).

The kernel tests register Debian's qemu-user-static lines (flags OPF) in a
:class:`~binfmt.sandbox.Sandbox` and run the probes there with
:func:`~binfmt.verify.sandbox_runner`; the host's own binfmt_misc is never
written.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import attrs
import pytest

from binfmt import Entry, Host, State, UnknownTarget, qemu
from binfmt.probes import PROBE_STATUS, PROBE_TARGETS, probe
from binfmt.report import verify_text
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip
from binfmt.verify import (
    STATUSES,
    RunOutcome,
    TargetResult,
    VerifyReport,
    default_targets,
    run_local,
    sandbox_runner,
    verify,
)

from .debian import debian_qemu_lines

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})

#: Every target with an OCI platform, as buildkit's archutil checks them.
OCI_TARGETS = (
    "x86_64", "i386", "aarch64", "arm", "riscv64", "ppc64le", "ppc64", "s390x",
    "mips64el", "mips64", "mipsel", "mips", "loongarch64",
)  # fmt: skip
EMULATED = tuple(t for t in OCI_TARGETS if t not in ("x86_64", "i386"))


def state_of(*entries: Entry, enabled: Optional[bool] = True, mounted: bool = True) -> State:
    return State(path="/fake", mounted=mounted, enabled=enabled, entries=tuple(entries))


class FakeRunner:
    """Answers every exec with one outcome and records what it was asked to run."""

    def __init__(self, outcome: RunOutcome) -> None:
        self.outcome = outcome
        self.calls: list[tuple[list[str], Optional[str], bytes]] = []

    def __call__(self, argv: Sequence[str], root: Optional[str]) -> RunOutcome:
        host_path = argv[0] if root is None else os.path.join(root, argv[0].lstrip("/"))
        with open(host_path, "rb") as f:
            self.calls.append((list(argv), root, f.read()))
        return self.outcome


@pytest.fixture
def fake_qemu(tmp_path: Path) -> str:
    """An interpreter for fake entries: a shell script (predict follows it to /bin/sh)."""
    path = tmp_path / "bin" / "fake-qemu"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def entry(target: str, interpreter: str, flags: str = "F", *, enabled: bool = True) -> Entry:
    return attrs.evolve(qemu.get(target).to_entry(interpreter, flags), enabled=enabled)


def verify_one(
    target: str, outcome: RunOutcome, state: State, rootfs: Optional[str] = None
) -> TargetResult:
    report = verify([target], state=state, host=X86, rootfs=rootfs, runner=FakeRunner(outcome))
    assert len(report.results) == 1
    return report.results[0]


def codes(result: TargetResult) -> list[str]:
    return [f.code for f in result.findings]


# -- classification, with a fake runner --------------------------------------------


def test_expected_status_through_an_entry_works(fake_qemu: str) -> None:
    """Exit status 42 through a matching entry is 'works', naming the entry and interpreter."""
    r = verify_one("aarch64", RunOutcome(PROBE_STATUS), state_of(entry("aarch64", fake_qemu)))
    assert (r.status, r.entry, r.interpreter, r.errno, r.returncode, r.ok) == (
        "works", "qemu-aarch64", fake_qemu, None, PROBE_STATUS, True,
    )  # fmt: skip
    assert r.platforms == ("linux/arm64", "linux/arm64/v8")
    assert "unexpected-outcome" not in codes(r)


def test_expected_status_without_an_entry_is_native() -> None:
    """A host-native target that exits 42 with no entry involved is 'native'."""
    r = verify_one("x86_64", RunOutcome(PROBE_STATUS), state_of())
    assert (r.status, r.entry, r.interpreter, r.ok) == ("native", None, None, True)
    assert r.findings == ()


def test_enoexec_without_an_entry_is_entry_missing() -> None:
    """ENOEXEC when nothing matches is 'entry-missing', and the prediction agrees."""
    r = verify_one("riscv64", RunOutcome(None, errno="ENOEXEC"), state_of())
    assert (r.status, r.errno, r.entry, r.ok) == ("entry-missing", "ENOEXEC", None, False)
    assert "no enabled binfmt_misc entry matches" in r.detail
    assert "unexpected-outcome" not in codes(r)


def test_an_individually_disabled_entry_is_named(fake_qemu: str) -> None:
    """ENOEXEC with the target's entry switched off: 'entry-missing' saying that entry is off."""
    state = state_of(entry("riscv64", fake_qemu, enabled=False))
    r = verify_one("riscv64", RunOutcome(None, errno="ENOEXEC"), state)
    assert r.status == "entry-missing"
    assert "entry qemu-riscv64 matches but is disabled" in r.detail


def test_enoexec_with_binfmt_misc_off_is_disabled(fake_qemu: str) -> None:
    """ENOEXEC while binfmt_misc is globally off and an entry matches: 'disabled', naming it."""
    state = state_of(entry("riscv64", fake_qemu), enabled=False)
    r = verify_one("riscv64", RunOutcome(None, errno="ENOEXEC"), state)
    assert (r.status, r.entry, r.interpreter) == ("disabled", "qemu-riscv64", fake_qemu)
    assert "/fake/status" in r.detail


def test_binfmt_misc_off_and_no_entry_is_entry_missing() -> None:
    """Globally off but no entry would match either: 'entry-missing', mentioning both."""
    r = verify_one("riscv64", RunOutcome(None, errno="ENOEXEC"), state_of(enabled=False))
    assert r.status == "entry-missing"
    assert "disabled globally" in r.detail


def test_not_mounted_is_said(fake_qemu: str) -> None:
    """An unmounted state gives 'entry-missing' saying where binfmt_misc was looked for."""
    r = verify_one(
        "s390x", RunOutcome(None, errno="ENOEXEC"), state_of(enabled=None, mounted=False)
    )
    assert r.status == "entry-missing"
    assert "not mounted at /fake" in r.detail


def test_enoent_is_interpreter_missing_with_the_explanation(tmp_path: Path) -> None:
    """ENOENT in a root that lacks a non-F entry's interpreter: the finding says to use F."""
    root = tmp_path / "root"
    root.mkdir()
    state = state_of(entry("arm", "/usr/bin/qemu-arm-static", flags=""))
    r = verify_one("arm", RunOutcome(None, errno="ENOENT"), state, rootfs=str(root))
    assert (r.status, r.errno, r.entry) == ("interpreter-missing", "ENOENT", "qemu-arm")
    assert "interpreter-missing" in codes(r)
    assert "lacks F" in r.detail and "/usr/bin/qemu-arm-static" in r.detail
    assert str(root) in r.detail


def test_other_errno_is_exec_failed_and_flags_the_surprise(fake_qemu: str) -> None:
    """EACCES is 'exec-failed' with the errno; a prediction of success adds a warning."""
    r = verify_one("mips", RunOutcome(None, errno="EACCES"), state_of(entry("mips", fake_qemu)))
    assert (r.status, r.errno) == ("exec-failed", "EACCES")
    assert r.detail.startswith("execve failed with EACCES")
    assert codes(r)[-1] == "unexpected-outcome"


def test_enoexec_from_the_interpreter_is_exec_failed(tmp_path: Path) -> None:
    """ENOEXEC raised by an entry's unrunnable interpreter is 'exec-failed', not 'entry-missing'."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"neither ELF nor script\n")
    junk.chmod(0o755)
    state = state_of(entry("ppc64le", str(junk)))
    r = verify_one("ppc64le", RunOutcome(None, errno="ENOEXEC"), state)
    assert (r.status, r.errno, r.entry) == ("exec-failed", "ENOEXEC", "qemu-ppc64le")
    assert "unexpected-outcome" not in codes(r)


@pytest.mark.parametrize(
    ("outcome", "returncode", "detail"),
    [
        (
            RunOutcome(3, stderr=b"\n  qemu: oops \nsecond\n"),
            3,
            "exited 3, expected 42: qemu: oops",
        ),
        (RunOutcome(0), 0, "exited 0, expected 42"),
        (RunOutcome(-11), -11, "killed by SIGSEGV"),
        (RunOutcome(None, stderr=b"slow", timed_out=True), None, "did not exit in time"),
    ],
)
def test_anything_but_the_status_is_wrong_status(
    fake_qemu: str, outcome: RunOutcome, returncode: Optional[int], detail: str
) -> None:
    """Another exit status, a signal or a timeout is 'wrong-status' with stderr's first line."""
    r = verify_one("s390x", outcome, state_of(entry("s390x", fake_qemu)))
    assert (r.status, r.returncode, r.errno) == ("wrong-status", returncode, None)
    assert r.detail.startswith(detail)


def test_a_target_without_a_probe_is_reported_not_run() -> None:
    """A host target that has no probe gets 'no-probe', and nothing is executed."""
    odd = Host("weird", "6.18.0", native=("weird",))
    runner = FakeRunner(RunOutcome(PROBE_STATUS))
    report = verify(state=state_of(), host=odd, runner=runner)
    assert [(r.target, r.status) for r in report.results] == [("weird", "no-probe")]
    assert runner.calls == [] and not report.ok


def test_statuses_are_the_documented_ones() -> None:
    """The status vocabulary is fixed, and a result refuses anything else."""
    assert STATUSES == (
        "works", "native", "entry-missing", "disabled", "interpreter-missing",
        "exec-failed", "wrong-status", "no-probe",
    )  # fmt: skip
    with pytest.raises(ValueError):
        TargetResult("arm", (), "fine")  # type: ignore[arg-type]


# -- which targets ------------------------------------------------------------------


def test_default_targets_are_native_then_emulated_in_table_order(fake_qemu: str) -> None:
    """Default: host-native targets, then what enabled entries identify, in QEMU's table order."""
    state = state_of(
        entry("riscv64", fake_qemu),
        entry("aarch64", fake_qemu),
        entry("s390x", fake_qemu, enabled=False),
        Entry("python", "/usr/bin/python3", magic=b"\x42\x0d\x0d\x0a"),
    )
    # QEMU's table has aarch64 after s390x and before riscv64.
    assert default_targets(state, X86) == ["x86_64", "i386", "i486", "aarch64", "riscv64"]


def test_default_targets_include_undecided_compat_and_unsigned_probes(fake_qemu: str) -> None:
    """An arm64 host unsure of AArch32 probes arm too; a cris entry (no QEMU signature) counts."""
    arm64 = Host.from_facts("aarch64", "6.18.0", config={"CONFIG_COMPAT": "y"})
    assert arm64.unknown == ("arm",)
    cris = Entry("qemu-cris", fake_qemu, magic=probe("cris")[:20])
    assert default_targets(state_of(cris), arm64) == ["aarch64", "arm", "cris"]


def test_named_targets_accept_aliases_platforms_and_commas() -> None:
    """Targets are looked up like everywhere else, in the order given, each once."""
    runner = FakeRunner(RunOutcome(None, errno="ENOEXEC"))
    report = verify(
        ["linux/arm64,armhf", "riscv64", "arm64", "cris"],
        state=state_of(),
        host=X86,
        runner=runner,
    )
    assert [r.target for r in report.results] == ["aarch64", "arm", "riscv64", "cris"]


def test_all_means_every_probe() -> None:
    """'all' verifies every target that has a probe."""
    report = verify("all", state=state_of(), host=X86, runner=FakeRunner(RunOutcome(0)))
    assert sorted(r.target for r in report.results) == sorted(PROBE_TARGETS)


def test_unknown_target_names_the_value() -> None:
    """An unknown name raises UnknownTarget quoting it, before anything runs."""
    runner = FakeRunner(RunOutcome(0))
    with pytest.raises(UnknownTarget, match="'arm65'"):
        verify(["arm64", "arm65"], state=state_of(), host=X86, runner=runner)
    assert runner.calls == []
    with pytest.raises(ValueError, match="no target"):
        verify(" , ", state=state_of(), host=X86, runner=runner)


# -- files: what runs where, and nothing left behind -----------------------------------


def test_runner_gets_the_probe_and_the_workdir_is_left_empty(tmp_path: Path) -> None:
    """Each probe is a real file with the probe's bytes when run, and gone afterwards."""
    runner = FakeRunner(RunOutcome(PROBE_STATUS))
    verify(["x86_64", "arm"], state=state_of(), host=X86, runner=runner, workdir=str(tmp_path))
    assert [data for _, _, data in runner.calls] == [probe("x86_64"), probe("arm")]
    for argv, root, _ in runner.calls:
        assert root is None and len(argv) == 1
        assert argv[0].startswith(str(tmp_path) + os.sep)
    assert list(tmp_path.iterdir()) == []


def test_with_a_rootfs_the_probe_runs_chrooted_and_the_root_is_restored(tmp_path: Path) -> None:
    """With rootfs the probe is written inside it and run by its path there, then removed."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    runner = FakeRunner(RunOutcome(PROBE_STATUS))
    report = verify(["aarch64"], state=state_of(), host=X86, rootfs=str(root), runner=runner)
    ((argv, run_root, data),) = runner.calls
    assert run_root == str(root) and report.rootfs == str(root)
    assert argv[0].startswith("/.binfmt-verify-") and argv[0].endswith("/probe-aarch64")
    assert data == probe("aarch64")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_probes_are_removed_when_the_runner_raises(tmp_path: Path) -> None:
    """A runner that raises still leaves no probe behind."""

    def boom(argv: Sequence[str], root: Optional[str]) -> RunOutcome:
        raise RuntimeError("runner broke")

    with pytest.raises(RuntimeError):
        verify(["arm"], state=state_of(), host=X86, runner=boom, workdir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_bad_rootfs_and_workdir_are_value_errors(tmp_path: Path) -> None:
    """A rootfs that is not a directory, or a workdir outside the rootfs, is refused."""
    runner = FakeRunner(RunOutcome(0))
    with pytest.raises(ValueError, match="not a directory"):
        verify(["arm"], state=state_of(), host=X86, rootfs=str(tmp_path / "no"), runner=runner)
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="not inside the rootfs"):
        verify(
            ["arm"],
            state=state_of(),
            host=X86,
            rootfs=str(tmp_path / "root"),
            workdir=str(tmp_path / "elsewhere"),
            runner=runner,
        )
    assert runner.calls == []


# -- the report ------------------------------------------------------------------------


def test_report_document_is_tonistiigi_compatible_json(fake_qemu: str) -> None:
    """supported/emulators as tonistiigi's; platforms keyed by OCI name; it is plain JSON."""
    state = state_of(
        entry("arm", fake_qemu),
        entry("s390x", fake_qemu, enabled=False),
        Entry("WSLInterop", "/init", magic=b"MZ"),
    )
    runner = FakeRunner(RunOutcome(PROBE_STATUS))
    report = verify(["arm", "x86_64", "i486", "s390x"], state=state, host=X86, runner=runner)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["supported"] == [
        "linux/arm/v7", "linux/arm/v6", "linux/arm/v5", "linux/arm", "linux/amd64", "linux/s390x",
    ]  # fmt: skip
    assert doc["emulators"] == ["WSLInterop", "qemu-arm"]
    assert doc["ok"] is True and doc["enabled"] is True and doc["rootfs"] is None
    assert doc["platforms"]["linux/arm/v6"] == {"target": "arm", "status": "works"}
    assert doc["platforms"]["linux/amd64"] == {"target": "x86_64", "status": "native"}
    assert "i486" not in doc["platforms"]
    assert [t["target"] for t in doc["targets"]] == ["arm", "x86_64", "i486", "s390x"]
    assert doc["targets"][0] == {
        "target": "arm",
        "platforms": ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5", "linux/arm"],
        "status": "works",
        "entry": "qemu-arm",
        "interpreter": fake_qemu,
        "errno": None,
        "returncode": PROBE_STATUS,
        "detail": f"exited {PROBE_STATUS} through {fake_qemu}",
        "findings": [],
    }
    # s390x's entry is off, yet the probe ran: emulated by something the state does not show.
    assert doc["targets"][3]["status"] == "works"
    assert doc["targets"][3]["findings"][-1]["code"] == "unexpected-outcome"


def test_text_is_a_table_with_reasons_under_failures(tmp_path: Path, fake_qemu: str) -> None:
    """text(): a row per target, further reasons below a failing row, a summary line."""
    root = tmp_path / "root"
    root.mkdir()
    state = state_of(entry("arm", "/usr/bin/qemu-arm-static", flags=""), entry("mips", fake_qemu))
    results: list[TargetResult] = []
    for target, outcome, rootfs in [
        ("arm", RunOutcome(None, errno="ENOENT"), str(root)),
        ("mips", RunOutcome(None, errno="EACCES"), None),
        ("x86_64", RunOutcome(PROBE_STATUS), None),
    ]:
        runner = FakeRunner(outcome)
        results += verify([target], state=state, host=X86, rootfs=rootfs, runner=runner).results
    lines = verify_text(VerifyReport(tuple(results), ("qemu-arm",), True, str(root))).splitlines()
    assert lines[0] == f"binfmt_misc: enabled; probes run chrooted into {root}"
    assert lines[1].split() == ["TARGET", "PLATFORM", "STATUS", "VIA", "DETAIL"]
    assert lines[2].split()[:4] == ["arm", "linux/arm/v7", "interpreter-missing", "qemu-arm"]
    assert "lacks F" in lines[2]
    assert lines[3].split()[:5] == ["mips", "linux/mips", "exec-failed", "qemu-mips", "execve"]
    assert lines[4].startswith(
        "    warning: predicted execve to succeed, but it failed with EACCES"
    )
    assert lines[5].split()[:4] == ["x86_64", "linux/amd64", "native", "kernel"]
    assert lines[6] == "1 of 3 targets run (1 native); supported: linux/amd64"
    assert len(lines) == 7
    empty = verify_text(VerifyReport((), (), None, None))
    assert empty == "binfmt_misc: not mounted; probes run on this machine's root\n" + (
        "no targets to verify\n"
    )


# -- the local runner ------------------------------------------------------------------


def _needs_x86_64_linux() -> None:
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        require_or_skip("runs an x86_64 probe on the host kernel")


def test_run_local_runs_a_native_probe(tmp_path: Path) -> None:
    """run_local executes a host-native probe and returns its exit status."""
    _needs_x86_64_linux()
    path = tmp_path / "p"
    path.write_bytes(probe("x86_64", 7))
    path.chmod(0o755)
    assert run_local([str(path)], None) == RunOutcome(7, stderr=b"")


def test_run_local_chroots(tmp_path: Path) -> None:
    """With a root, run_local chroots first: the path is looked up inside it."""
    _needs_x86_64_linux()
    if os.geteuid() != 0:
        require_or_skip("chroot needs root")
    (tmp_path / "p").write_bytes(probe("x86_64", 9))
    (tmp_path / "p").chmod(0o755)
    assert run_local(["/p"], str(tmp_path)).returncode == 9
    assert run_local([str(tmp_path / "p")], str(tmp_path)).errno == "ENOENT"


def test_run_local_reports_exec_errors_and_timeouts(tmp_path: Path) -> None:
    """A failed execve is an errno name, not an exception; a hang is killed and flagged."""
    assert run_local([str(tmp_path / "missing")], None).errno == "ENOENT"
    (tmp_path / "text").write_bytes(b"\0\0not a program")
    (tmp_path / "text").chmod(0o755)
    assert run_local([str(tmp_path / "text")], None).errno == "ENOEXEC"
    slow = run_local(["/bin/sh", "-c", "sleep 5"], None, timeout=0.2)
    assert (slow.timed_out, slow.returncode, slow.errno) == (True, None, None)


# -- real emulation, in a private binfmt_misc instance -------------------------------


@pytest.fixture
def qemu_box(binfmt_sandbox: Sandbox) -> Sandbox:
    """The sandbox with Debian's qemu-user-static registrations (OPF: F included)."""
    for line in debian_qemu_lines():
        binfmt_sandbox.misc.register(line)
    return binfmt_sandbox


def in_box(
    box: Sandbox,
    targets: Union[str, Sequence[str], None] = None,
    *,
    rootfs: Optional[str] = None,
    workdir: Optional[str] = None,
) -> VerifyReport:
    """verify() through the sandbox's private instance, with that instance's state."""
    return verify(
        targets,
        state=box.misc.state(),
        host=Host.detect(),
        runner=sandbox_runner(box),
        rootfs=rootfs,
        workdir=workdir,
    )


def real_x86_64() -> None:
    if platform.machine() != "x86_64":
        require_or_skip("expects an x86_64 host (native x86_64 and i386)")


@pytest.mark.kernel
@pytest.mark.qemu
def test_every_oci_target_works_through_debian_entries(qemu_box: Sandbox) -> None:
    """All OCI targets: emulated ones work through qemu-<target>, amd64 and 386 are native."""
    real_x86_64()
    report = in_box(qemu_box, OCI_TARGETS)
    got = {r.target: (r.status, r.entry, r.returncode) for r in report.results}
    expected: dict[str, tuple[str, Optional[str], int]] = {
        t: ("works", f"qemu-{t}", PROBE_STATUS) for t in EMULATED
    }
    expected.update({t: ("native", None, PROBE_STATUS) for t in ("x86_64", "i386")})
    assert got == expected
    assert report.ok
    assert all(f.code != "unexpected-outcome" for r in report.results for f in r.findings)


@pytest.mark.kernel
@pytest.mark.qemu
def test_default_verify_covers_every_registered_entry(qemu_box: Sandbox) -> None:
    """By default every Debian entry's target is probed (cris too) and all of them run."""
    report = in_box(qemu_box)
    assert report.ok, verify_text(report)
    probed = {r.entry or "" for r in report.results if r.status == "works"}
    assert probed == set(qemu_box.misc.state().names)
    assert report.emulators == tuple(sorted(probed))


@pytest.mark.kernel
@pytest.mark.qemu
def test_f_entries_work_in_an_empty_root(qemu_box: Sandbox, tmp_path: Path) -> None:
    """Chrooted into an empty directory, F entries still run (and native probes, being static)."""
    real_x86_64()
    root = tmp_path / "empty"
    root.mkdir()
    report = in_box(qemu_box, OCI_TARGETS, rootfs=str(root))
    assert {r.target: r.status for r in report.results} == {
        t: "native" if t in ("x86_64", "i386") else "works" for t in OCI_TARGETS
    }
    assert list(root.iterdir()) == []


@pytest.mark.kernel
@pytest.mark.qemu
def test_a_non_f_entry_fails_in_an_empty_root_but_works_on_the_host(
    qemu_box: Sandbox, tmp_path: Path
) -> None:
    """Without F the interpreter is looked up in the root: ENOENT there, explained; fine on /."""
    interpreter = "/usr/bin/qemu-riscv64-static"
    if not os.path.exists(interpreter):
        require_or_skip(f"{interpreter} is absent (Debian package qemu-user-static)")
    qemu_box.misc.remove("qemu-riscv64")
    qemu_box.misc.register(qemu.get("riscv64").to_entry(interpreter))
    root = tmp_path / "empty"
    root.mkdir()
    (inside,) = in_box(qemu_box, "riscv64", rootfs=str(root)).results
    assert (inside.status, inside.errno, inside.entry) == (
        "interpreter-missing", "ENOENT", "qemu-riscv64",
    )  # fmt: skip
    assert "interpreter-missing" in codes(inside)
    assert "lacks F" in inside.detail and interpreter in inside.detail
    assert "unexpected-outcome" not in codes(inside)
    (outside,) = in_box(qemu_box, "riscv64").results
    assert (outside.status, outside.interpreter) == ("works", interpreter)
    assert list(root.iterdir()) == []


@pytest.mark.kernel
@pytest.mark.qemu
def test_a_removed_entry_is_entry_missing(qemu_box: Sandbox) -> None:
    """With its entry removed, a target's probe gets ENOEXEC: 'entry-missing'."""
    qemu_box.misc.remove("qemu-s390x")
    report = in_box(qemu_box, ["s390x", "aarch64"])
    s390x, aarch64 = report.results
    assert (s390x.status, s390x.errno) == ("entry-missing", "ENOEXEC")
    assert aarch64.status == "works"
    assert not report.ok and report.supported == ["linux/arm64", "linux/arm64/v8"]


@pytest.mark.kernel
@pytest.mark.qemu
def test_an_entry_switched_off_is_entry_missing_and_says_so(qemu_box: Sandbox) -> None:
    """A disabled entry is not used by the kernel; the detail names it."""
    qemu_box.misc.disable("qemu-mips64el")
    (r,) = in_box(qemu_box, "linux/mips64le").results
    assert (r.status, r.errno) == ("entry-missing", "ENOEXEC")
    assert "qemu-mips64el matches but is disabled" in r.detail


@pytest.mark.kernel
@pytest.mark.qemu
def test_binfmt_misc_switched_off_is_disabled(qemu_box: Sandbox) -> None:
    """Globally off: emulated targets are 'disabled' (naming the entry), native ones still run."""
    real_x86_64()
    qemu_box.misc.set_enabled(False)
    report = in_box(qemu_box, ["x86_64", "aarch64", "arm"])
    assert [(r.status, r.entry) for r in report.results] == [
        ("native", None), ("disabled", "qemu-aarch64"), ("disabled", "qemu-arm"),
    ]  # fmt: skip
    assert report.enabled is False and not report.ok
    assert report.to_dict()["supported"] == ["linux/amd64"]


@pytest.mark.kernel
def test_an_interpreter_that_exits_3_is_wrong_status(
    binfmt_sandbox: Sandbox, tmp_path: Path
) -> None:
    """An entry whose interpreter runs but exits 3: 'wrong-status', returncode 3, stderr shown."""
    script = tmp_path / "not-qemu"
    script.write_text("#!/bin/sh\necho 'not-qemu: no emulation here' >&2\nexit 3\n")
    script.chmod(0o755)
    binfmt_sandbox.misc.register(qemu.get("riscv64").to_entry(str(script)))
    (r,) = in_box(binfmt_sandbox, "riscv64").results
    assert (r.status, r.returncode, r.errno, r.entry) == ("wrong-status", 3, None, "qemu-riscv64")
    assert r.detail == "exited 3, expected 42: not-qemu: no emulation here"


@pytest.mark.kernel
def test_f_does_not_carry_a_script_interpreters_own_interpreter(
    binfmt_sandbox: Sandbox, tmp_path: Path
) -> None:
    """An F entry whose interpreter is a script: in an empty root its #! interpreter is missing."""
    script = tmp_path / "wrapper"
    script.write_text("#!/bin/sh\nexit 42\n")
    script.chmod(0o755)
    binfmt_sandbox.misc.register(qemu.get("aarch64").to_entry(str(script), "F"))
    root = tmp_path / "empty"
    root.mkdir()
    (inside,) = in_box(binfmt_sandbox, "aarch64", rootfs=str(root)).results
    assert (inside.status, inside.errno) == ("interpreter-missing", "ENOENT")
    assert "script-interpreter-missing" in codes(inside)
    assert "'/bin/sh'" in inside.detail
    assert in_box(binfmt_sandbox, "aarch64").results[0].status == "works"


@pytest.mark.kernel
@pytest.mark.qemu
def test_report_json_lists_native_and_emulated_platforms(qemu_box: Sandbox) -> None:
    """The JSON's supported has amd64 and 386 (native) and the emulated platforms; plain JSON."""
    real_x86_64()
    report = in_box(qemu_box, OCI_TARGETS)
    doc = json.loads(json.dumps(report.to_dict()))
    expected = []
    for target in OCI_TARGETS:
        expected += [p for p in qemu.get(target).platforms if p not in expected]
    assert doc["supported"] == expected
    assert doc["supported"][:2] == ["linux/amd64", "linux/386"]
    assert doc["emulators"] == sorted(qemu_box.misc.state().names)
    assert doc["platforms"]["linux/riscv64"] == {"target": "riscv64", "status": "works"}
    assert doc["ok"] is True


@pytest.mark.kernel
def test_real_runs_leave_workdir_and_rootfs_as_they_were(
    binfmt_sandbox: Sandbox, tmp_path: Path
) -> None:
    """After real runs (passing and failing) the workdir is empty and the rootfs unchanged."""
    work = tmp_path / "work"
    work.mkdir()
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    in_box(binfmt_sandbox, ["x86_64", "riscv64"], workdir=str(work))
    in_box(binfmt_sandbox, ["x86_64", "riscv64"], rootfs=str(root))
    in_box(binfmt_sandbox, ["riscv64"], rootfs=str(root), workdir=str(root / "bin"))
    assert list(work.iterdir()) == []
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_emulation_behind_an_unseen_entry_is_not_native() -> None:
    """A foreign probe that runs although no visible entry matches 'works' — never 'native'."""
    r = verify_one("s390x", RunOutcome(PROBE_STATUS), state_of(enabled=None, mounted=False))
    assert r.status == "works"
    assert "not visible at /fake" in r.detail
    assert "unexpected-outcome" in codes(r)
    native = verify_one("x86_64", RunOutcome(PROBE_STATUS), state_of())
    assert native.status == "native"
