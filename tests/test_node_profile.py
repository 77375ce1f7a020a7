"""Predictions for a node this machine is not (issue 15): --host, --kernel, --state.

On this x86_64 machine, for an arm64 node: Debian's static amd64 busybox is
emulated through qemu-x86_64 with the F entry of a state document — one the
kernel made (a private binfmt_misc instance, read by ``status --json``) and
one ``install --dry-run --json --host linux/arm64`` made — and runs; the
arm64 busybox is native; with no entry the amd64 one gets ENOEXEC; the armhf
one runs natively or not as the AArch32 option says. Nothing of this
machine leaks in: its own binfmt_misc, its CPU, its F interpreters' files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from binfmt import Host, State, qemu
from binfmt.cli import main
from binfmt.install import InstallOptions, plan, planned_state
from binfmt.prediction import predict
from binfmt.report import status_document
from binfmt.sandbox import Sandbox

from .debian import debian_root

ARM64 = Host.for_platform("linux/arm64", release="6.1.0-25-cloud-arm64")


def busybox(arch: str) -> str:
    return str(debian_root(arch) / "bin" / "busybox")


def check_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any]]:
    status = main(["check", "--json", *argv])
    return status, json.loads(capsys.readouterr().out)


def planned_document(capsys: pytest.CaptureFixture[str], tmp_path: Path, *targets: str) -> Path:
    """``install --dry-run --json --host linux/arm64 --persistent TARGET…``, as a file."""
    argv = ["install", "--dry-run", "--json", "--host", "linux/arm64", "--persistent", *targets]
    assert main(argv) == 0
    path = tmp_path / "planned.json"
    path.write_text(capsys.readouterr().out)
    return path


def test_host_for_platform() -> None:
    """A platform names the primary target; AArch32 and IA32 are options with defaults."""
    assert ARM64.native == ("aarch64",) and ARM64.unknown == ("arm",)
    assert Host.for_platform("linux/arm64", aarch32=True).native == ("aarch64", "arm")
    assert Host.for_platform("linux/arm64", aarch32=False).unknown == ()
    amd64 = Host.for_platform("linux/amd64")
    assert amd64.native == ("x86_64", "i386", "i486")
    assert Host.for_platform("linux/amd64", ia32=False).native == ("x86_64",)
    assert Host.for_platform("linux/arm/v7").native == ("arm",)
    version = ARM64.kernel.version
    assert version is not None and version[:2] == (6, 1)
    doc = status_document(State("/p", True, True, ()), ARM64)["host"]
    assert Host.from_document(doc) == ARM64  # evidence and all


def test_planned_state_document_round_trips(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """install --dry-run --json --host writes the plan and, in the same object, the state."""
    path = planned_document(capsys, tmp_path, "amd64")
    doc = json.loads(path.read_text())
    assert doc["steps"][0]["action"] == "register" and doc["dry_run"] is True
    assert doc["host"]["native"] == ["aarch64"]
    state = State.from_document(doc)
    (entry,) = state.entries
    assert entry.name == "qemu-x86_64" and entry.flags.letters == "F"
    assert entry.interpreter == "/usr/bin/qemu-x86_64-static"  # named, not looked for here
    # The library gives the same state.
    the_plan = plan(
        ["amd64"],
        InstallOptions(persistent=True),
        state=State("/x", True, True, ()),
        host=ARM64,
        this_machine=False,
    )
    assert planned_state(the_plan, State("/x", True, True, ())).entries == state.entries


def test_install_for_another_node_needs_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "--host", "linux/arm64", "amd64"]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.qemu
def test_arm64_node_from_planned_state(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The state install --dry-run --host makes: amd64 emulated (F), arm64 native."""
    path = planned_document(capsys, tmp_path, "amd64")
    status, verdicts = check_json(capsys, "--state", str(path), busybox("amd64"), busybox("arm64"))
    assert status == 0
    amd64, arm64 = verdicts
    assert amd64["handler"] == "binfmt_misc" and amd64["entry"] == "qemu-x86_64"
    assert amd64["runs"] and amd64["errno"] is None
    assert amd64["interpreter"] == "/usr/bin/qemu-x86_64-static"
    assert arm64["handler"] == "native" and arm64["runs"]


