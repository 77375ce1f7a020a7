"""An arm64 node that runs amd64 programs, booted under qemu-system-aarch64 and set up by binfmt.

``tests/vm/arm64.py`` builds the node's root from Debian's arm64 packages
(Python, the arm64 ``qemu-user-static``, static busybox for amd64, i386 and
armhf) and the wheel of this checkout, and boots Debian's arm64 cloud kernel
on it (TCG). Inside, the commands a node operator runs, in order: before
set-up, the busyboxes; ``binfmt status``; ``binfmt install --qemu-path
/usr/bin --qemu-suffix -static --persistent all``; status, the busyboxes,
``check``, ``verify`` and ``doctor`` after it. Each CPU model of
:data:`tests.vm.arm64.CPUS` is booted once: ``cortex-a72`` runs 32-bit ARM
programs itself (AArch32 at EL0), ``a64fx`` does not; on the first, qemu-arm
is then registered anyway (``--force``) to show that the host still knows it
runs arm itself and that doctor reports the entry.

The kernel-matrix plan (the register-line corpus, generated lines, write
sequences and exec facts of ``tests/vm/matrix.py``) runs on the same arm64
kernel too, from a busybox initramfs.

These need ``qemu-system-aarch64``, ``mkfs.ext4``, the aarch64 cross
compiler (``tests/vm/setup.sh`` installs them) and the Debian archive; they
skip elsewhere, and fail instead with ``BINFMT_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import pytest

from binfmt.testing import require_or_skip

from .test_kernel_matrix import RECORDED, check, recording_mismatches, release_of
from .vm import arm64 as node_vm
from .vm import kernels
from .vm import matrix as vm_matrix
from .vm.debs import CACHE

#: What ``uname -m`` says, per busybox, run natively or through QEMU.
UNAME = {"amd64": "x86_64", "i386": "i686"}
_nodes: dict[str, node_vm.NodeRun] = {}


def _require_tools() -> None:
    missing = node_vm.missing_tools()
    if missing:
        require_or_skip(f"the arm64 node needs {', '.join(missing)}: run tests/vm/setup.sh")
    try:
        kernels.fetch(node_vm.KERNEL)
    except Exception as exc:  # the archive is unreachable, the package gone …
        require_or_skip(f"cannot fetch {node_vm.KERNEL.name}: {exc}")


def node(cpu: node_vm.Cpu) -> node_vm.NodeRun:
    """The node booted on ``cpu`` (once per session); timings in tests/.cache/vm."""
    if cpu.name not in _nodes:
        _require_tools()
        run = node_vm.run(cpu, timeout=720)
        _nodes[cpu.name] = run
        out = CACHE / "arm64-node" / "timings.json"
        old = json.loads(out.read_text()) if out.is_file() else {}
        out.write_text(json.dumps({**old, cpu.name: run.timings()}, indent=1) + "\n")
        print(f"{cpu.name}: {run.timings()}")
    return _nodes[cpu.name]


CPU = pytest.mark.parametrize("cpu", node_vm.CPUS, ids=lambda c: c.name)


def _registered(run: node_vm.NodeRun) -> dict[str, str]:
    """target → entry name of what ``install all`` registered."""
    steps = run["03-install"].json()["steps"]
    return {s["target"]: s["name"] for s in steps if s["action"] == "register"}


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_before_set_up_the_cpu_decides(cpu: node_vm.Cpu) -> None:
    """Before set-up amd64 and i386 are ENOEXEC; armhf runs exactly when the CPU has AArch32,
    and status says so from a measurement (no aarch32_el0 file, no hint in /proc/cpuinfo)."""
    run = node(cpu)
    programs = run["01-programs-before"].json()
    assert programs["amd64"] == programs["i386"] == {"errno": "ENOEXEC"}
    if cpu.aarch32:
        assert (programs["armhf"]["status"], programs["armhf"]["stdout"]) == (0, "aarch64\n")
    else:
        assert programs["armhf"] == {"errno": "ENOEXEC"}
    assert programs["aarch32_el0"] is False  # only asymmetric systems have the file
    host = run["02-status-before"].json()["host"]
    assert host["machine"] == "aarch64" and host["kernel"] == run.release
    assert host["native"] == (["aarch64", "arm"] if cpu.aarch32 else ["aarch64"])
    assert host["unknown"] == []
    want = "ran natively" if cpu.aarch32 else "refuses arm programs (ENOEXEC)"
    assert host["evidence"]["arm"].startswith("measured: ") and want in host["evidence"]["arm"]
    assert run["02-status-before"].json()["entries"] == []


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_the_measurement_gives_one_answer(cpu: node_vm.Cpu) -> None:
    """measure_native("arm") 50 times before set-up (and 50 with qemu-arm registered on the
    AArch32 CPU): always the same, right answer."""
    run = node(cpu)
    want = (
        [True, "measured: the arm probe ran natively"]
        if cpu.aarch32
        else [False, "measured: the kernel refuses arm programs (ENOEXEC)"]
    )
    steps = ["00-measure", "12-measure-forced"] if cpu.aarch32 else ["00-measure"]
    for step in steps:
        assert run[step].json() == {json.dumps(want): 50}, step


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_install_all_registers_what_the_cpu_cannot_run(cpu: node_vm.Cpu) -> None:
    """x86_64, i386, armeb and the rest are registered, aarch64 is skipped, arm exactly when
    the CPU cannot run it; status lists exactly what was registered, each with F."""
    run = node(cpu)
    doc = run["03-install"].json()
    assert run["03-install"].returncode == 0 and doc["ok"] is True
    steps = {s["target"]: s for s in doc["steps"]}
    assert steps["aarch64"]["action"] == "skip"
    assert steps["aarch64"]["reason"] == "the host runs aarch64 natively"
    if cpu.aarch32:
        assert (steps["arm"]["action"], steps["arm"]["reason"]) == (
            "skip",
            "the host runs arm natively",
        )
    else:
        assert (steps["arm"]["action"], steps["arm"]["reason"]) == ("register", "register arm")
    registered = _registered(run)
    assert {"x86_64", "i386", "i486", "armeb", "aarch64_be", "riscv64", "s390x"} <= set(registered)
    assert [f for f in doc["findings"] if f["severity"] != "info"] == []
    status = run["04-status"].json()
    assert {e["name"]: e["flags"] for e in status["entries"]} == dict.fromkeys(
        registered.values(), "F"
    )
    assert status["host"] == run["02-status-before"].json()["host"]
    text = run["05-status-text"].stdout.decode()
    assert f"{len(registered)} entries, in lookup order" in text


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_after_set_up_amd64_and_i386_run(cpu: node_vm.Cpu) -> None:
    """amd64 and i386 busybox print their machine; armhf runs natively (aarch64) or, on a CPU
    without AArch32, through qemu-arm (armv7l)."""
    run = node(cpu)
    programs = run["06-programs-after"].json()
    for arch, machine in [*UNAME.items(), ("armhf", "aarch64" if cpu.aarch32 else "armv7l")]:
        assert (programs[arch]["errno"], programs[arch]["status"]) == (None, 0), arch
        assert programs[arch]["stdout"] == machine + "\n", arch


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_check_agrees_with_what_ran(cpu: node_vm.Cpu) -> None:
    """check predicts each busybox's handler and entry as the kernel then ran it."""
    run = node(cpu)
    verdicts = {v["path"].split("/")[3]: v for v in run["07-check"].json()}
    ran = run["06-programs-after"].json()
    expected: dict[str, Optional[str]] = {"amd64": "qemu-x86_64", "i386": "qemu-i386"}
    expected["armhf"] = None if cpu.aarch32 else "qemu-arm"
    for arch, entry in expected.items():
        verdict = verdicts[arch]
        assert verdict["runs"] is True and ran[arch]["status"] == 0
        assert verdict["handler"] == ("native" if entry is None else "binfmt_misc"), arch
        assert verdict["entry"] == entry and verdict["findings"] == []
    # Emulated programs say QEMU's machine, native ones the kernel's.
    assert (verdicts["armhf"]["handler"] == "native") == (ran["armhf"]["stdout"] == "aarch64\n")


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_verify_proves_every_registered_platform(cpu: node_vm.Cpu) -> None:
    """verify: every registered target works through its entry, aarch64 (and arm) natively."""
    run = node(cpu)
    report = run["08-verify"].json()
    assert run["08-verify"].returncode == 0 and report["ok"] is True
    results = {t["target"]: t for t in report["targets"]}
    native = {"aarch64", "arm"} if cpu.aarch32 else {"aarch64"}
    assert {t for t, r in results.items() if r["status"] == "native"} == native
    registered = _registered(run)
    works = {t: r["entry"] for t, r in results.items() if r["status"] == "works"}
    assert works == {t: name for t, name in registered.items() if t in results}
    assert {"linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7"} <= set(report["supported"])


