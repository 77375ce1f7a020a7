"""Host detection: compat targets measured, not guessed (arm64, big-endian and 32-bit hosts).

The unit tests give :meth:`Host.from_facts` the kernel's facts and a
measurement; the others run :func:`measure_native` on this kernel, and in a
private binfmt_misc instance with QEMU's entries registered, to show that it
sees through them. The arm64 side of the same measurement runs on an arm64
kernel in ``tests/test_arm64_node.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest

from binfmt import Flags, Host, qemu
from binfmt.host import measure_native, primary_target
from binfmt.install import InstallOptions, plan
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip
from binfmt.verify import sandbox_runner, verify

REPO = Path(__file__).resolve().parent.parent
COMPAT = {"CONFIG_COMPAT": "y"}


class Measured:
    """A measurement that answers ``verdict`` and records what it was asked."""

    def __init__(self, verdict: Optional[bool], why: str = "measured") -> None:
        self.verdict, self.why = verdict, why
        self.asked: list[str] = []

    def __call__(self, target: str) -> tuple[Optional[bool], str]:
        self.asked.append(target)
        return self.verdict, self.why


def arm64(verdict: Optional[bool], **facts: Any) -> Host:
    facts.setdefault("config", COMPAT)
    return Host.from_facts("aarch64", "6.1.0-57-cloud-arm64", measure=Measured(verdict), **facts)


# -- deciding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "native", "unknown"),
    [(True, ("aarch64", "arm"), ()), (False, ("aarch64",), ()), (None, ("aarch64",), ("arm",))],
)
def test_arm64_runs_arm_as_measured(
    verdict: Optional[bool], native: tuple[str, ...], unknown: tuple[str, ...]
) -> None:
    """AArch32 at EL0 is what the measurement says; if it cannot tell, arm is unknown."""
    host = arm64(verdict)
    assert (host.native, host.unknown) == (native, unknown)
    assert dict(host.evidence)["arm"].startswith("CONFIG_COMPAT=y")
    assert "armeb" not in host.native + host.unknown  # a little-endian kernel: never


def test_the_config_rules_out_without_measuring() -> None:
    """CONFIG_COMPAT unset: no AArch32, and nothing is run to learn it."""
    measured = Measured(True)
    host = Host.from_facts("aarch64", "6.1.0", config={}, measure=measured)
    assert host.native == ("aarch64",) and measured.asked == []
    assert dict(host.evidence) == {"arm": "CONFIG_COMPAT is not set"}


def test_aarch32_el0_decides_only_when_the_measurement_cannot() -> None:
    """The asymmetric-systems file is used when the measurement could not tell."""
    assert arm64(None, aarch32_el0="0-3\n").native == ("aarch64", "arm")
    assert arm64(None, aarch32_el0="\n").native == ("aarch64",)
    assert arm64(False, aarch32_el0="0-3\n").native == ("aarch64",)  # measured wins
    unmeasured = Host.from_facts("aarch64", "6.1.0", config=COMPAT)
    assert unmeasured.unknown == ("arm",)
    assert "not measured" in dict(unmeasured.evidence)["arm"]


def test_without_a_config_arm64_is_still_measured() -> None:
    """No kernel config: the measurement alone decides (the CPU is what matters)."""
    host = arm64(True, config=None)
    assert host.native == ("aarch64", "arm")
    assert dict(host.evidence)["arm"] == "measured"


def test_big_endian_arm64_measures_armeb_and_never_runs_arm() -> None:
    """aarch64_be kernels load programs of their own byte order: armeb maybe, arm never."""
    measured = Measured(True)
    host = Host.from_facts("aarch64_be", "6.1.0", config=COMPAT, measure=measured)
    assert host.native == ("aarch64_be", "armeb") and measured.asked == ["armeb"]
    assert primary_target("aarch64_be") == "aarch64_be"


def test_32_bit_kernels_run_only_their_own_programs() -> None:
    """armv7l and i686 are 32-bit kernels: nothing 64-bit is native, nothing is measured."""
    measured = Measured(True)
    for machine, target in (("armv7l", "arm"), ("armv6l", "arm"), ("i686", "i386")):
        host = Host.from_facts(machine, "6.1.0", config={}, measure=measured)
        assert (host.native, host.unknown) == ((target,), ())
    assert Host.from_facts("armv7b", "6.1.0").native == ("armeb",)
    assert measured.asked == []


def test_armv8l_is_an_arm64_kernel_in_the_32_bit_personality() -> None:
    """Only an arm64 kernel says armv8l (to a linux32 process): aarch64 is native, arm measured."""
    host = Host.from_facts("armv8l", "6.1.0", config=COMPAT, measure=Measured(False))
    assert host.native == ("aarch64",) and host.machine == "armv8l"
    assert "32-bit personality" in dict(host.evidence)["aarch64"]
    assert Host.from_facts("armv8b", "6.1.0", measure=Measured(True)).native == (
        "aarch64_be",
        "armeb",
    )


def test_x86_64_without_a_config_is_measured_not_assumed() -> None:
    """No config on x86_64: i386 is measured; without a measurement it is unknown."""
    assert Host.from_facts("x86_64", "6.1.0", measure=Measured(True)).native == (
        "x86_64",
        "i386",
        "i486",
    )
    assert Host.from_facts("x86_64", "6.1.0").unknown == ("i386", "i486")
    with_config = Measured(False)
    host = Host.from_facts("x86_64", "6.1.0", config={"CONFIG_IA32_EMULATION": "y"})
    assert host.native == ("x86_64", "i386", "i486") and with_config.asked == []


# -- what install and doctor do with it ----------------------------------------------------


def _qemu_dir(tmp: Path) -> str:
    """Empty stand-ins for Debian's QEMU binaries (plan only looks for them)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for sig in qemu.SIGNATURES:
        path = tmp / f"{sig.interpreter_name}-static"
        shutil.copy("/bin/true", path)
    return str(tmp)