@pytest.mark.kernel
@pytest.mark.qemu
def test_arm64_node_from_kernel_made_state(
    binfmt_sandbox: Sandbox, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A state the kernel made (status --json of a private instance) for an arm64 node."""
    misc = binfmt_sandbox.misc
    misc.register(qemu.get("x86_64").to_entry("/usr/bin/qemu-x86_64-static", "F"))
    assert main(["status", "--json", "--procfs", misc.path]) == 0
    doc = tmp_path / "node.json"
    doc.write_text(capsys.readouterr().out)
    # The document describes this x86_64 machine: --host makes it the arm64 node's.
    status, (amd64, arm64) = check_json(
        capsys, "--state", str(doc), "--host", "linux/arm64", busybox("amd64"), busybox("arm64")
    )
    assert status == 0
    assert amd64["handler"] == "binfmt_misc" and amd64["runs"]
    assert arm64["handler"] == "native"
    # Without --host it is this machine's host, read back from the document: amd64 native.
    status, (amd64,) = check_json(capsys, "--state", str(doc), busybox("amd64"))
    assert amd64["handler"] == "binfmt_misc"  # the F entry matches x86_64 programs first


@pytest.mark.qemu
def test_arm64_node_without_entries(capsys: pytest.CaptureFixture[str]) -> None:
    """--host alone: a node with nothing registered; this machine's entries do not count."""
    status, (amd64, arm64) = check_json(
        capsys, "--host", "linux/arm64", busybox("amd64"), busybox("arm64")
    )
    assert status == 1
    assert amd64["errno"] == "ENOEXEC" and amd64["findings"][-1]["code"] == "no-handler"
    assert arm64["handler"] == "native" and arm64["runs"]


@pytest.mark.qemu
@pytest.mark.parametrize("aarch32", [True, False, None])
def test_armhf_on_arm64_follows_the_aarch32_option(
    aarch32: bool | None, capsys: pytest.CaptureFixture[str]
) -> None:
    option = {True: ["--aarch32"], False: ["--no-aarch32"], None: []}[aarch32]
    status, (armhf,) = check_json(capsys, "--host", "linux/arm64", *option, busybox("armhf"))
    if aarch32:
        assert status == 0 and armhf["handler"] == "native"
    else:  # no, or unknown: foreign
        assert status == 1 and armhf["errno"] == "ENOEXEC"


def test_f_interpreter_of_another_node_counts_as_present(tmp_path: Path) -> None:
    """this_machine=False: an F interpreter that does not exist here still runs there;
    without F it must be in the exec's root."""
    program = tmp_path / "x86"
    program.write_bytes(qemu.get("x86_64").header(2))
    program.chmod(0o755)
    gone = "/nonexistent/qemu-x86_64-static"
    for flags, runs in (("F", True), ("", False)):
        state = State("/n", True, True, (qemu.get("x86_64").to_entry(gone, flags),))
        verdict = predict(str(program), state=state, host=ARM64, this_machine=False)
        assert verdict.runs is runs, verdict
        assert [f.code for f in verdict.findings if f.code == "interpreter-gone"] == []
    # On this machine the same F entry is "gone" (a warning), as before.
    state = State("/n", True, True, (qemu.get("x86_64").to_entry(gone, "F"),))
    here = predict(str(program), state=state, host=ARM64)
    assert "interpreter-gone" in [f.code for f in here.findings]


def test_node_options_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Bad node options are one-line usage errors naming the value."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    hostless = tmp_path / "hostless.json"
    hostless.write_text(json.dumps({"mounted": True, "entries": []}))
    cases = [
        (["--state", str(bad)], "not JSON"),
        (["--state", str(tmp_path / "missing.json")], "No such file"),
        (["--state", str(hostless)], "--host"),
        (["--host", "linux/vax"], "vax"),
        (["--host", "linux/arm64", "--kernel", "banana"], "banana"),
        (["--aarch32"], "--host"),
    ]
    for argv, needle in cases:
        assert main(["check", *argv, "/bin/true"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("binfmt: error:") and needle in err, err


def test_doctor_for_another_node(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """doctor --state: judged from the document alone (no probe, no file of this machine)."""
    path = planned_document(capsys, tmp_path, "amd64")
    status = main(["doctor", "--json", "--state", str(path), "--platform", "linux/amd64"])
    doc = json.loads(capsys.readouterr().out)
    codes = [f["code"] for f in doc["findings"]]
    assert "platform-ok" in codes and "interpreter-missing" not in codes, codes
    assert "not-persisted" not in codes and "user-namespace" not in codes
    assert status in (0, 1)


def test_kernel_option_sets_the_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--kernel 'RELEASE VERSION' gives that node's rules: a #! line of 150 bytes fits the
    256-byte buffer of 5.1+, not the 128 bytes of 4.19 (ENOEXEC there)."""
    script = tmp_path / "long"
    script.write_bytes(b"#!/" + b"a" * 147 + b"\n")
    script.chmod(0o755)
    errnos = {}
    for kernel in ("4.19.0-27-arm64 #1 SMP Debian 4.19.316-1", "6.1.0-25-arm64"):
        status, (verdict,) = check_json(
            capsys, "--host", "linux/arm64", "--kernel", kernel, str(script)
        )
        assert status == 1
        errnos[kernel.split(".")[0]] = (verdict["errno"], verdict["findings"][-1]["code"])
    assert errnos == {
        "4": ("ENOEXEC", "bad-shebang"),
        "6": ("ENOENT", "script-interpreter-missing"),
    }