@CPU
@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_doctor_is_clean(cpu: node_vm.Cpu) -> None:
    """doctor after set-up: healthy, only notes."""
    run = node(cpu)
    report = run["09-doctor"].json()
    assert run["09-doctor"].returncode == 0 and report["status"] == "ok"
    assert {f["severity"] for f in report["findings"]} <= {"info"}


@pytest.mark.arm64_vm
@pytest.mark.timeout(900)
def test_a_forced_qemu_arm_is_seen_through() -> None:
    """qemu-arm registered anyway on a CPU with AArch32 (6.1: no private instances): the host
    still measures arm as native, armhf now runs emulated, and doctor warns about the entry."""
    cpu = next(c for c in node_vm.CPUS if c.aarch32)
    run = node(cpu)
    forced = run["10-force-arm"].json()
    assert [(s["target"], s["action"]) for s in forced["steps"]] == [("arm", "register")]
    (capture,) = [f for f in forced["findings"] if f["code"] == "hijacks-native"]
    assert capture["severity"] == "warning" and "emulated" in capture["message"]
    status = run["11-status-forced"].json()
    assert status["host"]["native"] == ["aarch64", "arm"]
    assert status["host"]["evidence"]["arm"] == "measured: the arm probe ran natively"
    assert status["entries"][0]["name"] == "qemu-arm"
    assert run["12-programs-forced"].json()["armhf"]["stdout"] == "armv7l\n"
    doctor = run["13-doctor-forced"].json()
    assert run["13-doctor-forced"].returncode == 1 and doctor["status"] == "warnings"
    (found,) = [f for f in doctor["findings"] if f["severity"] != "info"]
    assert (found["code"], found["entry"]) == ("hijacks-native", "qemu-arm")
    assert "which this host runs itself (measured: the arm probe ran natively)" in found["message"]