def test_install_all_on_arm64_registers_arm_exactly_when_needed(
    tmp_path: Path, fake_binfmt_misc: Any
) -> None:
    """x86_64, i386 and armeb always; aarch64 never; arm only where the CPU cannot run it."""
    opts = InstallOptions(qemu_path=_qemu_dir(tmp_path / "q"), qemu_suffix="-static")
    state = fake_binfmt_misc().state()
    for verdict, arm in ((True, "skip"), (False, "register"), (None, "register")):
        result = plan(["all"], opts, state=state, host=arm64(verdict))
        steps = {s.target: s for s in result.steps}
        assert steps["aarch64"].action == "skip"
        assert steps["x86_64"].action == steps["i386"].action == steps["armeb"].action == "register"
        assert steps["arm"].action == arm, verdict
        unsure = [f for f in result.findings if f.code == "native-unknown"]
        if verdict is None:
            assert "unknown" in steps["arm"].reason and len(unsure) == 1
            assert unsure[0].entry == "qemu-arm" and unsure[0].severity == "warning"
        else:
            assert unsure == [] and "unknown" not in steps["arm"].reason
    native = plan(["arm"], opts, state=state, host=arm64(True)).steps[0]
    assert (native.action, native.reason_text({"force": "--force"})) == (
        "skip",
        "the host runs arm natively (--force registers it anyway)",
    )
    forced = plan(["arm"], attrs.evolve(opts, force=True), state=state, host=arm64(True))
    (capture,) = [f for f in forced.findings if f.code == "hijacks-native"]
    assert capture.severity == "warning" and "emulated" in capture.message


# -- measuring on this kernel -----------------------------------------------------------------


def _config_says_ia32() -> bool:
    host = Host.detect(measure=False)
    return host.machine == "x86_64" and "i386" in host.native


def test_measure_native_on_this_kernel() -> None:
    """This x86_64 kernel runs i386 itself (as its config says) and refuses arm (ENOEXEC)."""
    if not _config_says_ia32():
        require_or_skip("needs an x86_64 kernel whose config enables IA32 emulation")
    assert measure_native("i386") == (True, "measured: the i386 probe ran natively")
    assert measure_native("arm") == (False, "measured: the kernel refuses arm programs (ENOEXEC)")
    verdict, why = measure_native("aarch64")
    assert verdict is None and "no held probe" in why


