"""``python -m binfmt status``: text, JSON, exit codes, against kernel-made trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from binfmt.cli import main
from binfmt.sandbox import Sandbox

TREES = Path(__file__).parent / "data" / "procfs"
ENTRY_KEYS = [
    "name",
    "enabled",
    "type",
    "offset",
    "magic",
    "mask",
    "extension",
    "interpreter",
    "flags",
    "qemu",
    "platforms",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status_json(capsys: pytest.CaptureFixture[str], procfs: str) -> dict[str, Any]:
    code, out, err = run(capsys, "status", "--json", "--procfs", procfs)
    assert (code, err) == (0, "")
    doc: dict[str, Any] = json.loads(out)
    return doc


def _file_fields(path: Path) -> dict[str, str]:
    """The entry file's lines as key → value (kernel text, independent of the library)."""
    lines = path.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    fields = {"state": lines[0]}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key] = value
    return fields


@pytest.mark.parametrize("tree", sorted(p.name for p in TREES.iterdir() if p.is_dir()))
def test_json_describes_kernel_tree_exactly(capsys: pytest.CaptureFixture[str], tree: str) -> None:
    """Every entry of a kernel-produced tree appears, in kernel order, with the kernel's values."""
    doc = status_json(capsys, str(TREES / tree))
    assert doc["mounted"] is True
    assert doc["enabled"] is ((TREES / tree / "status").read_text() == "enabled\n")
    order = (TREES / tree / "register").read_text().splitlines()
    assert [e["name"] for e in doc["entries"]] == order
    for e in doc["entries"]:
        assert list(e) == ENTRY_KEYS
        kernel = _file_fields(TREES / tree / e["name"])
        assert e["enabled"] is (kernel["state"] == "enabled")
        assert e["interpreter"] == kernel["interpreter"]
        assert e["flags"] == kernel["flags:"]
        if "extension" in kernel:
            assert (e["type"], e["extension"], e["magic"]) == (
                "extension",
                kernel["extension"][1:],
                None,
            )
        else:
            assert e["type"] == "magic"
            assert (e["offset"], e["magic"]) == (int(kernel["offset"]), kernel["magic"])
            assert e["mask"] == kernel.get("mask")


def test_json_names_qemu_targets_and_platforms(capsys: pytest.CaptureFixture[str]) -> None:
    """Debian's QEMU entries are identified; Rosetta is recognised as running x86_64 binaries."""
    debian = {
        e["name"]: e for e in status_json(capsys, str(TREES / "debian-qemu-user-static"))["entries"]
    }
    assert debian["qemu-aarch64"]["qemu"] == "aarch64"
    assert debian["qemu-aarch64"]["platforms"] == ["linux/arm64", "linux/arm64/v8"]
    assert debian["qemu-arm"]["platforms"][:3] == ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert debian["qemu-cris"]["qemu"] is None  # not a target of QEMU's current table
    mixed = {e["name"]: e for e in status_json(capsys, str(TREES / "mixed-registrants"))["entries"]}
    assert mixed["rosetta"]["qemu"] == "x86_64"
    assert mixed["WSLInterop"]["platforms"] == []


def test_json_host_block(capsys: pytest.CaptureFixture[str]) -> None:
    """The host block names the machine, kernel and native platforms of this machine."""
    host = status_json(capsys, str(TREES / "empty"))["host"]
    assert host["machine"] == os.uname().machine
    assert host["kernel"] == os.uname().release
    assert host["version"].startswith(os.uname().version)  # uname -v: the patch level
    assert set(host) == {
        "machine",
        "kernel",
        "version",
        "native",
        "platforms",
        "unknown",
        "evidence",
    }
    assert set(host["evidence"]) >= set(host["unknown"]) | set(host["native"][1:])


def test_text_lists_entries_in_lookup_order(capsys: pytest.CaptureFixture[str]) -> None:
    """The text report has one row per entry, newest first, and says the switch state."""
    code, out, _ = run(capsys, "status", "--procfs", str(TREES / "order"))
    assert code == 0
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ")][1:]
    assert rows == ["2", "10", "c", "a", "b"]
    code, out, _ = run(capsys, "status", "--procfs", str(TREES / "spec-examples"))
    assert "disabled (no entry is used)" in out


def test_text_escapes_control_characters(
    capsys: pytest.CaptureFixture[str], fake_binfmt_misc: Any
) -> None:
    """An entry name with a newline stays on one row, escaped."""
    misc = fake_binfmt_misc([":bad\nname:M::AB::/bin/true:"])
    _, out, _ = run(capsys, "status", "--procfs", misc.path)
    assert "bad\\x0aname" in out