# -- the kernel-matrix plan on the arm64 kernel ---------------------------------------------


_matrix: dict[str, Any] = {}


def _arm64_capture() -> Any:
    if "capture" not in _matrix:
        _require_tools()
        if shutil.which("aarch64-linux-gnu-gcc") is None:
            require_or_skip("the guest helper needs aarch64-linux-gnu-gcc: run tests/vm/setup.sh")
        seed = int(os.environ.get("BINFMT_MATRIX_SEED") or random.SystemRandom().randrange(2**32))
        lines = int(os.environ.get("BINFMT_MATRIX_LINES", "3000"))
        _matrix["capture"] = vm_matrix.run(node_vm.KERNEL, seed=seed, generated=lines, timeout=300)
    return _matrix["capture"]


def test_the_arm64_kernel_is_recorded() -> None:
    """The arm64 kernel CI boots has a checked-in capture (checked on every machine)."""
    releases = {release_of(c) for c in RECORDED if c["kernel"].get("arch") == "arm64"}
    assert {p.name.replace("linux-image-", "").replace("-unsigned", "") for p in kernels.ARM64} <= (
        releases
    )


@pytest.mark.arm64_vm
@pytest.mark.timeout(600)
def test_arm64_kernel_agrees_with_model(tmp_path: Path) -> None:
    """Booted now: the arm64 kernel answers every register line, sequence and exec probe as
    the model predicts (seed in the message)."""
    capture = _arm64_capture()
    result = check(capture, tmp_path)
    assert result == {k: [] for k in result}, f"{release_of(capture)}, seed {capture['seed']}"


@pytest.mark.arm64_vm
@pytest.mark.timeout(600)
def test_arm64_kernel_matches_its_recording() -> None:
    """Booted now, it answers the corpus and the probes as its recording says."""
    capture = _arm64_capture()
    recorded = [c for c in RECORDED if release_of(c) == release_of(capture)]
    assert recorded, f"no recording for {release_of(capture)}: python -m tests.vm.matrix --record"
    assert recording_mismatches(capture, recorded[0]) == []