def test_measure_native_needs_a_directory(tmp_path: Path) -> None:
    """Nowhere to write the program: unknown, naming where it looked; nothing is left behind."""
    verdict, why = measure_native("i386", dirs=[str(tmp_path / "absent")])
    assert verdict is None and "no directory to run a probe in" in why
    if _config_says_ia32():
        assert measure_native("i386", dirs=[str(tmp_path)])[0] is True
    assert list(tmp_path.iterdir()) == []


def _in_sandbox(box: Sandbox, code: str, noexec: Optional[Path] = None) -> Any:
    """Run ``code`` with this checkout's binfmt inside the sandbox; its JSON answer.

    With ``noexec``, a noexec tmpfs is mounted there for the run (in the
    sandbox's mount namespace) and unmounted after it.
    """
    script = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    if noexec is not None:
        where = shlex.quote(str(noexec))
        script = f"mount -t tmpfs -o noexec tmpfs {where} || exit 99; {script}; s=$?; "
        script += f"umount {where}; exit $s"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = box.run(["sh", "-c", script], env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


_MEASURE = "import json; from binfmt.host import measure_native as m; print(json.dumps(m({args})))"


@pytest.mark.kernel
def test_measure_sees_through_qemus_entry(binfmt_sandbox: Sandbox) -> None:
    """With qemu-i386 registered (F), i386 programs go to QEMU, and the measurement still
    finds that the kernel runs them itself: the state doctor must see through."""
    interpreter = "/usr/bin/qemu-i386-static"
    if not os.access(interpreter, os.X_OK):
        require_or_skip(f"{interpreter} is missing: install Debian's qemu-user-static")
    if not _config_says_ia32():
        require_or_skip("needs an x86_64 kernel whose config enables IA32 emulation")
    misc = binfmt_sandbox.misc
    misc.register(qemu.get("i386").to_entry(interpreter, Flags.from_letters("F")))
    host = Host.detect(measure=False)
    through = verify(
        ["i386"], state=misc.state(), host=host, runner=sandbox_runner(binfmt_sandbox)
    ).results[0]
    assert (through.status, through.entry) == ("works", "qemu-i386")  # QEMU takes i386 programs
    assert _in_sandbox(binfmt_sandbox, _MEASURE.format(args="'i386'")) == [
        True,
        "measured: the i386 probe ran natively",
    ]


@pytest.mark.kernel
def test_measure_names_an_entry_that_takes_every_32_bit_elf(binfmt_sandbox: Sandbox) -> None:
    """An entry matching the mark too: unknown, naming the interpreter that ran the probe."""
    interpreter = "/usr/bin/qemu-i386-static"
    if not os.access(interpreter, os.X_OK):
        require_or_skip(f"{interpreter} is missing: install Debian's qemu-user-static")
    binfmt_sandbox.misc.register(f":all32:M::\\x7fELF\\x01::{interpreter}:F")
    verdict, why = _in_sandbox(binfmt_sandbox, _MEASURE.format(args="'i386'"))
    assert verdict is None
    assert why.startswith("a binfmt_misc entry took the i386 probe (its interpreter ")
    assert "qemu-i386-static" in why


@pytest.mark.kernel
def test_measure_skips_noexec_directories(binfmt_sandbox: Sandbox, tmp_path: Path) -> None:
    """A noexec directory (EACCES) is passed over for the next one; only noexec ones: unknown."""
    if not _config_says_ia32():
        require_or_skip("needs an x86_64 kernel whose config enables IA32 emulation")
    noexec, good = tmp_path / "noexec", tmp_path / "exec"
    noexec.mkdir()
    good.mkdir()
    os.chmod(tmp_path, 0o755)
    both = _MEASURE.format(args=f"'i386', dirs=[{str(noexec)!r}, {str(good)!r}]")
    assert _in_sandbox(binfmt_sandbox, both, noexec)[0] is True
    only = _MEASURE.format(args=f"'i386', dirs=[{str(noexec)!r}]")
    verdict, why = _in_sandbox(binfmt_sandbox, only, noexec)
    assert verdict is None and "noexec" in why and str(noexec) in why