def test_not_mounted_exits_1_with_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Not mounted: exit 1 and one error line saying how to mount."""
    code, out, err = run(capsys, "status", "--procfs", str(tmp_path))
    assert code == 1
    assert "not mounted" in out
    assert err.count("\n") == 1
    assert err.startswith(f"binfmt: error: binfmt_misc is not mounted at {tmp_path}: mount it with")


def test_not_mounted_json_still_describes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With --json, a missing mount is a document with mounted false, and exit 1."""
    code, out, err = run(capsys, "status", "--json", "--procfs", str(tmp_path))
    assert code == 1
    doc = json.loads(out)
    assert (doc["mounted"], doc["enabled"], doc["entries"]) == (False, None, [])
    assert "not mounted" in err


def test_malformed_tree_is_one_line_error(
    capsys: pytest.CaptureFixture[str], fake_binfmt_misc: Any
) -> None:
    """A corrupt global status file gives exit 1 and one line naming the file, no traceback."""
    misc = fake_binfmt_misc([":a:M::AB::/bin/true:"])
    Path(misc.path, "status").write_text("garbage\n")
    code, _, err = run(capsys, "status", "--procfs", misc.path)
    assert code == 1
    problem = "b'garbage\\n' is neither 'enabled' nor 'disabled'"
    assert err == f"binfmt: error: {misc.path}/status: {problem}\n"


def test_malformed_entry_file_is_reported_beside_the_others(
    capsys: pytest.CaptureFixture[str], fake_binfmt_misc: Any
) -> None:
    """A corrupt entry file is listed as unreadable with the reason; the other entries show."""
    misc = fake_binfmt_misc([":a:M::AB::/bin/true:", ":b:E::x::/bin/true:"])
    Path(misc.path, "a").write_text("garbage\n")
    code, out, err = run(capsys, "status", "--procfs", misc.path)
    assert (code, err) == (0, "")
    assert "  a: cannot be read (line 1 'garbage' should be 'enabled' or 'disabled')" in out
    assert "extension .x" in out
    code, out, _ = run(capsys, "status", "--json", "--procfs", misc.path)
    doc = json.loads(out)
    assert [e["name"] for e in doc["entries"]] == ["b"]
    assert doc["unreadable"] == ["a"]
    assert doc["unreadable_reasons"] == {"a": "line 1 'garbage' should be 'enabled' or 'disabled'"}


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown options and a missing command exit 2."""
    with pytest.raises(SystemExit) as info:
        main(["status", "--bogus"])
    assert info.value.code == 2
    assert main([]) == 2


def test_module_entry_point() -> None:
    """``python -m binfmt --version`` runs the CLI."""
    proc = subprocess.run(
        [sys.executable, "-m", "binfmt", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.startswith("binfmt ")


@pytest.mark.kernel
def test_status_of_a_live_instance(
    binfmt_sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """status --json on a real private instance shows what was registered, newest first."""
    misc = binfmt_sandbox.misc
    misc.register(":first:M::\\x7fELF\\x02\\x01\\x01::/bin/true:")
    misc.register(":second:E::zzx::/bin/true:P")
    misc.disable("first")
    doc = status_json(capsys, misc.path)
    assert [(e["name"], e["enabled"], e["flags"]) for e in doc["entries"]] == [
        ("second", True, "P"),
        ("first", False, ""),
    ]


def test_nfd_feature_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--format nfd lists native and emulated platforms as NFD labels; --output writes it."""
    assert main(["status", "--format", "nfd", "--procfs", str(TREES / "mixed-registrants")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("#")
    labels = lines[1:]
    assert all(line.startswith("binfmt.linux-") and line.endswith("=true") for line in labels)
    # qemu-aarch64 (F) counts. Rosetta captures x86_64 programs and its interpreter
    # is missing (no F): this node cannot run linux/amd64 any more, native or not.
    assert "binfmt.linux-arm64=true" in labels
    assert "binfmt.linux-amd64=true" not in labels
    native = {
        f"binfmt.{p.replace('/', '-')}=true"
        for p in status_json(capsys, str(TREES / "mixed-registrants"))["host"]["platforms"]
    }
    assert native - {"binfmt.linux-amd64=true"} <= set(labels)
    out = tmp_path / "features.d" / "binfmt"
    out.parent.mkdir()
    assert (
        main(
            [
                "status",
                "--format",
                "nfd",
                "--procfs",
                str(TREES / "spec-examples"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    # binfmt_misc is switched off in spec-examples: only native platforms remain.
    assert set(out.read_text().splitlines()[1:]) == native


def test_nfd_expiry(capsys: pytest.CaptureFixture[str]) -> None:
    """--nfd-expiry adds NFD's expiry directive, SECONDS from now, in UTC."""
    import datetime

    before = datetime.datetime.now(datetime.timezone.utc)
    assert (
        main(["status", "--format", "nfd", "--nfd-expiry", "600", "--procfs", str(TREES / "empty")])
        == 0
    )
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("# +expiry-time=")]
    when = datetime.datetime.strptime(line.split("=", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    assert 590 <= (when - before).total_seconds() <= 610
